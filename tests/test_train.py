"""Training recipe, configs, resume, NaN detection and the train/eval/params commands."""

from __future__ import annotations

import json
import math
import os
import pathlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pointpeft.dapt.execution
from pointpeft.cli import main
from pointpeft.train import build_model, learning_rate, load_config, parameter_groups, train
from pointpeft.train import config as train_config
from pointpeft.train import loop as train_loop

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"
TINY = [  # a very small synthetic run: seconds on a CPU
    "data.npoints=64",
    "data.synthetic_points=96",
    "data.synthetic_classes=4",
    "data.synthetic_train=32",
    "data.synthetic_test=16",
    "model.trans_dim=32",
    "model.depth=2",
    "model.num_heads=4",
    "model.num_group=8",
    "model.group_size=8",
    "model.encoder_dims=32",
    "model.init=default",
    "dapt.rank=4",
    "optim.batch_size=8",
    "optim.eval_batch_size=16",
    "run.progress=false",
    "run.threads=1",
]


def _tiny(tmp_path, *extra: str) -> dict:
    return load_config(CONFIGS / "synthetic.yaml", [*TINY, f"run.output_dir={tmp_path}", *extra])


# ------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("name", "variant", "drop_path", "adapter_dropout", "pool", "rank", "groups", "npoints"),
    [
        ("scanobjectnn_objbg", "OBJ_BG", 0.3, 0.5, ["cls", "prompt", "patch"], 64, 128, 2048),
        ("scanobjectnn_objonly", "OBJ_ONLY", 0.1, 0.0, ["cls", "prompt"], 64, 128, 2048),
        ("scanobjectnn_pb_t50_rs", "PB_T50_RS", 0.3, 0.2, ["cls", "prompt", "patch"], 64, 128, 2048),
        ("modelnet40", None, 0.1, 0.0, ["cls", "patch"], 72, 64, 1024),
    ],
)
def test_reference_configs_hold_the_reference_settings(
    name, variant, drop_path, adapter_dropout, pool, rank, groups, npoints
):
    config = load_config(CONFIGS / f"{name}.yaml")
    if variant is not None:
        assert config["data"]["variant"] == variant
    assert config["model"]["drop_path_rate"] == drop_path and config["model"]["num_group"] == groups
    assert config["dapt"]["adapter_dropout"] == adapter_dropout and config["dapt"]["pool"] == pool
    assert config["dapt"]["rank"] == rank and config["data"]["npoints"] == npoints
    optim = config["optim"]
    assert (optim["epochs"], optim["warmup_epochs"], optim["lr"], optim["weight_decay"]) == (
        300,
        10,
        5e-4,
        0.05,
    )
    assert (optim["batch_size"], optim["grad_clip"], config["model"]["group_size"]) == (32, 10.0, 32)


def test_demo_settings_are_the_synthetic_config():
    from pointpeft.demo import DEMO_TASK, demo_config

    demo = demo_config()
    task = [
        f"{section}.{key}={value}" for section, values in DEMO_TASK.items() for key, value in values.items()
    ]
    config = load_config(CONFIGS / "synthetic.yaml", task)
    for section in ("data", "model", "dapt", "optim"):
        assert demo[section] == config[section], section


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key optim\.epoch;"):
        load_config(None, ["optim.epoch=3"])
    with pytest.raises(ValueError, match="unknown section 'optimizer'"):
        load_config(None, ["optimizer.lr=1"])
    with pytest.raises(TypeError, match=r"optim\.epochs must be an integer, got 'many'"):
        load_config(None, ["optim.epochs=many"])
    with pytest.raises(ValueError, match="must look like section.key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    assert load_config(None, ["optim.lr=1e-3", "dapt.pool=[cls]"])["dapt"]["pool"] == ["cls"]
    assert train_config.parse_override("run.bf16=true") == ("run", "bf16", True)
    with pytest.raises(ValueError, match=r"run\.execution must be one of \('fused', 'recompute', 'plain'\)"):
        load_config(None, ["run.execution=fast"])
    assert (
        train_config.CHOICES[("run", "execution")] == pointpeft.dapt.execution.EXECUTIONS
    )  # the two lists agree


def test_run_execution_reaches_the_model():
    for execution in ("plain", "recompute"):
        config = load_config(CONFIGS / "synthetic.yaml", [f"run.execution={execution}"])
        assert build_model(config, 10).execution == execution


# --------------------------------------------------------------------------------------------- optim
def test_parameter_groups_follow_the_reference():
    model = nn.Module()
    model.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
    model.cls_pos = nn.Parameter(torch.zeros(1, 1, 4))
    model.linear = nn.Linear(4, 4)
    model.frozen = nn.Linear(4, 4).requires_grad_(False)
    model.norm = nn.LayerNorm(4)
    no_decay, decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "cls_token",
        "linear.bias",
        "norm.bias",
        "norm.weight",
    ]
    assert sorted(names[id(p)] for p in decay["params"]) == ["cls_pos", "linear.weight"]  # 3-D, no "token"
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)


