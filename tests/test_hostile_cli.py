"""The command line with hostile and careless input: ``pointpeft <command>: error: ...`` and exit code 2
for what the user got wrong (naming the key, file or data), a traceback for a bug."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import pointpeft.train
from pointpeft.cli import main
from pointpeft.train import loop as train_loop
from tiny_run import TINY


def _fails(argv, capsys, code: int = 2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["train", "params", "eval"])
@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optim.epochs=0", "optim.epochs must be an integer in [1, 1048576], got 0"),
        ("optim.epochs=-3", "optim.epochs must be an integer in [1, 1048576], got -3"),
        ("optim.weight_decay=-1", "optim.weight_decay must be in [0, inf), got -1.0"),
        ("run.threads=four", "run.threads must be an integer or null, got 'four'"),
        ("data.point_all=abc", "data.point_all must be an integer or null, got 'abc'"),
        ("data.root=123", "data.root must be a string or null, got 123"),
        ("run.device=gpu", "run.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("optim.lr=-0.01", "optim.lr must be in (0, inf), got -0.01"),
        ("optim.lr=.nan", "optim.lr must be a finite number in (0, inf), got nan"),
        ("model.num_heads=3", "model.trans_dim (32) must be divisible by model.num_heads (3)"),
        ("optim.warmup_epochs=2", "optim.warmup_epochs (2) must be <= optim.epochs (1)"),
    ],
)
def test_bad_keys_are_errors_that_name_them(tmp_path, capsys, command, override, match):
    extra = ["--adapter", str(tmp_path)] if command == "eval" else []
    err = _fails([command, *extra, *TINY, f"run.output_dir={tmp_path}", override], capsys)
    assert err.startswith(f"pointpeft {command}: error: ") and match in err, err


def test_a_missing_config_file_and_a_missing_adapter(tmp_path, capsys):
    err = _fails(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert f"pointpeft train: error: config: no file at '{tmp_path / 'nope.yaml'}'" in err
    err = _fails(["eval", "--adapter", str(tmp_path / "none"), *TINY], capsys)
    assert "pointpeft eval: error: " in err and str(tmp_path / "none") in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_run_device_cuda_without_a_gpu(tmp_path, capsys):
    err = _fails(["train", *TINY, "run.device=cuda", f"run.output_dir={tmp_path}"], capsys)
    assert "pointpeft train: error: run.device = 'cuda' but torch sees no CUDA GPU" in err


@pytest.fixture(scope="module")
def four_class_adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("four") / "run"
    assert main(["train", *TINY, f"run.output_dir={folder}"]) == 0
    return folder


def test_an_adapter_evaluated_on_data_of_other_classes_is_an_error(four_class_adapter, capsys):
    capsys.readouterr()
    best = four_class_adapter / "best"
    err = _fails(["eval", "--adapter", str(best), *TINY, "data.synthetic_classes=6"], capsys)
    assert (
        f"pointpeft eval: error: the adapter in {best} has a 4-class head but data.dataset='synthetic' has 6"
        in err
    )
    assert main(["eval", "--adapter", str(best), *TINY]) == 0  # on its own data it evaluates
    record = json.loads((four_class_adapter / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"test accuracy {record['best_accuracy']:.2f}%" in capsys.readouterr().out


def test_a_bad_last_pt_is_an_error_with_the_advice(four_class_adapter, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"not a checkpoint")
    err = _fails(["train", *TINY, f"run.output_dir={folder}"], capsys)
    assert (
        f"pointpeft train: error: cannot resume: run.output_dir's last.pt: cannot read '{folder / 'last.pt'}'"
        in err
    )
    assert "set run.resume=false" in err and "new run.output_dir" in err


def test_a_nan_loss_exits_1_with_the_message(tmp_path, capsys, monkeypatch):
    real = train_loop.build_model

    def poisoned(config, num_classes):
        model = real(config, num_classes)
        model.head.mlp[-1].bias.data.fill_(float("nan"))
        return model

    monkeypatch.setattr(train_loop, "build_model", poisoned)
    err = _fails(["train", *TINY, f"run.output_dir={tmp_path}"], capsys, code=1)
    assert "pointpeft train: error: the training loss became nan at epoch 0, step 0" in err


def _python_bug(config, num_classes):
    return len(5)  # a TypeError raised by Python itself, not by a pointpeft check


def _torch_bug(config, num_classes):
    return torch.optim.AdamW([], lr=1.0)  # a ValueError raised inside torch


@pytest.mark.parametrize(("bug", "error"), [(_python_bug, TypeError), (_torch_bug, ValueError)])
def test_a_bug_keeps_its_traceback(monkeypatch, bug, error):
    monkeypatch.setattr(pointpeft.train, "build_model", bug)
    with pytest.raises(error):
        main(["params", *TINY])


def test_demo_refuses_a_negative_seed_and_an_unwritable_output_dir(tmp_path, capsys):
    err = _fails(["demo", "--seed", "-1"], capsys)
    assert "--seed must be >= 0, got -1" in err
    (tmp_path / "file").write_text("x")
    err = _fails(["demo", "--epochs", "1", "--output-dir", str(tmp_path / "file")], capsys)
    where = tmp_path / "file" / "dapt_pretrained"  # the first run's folder, inside the file
    assert f"pointpeft demo: error: run.output_dir = '{where}' cannot be created (Not a directory)" in err


def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path):
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "pointpeft", "train", "optim.epochs=-3", f"run.output_dir={tmp_path / 'x'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (
        "pointpeft train: error: override 'optim.epochs=-3': optim.epochs must be an integer in [1, 1048576], got -3\n"
    )
    assert not (tmp_path / "x").exists()
