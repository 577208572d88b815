from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from pointpeft.cli import main
from pointpeft.demo import run_demo


def test_demo_trains_well_above_chance_and_saves_the_adapter(tmp_path):
    """A short synthetic run, end to end (data, sampling, augmentation, DAPT, recipe, adapter file)."""
    out = io.StringIO()
    result = run_demo(epochs=5, output_dir=str(tmp_path), out=out)
    text = out.getvalue()
    assert "trainable params:" in text and "epoch   5/5" in text and str(tmp_path / "best") in text
    assert result.chance == 10.0
    assert result.best_accuracy >= 4 * result.chance  # 10 classes; about 70% after 5 epochs
    assert (tmp_path / "best" / "adapter_model.safetensors").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 5 and max(r["test_accuracy"] for r in records) == result.best_accuracy


def test_cli_demo_short_run(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--threads", "1", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "trainable params:" in out and "adapter is saved in" in out


@pytest.mark.parametrize("argv", [["demo", "--epochs", "0"], ["demo", "--threads", "0"]])
def test_cli_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "must be >=" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "pointpeft", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("pointpeft ")
    no_command = subprocess.run([sys.executable, "-m", "pointpeft"], capture_output=True, text=True)
    assert no_command.returncode == 2 and all(
        c in no_command.stdout for c in ("demo", "train", "eval", "params")
    )