def test_learning_rate_warms_up_then_follows_the_cosine():
    kw = dict(epochs=300, lr=5e-4, min_lr=1e-6, warmup_epochs=10, warmup_lr=1e-6)
    assert learning_rate(0, **kw) == 1e-6
    assert learning_rate(5, **kw) == pytest.approx(1e-6 + 5 * (5e-4 - 1e-6) / 10)
    assert learning_rate(10, **kw) == pytest.approx(
        1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + math.cos(math.pi * 10 / 300))
    )
    assert learning_rate(300, **kw) == pytest.approx(1e-6)


# --------------------------------------------------------------------------------------------- train
def test_resumed_run_continues_exactly_as_the_uninterrupted_one(tmp_path):
    whole = train(_tiny(tmp_path / "whole", "optim.epochs=2"))
    train(_tiny(tmp_path / "cut", "optim.epochs=1"))  # "interrupted" after one epoch
    resumed = train(_tiny(tmp_path / "cut", "optim.epochs=2"))
    assert resumed.epochs_run == 1 and whole.epochs_run == 2

    def lines(folder):
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    a, b = lines(tmp_path / "whole"), lines(tmp_path / "cut")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert (x["train_loss"], x["test_accuracy"]) == (y["train_loss"], y["test_accuracy"])
    assert sorted(os.listdir(tmp_path / "cut" / "best")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "cut"))


def test_nan_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    real = train_loop.build_model

    def poisoned(config, num_classes):
        model = real(config, num_classes)
        model.head.mlp[-1].bias.data.fill_(float("nan"))
        return model

    monkeypatch.setattr(train_loop, "build_model", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 0, step 0.*lower optim\.lr"):
        train(_tiny(tmp_path, "optim.epochs=1"))


class _PoisonedClouds(torch.utils.data.Dataset):
    """Synthetic-sized clouds (labels 0..9), one of which has a NaN coordinate."""

    def __init__(self, size: int, poisoned: int | None) -> None:
        self.points = torch.rand(size, 64, 3, generator=torch.Generator().manual_seed(size)) * 2 - 1
        if poisoned is not None:
            self.points[poisoned, 5, 1] = float("nan")

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int):
        return self.points[index], index % 10


def test_a_nan_training_point_is_refused_before_sampling_naming_the_data(tmp_path, monkeypatch):
    """The loop checks each batch's points on its CPU copy (so that a GPU never reads back), and tells the
    resampling to skip its own check: a NaN must still stop the run, with an error naming the data."""
    import pointpeft.data.transforms as transforms

    asked = []
    real = transforms.sample_train_points

    def recording(*args, **kwargs):
        asked.append(kwargs.get("check_values", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(transforms, "sample_train_points", recording)
    config = _tiny(tmp_path, "optim.epochs=1", "data.npoints=64", "run.device=cpu")
    train(config, datasets=(_PoisonedClouds(16, None), _PoisonedClouds(8, None)), out=open(os.devnull, "w"))
    assert asked and not any(asked)  # checked by the loop instead
    with pytest.raises(ValueError, match=r"the points of a batch of the training set .* finite coordinates"):
        train(
            _tiny(tmp_path / "nan", "optim.epochs=1", "data.npoints=64", "run.device=cpu"),
            datasets=(_PoisonedClouds(16, 3), _PoisonedClouds(8, None)),
            out=open(os.devnull, "w"),
        )


def test_train_eval_params_commands(tmp_path, capsys):
    args = ["--config", str(CONFIGS / "synthetic.yaml"), *TINY, f"run.output_dir={tmp_path}"]
    assert main(["train", *args, "optim.epochs=1"]) == 0
    out = capsys.readouterr().out
    best = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["best_accuracy"]
    assert "trainable params:" in out and "adapter in" in out
    assert main(["eval", "--adapter", str(tmp_path / "best"), *args]) == 0
    assert f"test accuracy {best:.2f}%" in capsys.readouterr().out  # the saved adapter scores the same

    assert main(["params", "--config", str(CONFIGS / "scanobjectnn_objbg.yaml")]) == 0
    assert "trainable params: 1,087,771 || all params: 22,912,795" in capsys.readouterr().out
    assert main(["params", "--config", str(CONFIGS / "modelnet40.yaml")]) == 0
    assert "trainable params: 1,068,948" in capsys.readouterr().out


def test_cli_reports_config_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "optim.epochs=x"])
    assert exit_info.value.code == 2 and "optim.epochs must be an integer" in capsys.readouterr().err


