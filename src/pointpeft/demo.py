"""``pointpeft demo``: what pre-training is worth to DAPT, in about two minutes on a CPU.

Nothing is downloaded. The demo trains three models, each with the reference's recipe
(:func:`pointpeft.train.train`) and the settings of ``configs/synthetic.yaml``, to tell apart the shape classes
of :class:`pointpeft.data.SyntheticShapes`, and prints their test accuracies side by side:

1. DAPT on the small Point-MAE pre-trained on unlabelled synthetic shapes that ships with pointpeft
   (:func:`pointpeft.pretrain.bundled_checkpoint`), frozen;
2. DAPT on the same backbone randomly initialised, frozen;
3. a linear probe of the pre-trained backbone (only the head trains).
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


#: The demo's task, over ``DEMO_SETTINGS``: few labels (16 clouds of each class), where pre-training shows;
#: more epochs, so that the runs take as many steps as configs/synthetic.yaml's 800 clouds in 8 epochs.
DEMO_TASK: dict[str, dict[str, Any]] = {"data": {"synthetic_train": 160}, "optim": {"epochs": 20}}

#: The demo's runs: (folder, label, settings over ``DEMO_SETTINGS`` and ``DEMO_TASK``).
DEMO_RUNS: tuple[tuple[str, str, dict[str, dict[str, Any]]], ...] = (
    ("dapt_pretrained", "DAPT, pre-trained backbone", {"model": {"pretrained": "bundled"}}),
    ("dapt_random", "DAPT, random backbone", {}),
    (
        "linear_probe",
        "linear probe, pre-trained backbone",
        {"model": {"pretrained": "bundled", "method": "linear_probe"}, "dapt": {"pool": ["cls", "patch"]}},
    ),
)


@dataclass
class DemoResult:
    """What the demo measured.

    Attributes:
        best_accuracy: best test accuracy (%) over the epochs of DAPT on the pre-trained backbone.
        accuracies: the best test accuracy (%) of each run, by its label (:data:`DEMO_RUNS`).
        chance: the accuracy (%) of guessing.
        seconds: wall-clock time of the whole demo.
        adapter_dir: where the best adapter of DAPT on the pre-trained backbone was saved.
    """

    best_accuracy: float
    accuracies: dict[str, float]
    chance: float
    seconds: float
    adapter_dir: str


def demo_config(
    epochs: int | None = None, seed: int = 0, output_dir: str = "runs/demo", run: str | None = None
) -> dict[str, dict[str, Any]]:
    """The demo's full training config: ``configs/synthetic.yaml``'s settings, :data:`DEMO_TASK` and those
    of the run folder ``run`` of :data:`DEMO_RUNS` over them (None: none), writing to ``output_dir/run``."""
    from pointpeft.train.config import DEFAULTS

    config = copy.deepcopy(DEFAULTS)
    layers = [DEMO_SETTINGS, DEMO_TASK]
    if run is not None:
        layers += [s for folder, _, s in DEMO_RUNS if folder == run]
        output_dir = os.path.join(output_dir, run)
    for layer in layers:
        for section, values in layer.items():
            config[section].update(values)
    if epochs is not None:
        config["optim"]["epochs"] = epochs
    config["run"].update(seed=seed, output_dir=output_dir, resume=False, progress=sys.stderr.isatty())
    return config


def run_demo(
    epochs: int | None = None, seed: int = 0, output_dir: str = "runs/demo", out: TextIO | None = None
) -> DemoResult:
    """Train the three runs of :data:`DEMO_RUNS` one after the other, printing each one's
    trainable-parameter line and epochs, then a table of their best test accuracies.

    Args:
        epochs: training epochs of each run (default 20).
        seed: seeds the data, the random backbone's weights, the heads and the training order (the same in
            every run).
        output_dir: the demo's folder; each run writes to ``output_dir/<run>`` (its best adapter in
            ``best/``). A previous demo there is replaced (the demo never resumes).
        out: where to print (stdout by default).

    Raises:
        ValueError / TypeError: for an ``epochs`` < 1, a ``seed`` < 0 or an ``output_dir`` that cannot be
            written, naming the config key (``optim.epochs``, ``run.seed``, ``run.output_dir``).
    """
    from pointpeft.pretrain import bundled_checkpoint
    from pointpeft.train import check_config, train

    out = out if out is not None else sys.stdout
    configs = [check_config(demo_config(epochs, seed, output_dir, folder)) for folder, _, _ in DEMO_RUNS]
    data = configs[0]["data"]
    chance = 100.0 / data["synthetic_classes"]
    print(
        f"pointpeft demo: what pre-training is worth. A small Point-MAE pre-trained on unlabelled synthetic "
        f"shapes ({bundled_checkpoint()}) against the same backbone randomly initialised; task: "
        f"{data['synthetic_classes']} synthetic shape classes, {data['synthetic_train']} training / "
        f"{data['synthetic_test']} test clouds of {data['npoints']} points; chance {chance:.0f}%",
        file=out,
    )
    start = time.perf_counter()
    accuracies: dict[str, float] = {}
    for number, ((_, label, _), config) in enumerate(zip(DEMO_RUNS, configs, strict=True), 1):
        print(f"\n[{number}/{len(DEMO_RUNS)}] {label}", file=out)
        accuracies[label] = train(config, out=out).best_accuracy
    seconds = time.perf_counter() - start
    width = max(len(label) for label in accuracies)
    print(f"\n{'':{width}s}  best test accuracy", file=out)
    for label, accuracy in accuracies.items():
        print(f"{label:{width}s}  {accuracy:5.1f}%", file=out)
    adapter_dir = os.path.join(output_dir, DEMO_RUNS[0][0], "best")
    print(f"done in {seconds:.1f} s; the pre-trained DAPT adapter is saved in {adapter_dir}/", file=out)
    return DemoResult(accuracies[DEMO_RUNS[0][1]], accuracies, chance, seconds, adapter_dir)
