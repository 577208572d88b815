"""``pointpeft demo``: DAPT trained end to end on procedurally generated shapes, in about a minute on a CPU.

Nothing is downloaded and nothing is pre-trained: a small, randomly initialised Point-MAE is frozen, DAPT is
inserted, and only the DAPT parameters train, with the reference's recipe (:func:`pointpeft.train.train`),
to tell apart the shape classes of :class:`pointpeft.data.SyntheticShapes`. The settings are those of
``configs/synthetic.yaml``.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

# configs/synthetic.yaml, as overrides of pointpeft.train.config.DEFAULTS (tests keep the two equal).
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": "synthetic",
        "npoints": 256,
        "synthetic_points": 512,
        "synthetic_classes": 10,
        "synthetic_train": 800,
        "synthetic_test": 200,
    },
    "model": {
        "trans_dim": 64,
        "depth": 4,
        "num_heads": 4,
        "num_group": 32,
        "group_size": 16,
        "encoder_dims": 64,
        "drop_path_rate": 0.0,
        "init": "default",
    },
    "dapt": {"rank": 16, "adapter_dropout": 0.0, "head_dropout": 0.1},
    "optim": {
        "epochs": 8,
        "warmup_epochs": 1,
        "lr": 0.002,
        "min_lr": 0.0001,
        "batch_size": 16,
        "eval_batch_size": 100,
    },
}


@dataclass
class DemoResult:
    """What the demo measured.

    Attributes:
        best_accuracy: best test accuracy (%) over the epochs.
        chance: the accuracy (%) of guessing.
        seconds: wall-clock time of the whole run.
        adapter_dir: where the best adapter was saved.
    """

    best_accuracy: float
    chance: float
    seconds: float
    adapter_dir: str


def demo_config(
    epochs: int | None = None, seed: int = 0, output_dir: str = "runs/demo"
) -> dict[str, dict[str, Any]]:
    """The demo's full training config."""
    from pointpeft.train.config import DEFAULTS

    config = copy.deepcopy(DEFAULTS)
    for section, values in DEMO_SETTINGS.items():
        config[section].update(values)
    if epochs is not None:
        config["optim"]["epochs"] = epochs
    config["run"].update(seed=seed, output_dir=output_dir, resume=False, progress=sys.stderr.isatty())
    return config


def run_demo(
    epochs: int | None = None, seed: int = 0, output_dir: str = "runs/demo", out: TextIO | None = None
) -> DemoResult:
    """Train DAPT on synthetic shapes, printing the trainable-parameter line, each epoch's accuracy and
    where the adapter was saved.

    Args:
        epochs: training epochs (default 8).
        seed: seeds the data, the backbone's random weights and the training order.
        output_dir: the run folder; the best adapter goes to ``output_dir/best``. A previous run there is
            replaced (the demo never resumes).
        out: where to print (stdout by default).

    Raises:
        ValueError / TypeError: for an ``epochs`` < 1, a ``seed`` < 0 or an ``output_dir`` that cannot be
            written, naming the config key (``optim.epochs``, ``run.seed``, ``run.output_dir``).
    """
    from pointpeft.train import check_config, train

    out = out if out is not None else sys.stdout
    config = check_config(demo_config(epochs, seed, output_dir))
    data = config["data"]
    chance = 100.0 / data["synthetic_classes"]
    print(
        f"pointpeft demo: DAPT on a frozen, randomly initialised (not pre-trained) Point-MAE; "
        f"{data['synthetic_classes']} synthetic shape classes, {data['synthetic_train']} training / "
        f"{data['synthetic_test']} test clouds of {data['npoints']} points; chance {chance:.0f}%",
        file=out,
    )
    start = time.perf_counter()
    result = train(config, out=out)
    seconds = time.perf_counter() - start
    adapter_dir = os.path.join(output_dir, "best")
    print(f"done in {seconds:.1f} s; the adapter is saved in {adapter_dir}/", file=out)
    return DemoResult(result.best_accuracy, chance, seconds, adapter_dir)