def test_two_process_ddp_training_run(tmp_path):
    """`torchrun --nproc_per_node=2 -m pointpeft train ...` on CPU (gloo): rank 0 writes the metrics and
    the adapter, and the run finishes without find_unused_parameters."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    src = str(pathlib.Path(__file__).parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "pointpeft", "train", "--config", str(CONFIGS / "synthetic.yaml"), *TINY,
        "optim.epochs=2", "run.device=cpu", f"run.output_dir={tmp_path}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # one writer: rank 0
    assert (tmp_path / "best" / "adapter_model.safetensors").exists()
    assert done.stdout.count("trainable params:") == 1


def test_bf16_autocast_and_voting_run(tmp_path):
    """run.bf16 trains under bf16 autocast (CPU here) and run.vote evaluates with 10-view voting."""
    result = train(_tiny(tmp_path, "optim.epochs=1", "run.bf16=true", "run.vote=true"))
    assert 0.0 <= result.best_accuracy <= 100.0
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(record["train_loss"])


class _ReferenceScheduler:
    """The reference loop's scheduler, written from its code: timm's ``CosineLRScheduler`` sets the
    optimizer to the schedule's value at 0 when it is built (``warmup_lr`` with warm-up, else ``lr``), and
    ``step(epoch)`` after training ``epoch`` sets the schedule's value at ``epoch``."""

    def __init__(self, **kw):
        self.kw = kw
        self.lr = kw["warmup_lr"] if kw["warmup_epochs"] > 0 else kw["lr"]

    def step(self, epoch):
        self.lr = learning_rate(epoch, **self.kw)


@settings(max_examples=50, deadline=None)
@given(
    epochs=st.integers(1, 40),
    warmup=st.integers(0, 10),
    lr=st.floats(1e-5, 1e-2),
    min_lr=st.floats(0, 1e-5),
    warmup_lr=st.floats(0, 1e-5),
)
def test_each_epoch_trains_at_the_rate_the_reference_loop_sets(epochs, warmup, lr, min_lr, warmup_lr):
    from pointpeft.train import epoch_learning_rate

    kw = dict(epochs=epochs, lr=lr, min_lr=min_lr, warmup_epochs=min(warmup, epochs), warmup_lr=warmup_lr)
    scheduler = _ReferenceScheduler(**kw)
    for epoch in range(epochs):
        assert epoch_learning_rate(epoch, **kw) == pytest.approx(scheduler.lr, rel=1e-12, abs=0), epoch
        scheduler.step(epoch)  # after the epoch, as the reference


def test_a_training_run_records_and_uses_the_reference_loops_rates(tmp_path, monkeypatch):
    """Through ``train``: the optimizer's rate during each epoch's steps, and the rate metrics.jsonl
    records, are the reference loop's (warm-up 2 of 4 epochs: epochs 0 and 1 both at warmup_lr)."""
    seen = {}
    real = train_loop._train_epoch

    def recording(ctx, epoch, lr, times):
        out = real(ctx, epoch, lr, times)
        seen[epoch] = {group["lr"] for group in ctx.optimizer.param_groups}
        return out

    monkeypatch.setattr(train_loop, "_train_epoch", recording)
    overrides = [
        "optim.epochs=4",
        "optim.warmup_epochs=2",
        "optim.lr=1e-3",
        "optim.warmup_lr=1e-5",
        "optim.min_lr=1e-6",
    ]
    train(_tiny(tmp_path, *overrides))
    kw = dict(epochs=4, lr=1e-3, min_lr=1e-6, warmup_epochs=2, warmup_lr=1e-5)
    scheduler = _ReferenceScheduler(**kw)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for epoch, line in enumerate(lines):
        assert line["lr"] == pytest.approx(scheduler.lr)
        assert len(seen[epoch]) == 1 and seen[epoch].pop() == pytest.approx(scheduler.lr)
        scheduler.step(epoch)
    assert lines[0]["lr"] == lines[1]["lr"] == pytest.approx(1e-5)


def test_synthetic_scan_like_keys_reach_both_splits():
    """data.synthetic_partial / _clutter / _noise make the synthetic sets scan-like (train and test alike),
    and are range-checked naming the key."""
    from pointpeft.train import build_datasets

    config = load_config(
        CONFIGS / "synthetic.yaml",
        ["data.synthetic_partial=0.4", "data.synthetic_clutter=0.15", "data.synthetic_noise=0.02"],
    )
    train_set, test_set = build_datasets(config)[:2]
    for data in (train_set, test_set):
        assert (data.partial, data.clutter, data.noise) == (0.4, 0.15, 0.02)
    plain = build_datasets(load_config(CONFIGS / "synthetic.yaml"))[0]
    assert (plain.partial, plain.clutter, plain.noise) == (0.0, 0.0, 0.01)  # SyntheticShapes' own defaults
    assert not torch.equal(train_set[0][0], plain[0][0])
    with pytest.raises(ValueError, match=r"data\.synthetic_partial must be in \[0, 1\), got 1\.0"):
        load_config(None, ["data.synthetic_partial=1.0"])
