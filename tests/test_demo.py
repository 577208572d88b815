from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest

from pointpeft.cli import main
from pointpeft.demo import run_demo


def test_demo_runs_the_three_models_and_saves_the_pretrained_adapter(tmp_path):
    """Short runs end to end (bundled checkpoint, data, sampling, augmentation, DAPT, the linear probe, the
    recipe, adapter files) and the table of their accuracies."""
    from pointpeft.demo import DEMO_RUNS

    out = io.StringIO()
    result = run_demo(epochs=2, output_dir=str(tmp_path), out=out)
    text = out.getvalue()
    assert text.count("trainable params:") == 3 and text.count("epoch   2/2") == 3
    assert (
        text.count(
            "pre-trained weights: bundled: read as point_mae; missing (kept as initialised): cls_token"
        )
        == 2
    )
    assert "pre-trained weights: none" in text and "best test accuracy" in text
    assert result.chance == 10.0 and list(result.accuracies) == [label for _, label, _ in DEMO_RUNS]
    assert result.best_accuracy == result.accuracies["DAPT, pre-trained backbone"]
    assert result.adapter_dir == str(tmp_path / "dapt_pretrained" / "best")
    for folder, label, _ in DEMO_RUNS:
        assert (tmp_path / folder / "best" / "adapter_model.safetensors").exists()
        records = [
            json.loads(line) for line in (tmp_path / folder / "metrics.jsonl").read_text().splitlines()
        ]
        assert len(records) == 2 and max(r["test_accuracy"] for r in records) == result.accuracies[label]
        assert re.search(rf"\n{re.escape(label)} +{result.accuracies[label]:.1f}%\n", text), label


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
