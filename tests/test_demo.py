from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from pointpeft.cli import main
from pointpeft.demo import SHAPES, make_shapes, run_demo


def test_demo_learns_from_chance_to_clearly_better():
    out = io.StringIO()
    result = run_demo(out=out)
    text = out.getvalue()
    assert "trainable params:" in text and "held-out accuracy" in text
    chance = 100 / len(SHAPES)
    assert result.initial_accuracy <= chance + 10
    assert result.final_accuracy >= 3 * chance  # 60% on 5 classes; ~96% is typical


def test_shapes_are_seeded_labelled_and_normalised():
    a, labels = make_shapes(20, 64, seed=3)
    b, _ = make_shapes(20, 64, seed=3)
    assert torch.equal(a, b) and a.shape == (20, 64, 3)
    assert set(labels.tolist()) == set(range(len(SHAPES)))
    assert torch.allclose(a.norm(dim=-1).amax(dim=1), torch.ones(20))
    assert not torch.equal(a, make_shapes(20, 64, seed=4)[0])


def test_cli_demo_short_run(capsys):
    assert main(["demo", "--steps", "2", "--batch-size", "4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "step    2/2" in out and "trainable params:" in out


@pytest.mark.parametrize(
    "argv", [["demo", "--steps", "0"], ["demo", "--batch-size", "1"], ["demo", "--threads", "0"]]
)
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
    assert no_command.returncode == 2 and "demo" in no_command.stdout
