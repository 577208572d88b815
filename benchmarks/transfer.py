"""Transfer benchmark: pre-train Point-MAE on clean synthetic shapes, then adapt it to scan-like clouds.

1. ``pointpeft.pretrain.pretrain`` trains a Point-MAE of ``configs/synthetic.yaml``'s sizes (64 wide, 4 blocks,
   32 groups of 16) on clean :class:`pointpeft.data.SyntheticShapes` of all 14 classes (labels unused). The
   folder is reused: a finished pre-training is read back, a cut one resumes.
2. Each method trains with ``pointpeft.train.train`` on scan-like clouds (partial views, background clutter,
   noise) of the first ``--classes`` classes, from the pre-trained weights, and is tested on a held-out set:
   ``configs/synthetic.yaml`` layered with ``configs/methods/NAME.yaml`` (DAPT: ``synthetic.yaml`` alone).
   ``scratch`` is full fine-tuning from random weights, ``dapt_random`` DAPT on a random backbone.
3. Per method: the best and the last epoch's test accuracy, mean ± std over the seeds (each seed draws other
   training and test clouds, head weights and order; the pre-training is shared).

Run (on a GPU; the table goes to stdout, every run's record to ``--json``)::

    PYTHONPATH=src python benchmarks/transfer.py --device cuda --seeds 0 1 2 \\
        --methods dapt full_finetune linear_probe scratch dapt_random --json runs/transfer/results.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
#: methods that are a method file run without the pre-trained weights
FROM_RANDOM = {"scratch": "full_finetune", "dapt_random": "dapt"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["dapt", "full_finetune", "linear_probe", "scratch"])
    p.add_argument("--output-dir", default="runs/transfer", help="pre-training and run folders")
    p.add_argument("--pretrain-epochs", type=int, default=100)
    p.add_argument("--pretrain-clouds", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--train-clouds", type=int, default=1500)
    p.add_argument("--test-clouds", type=int, default=1000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--partial", type=float, default=0.4)
    p.add_argument("--clutter", type=float, default=0.15)
    p.add_argument("--noise", type=float, default=0.02)
    p.add_argument(
        "--set", action="append", default=[], help="a config override for every method (KEY=VALUE)"
    )
    p.add_argument("--json", default=None, help="where every run's record goes")
    return p.parse_args(argv)


def _pretrain(args: argparse.Namespace, config: dict[str, Any]) -> str:
    from pointpeft.backbones import PointMAE
    from pointpeft.data import SyntheticShapes
    from pointpeft.pretrain import pretrain

    model = config["model"]
    torch.manual_seed(0)
    backbone = PointMAE(
        trans_dim=model["trans_dim"],
        depth=model["depth"],
        num_heads=model["num_heads"],
        num_group=model["num_group"],
        group_size=model["group_size"],
        encoder_dims=model["encoder_dims"],
        drop_path_rate=0.1,
    )
    clouds = SyntheticShapes(
        args.pretrain_clouds, config["data"]["synthetic_points"], num_classes=14, seed=10_000, cache=True
    )
    began = time.perf_counter()
    result = pretrain(
        os.path.join(args.output_dir, "pretrain"),
        backbone=backbone,
        dataset=clouds,
        epochs=args.pretrain_epochs,
        batch_size=128,
        npoints=config["data"]["npoints"],
        decoder_num_heads=model["num_heads"],
        device=args.device,
        progress=False,
        out=io.StringIO(),
    )
    print(
        f"pre-training: {args.pretrain_epochs} epochs on {args.pretrain_clouds} clean clouds, Chamfer-L2 "
        f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f} ({time.perf_counter() - began:.0f} s this call)"
    )
    return result.checkpoint


def _run(args: argparse.Namespace, method: str, seed: int, checkpoint: str) -> dict[str, Any]:
    from pointpeft.data import SyntheticShapes
    from pointpeft.train import load_config, train

    base = FROM_RANDOM.get(method, method)
    files = [CONFIGS / "synthetic.yaml"] + ([] if base == "dapt" else [CONFIGS / "methods" / f"{base}.yaml"])
    folder = os.path.join(args.output_dir, f"{method}-seed{seed}")
    overrides = [
        f"optim.epochs={args.epochs}",
        f"run.seed={seed}",
        f"run.device={args.device}",
        f"run.output_dir={folder}",
        "run.resume=false",
        "run.progress=false",
        f"model.pretrained={'null' if method in FROM_RANDOM else checkpoint}",
        *args.set,
    ]
    config = load_config([str(f) for f in files], overrides)
    points = config["data"]["synthetic_points"]
    scan = dict(
        num_classes=args.classes, partial=args.partial, clutter=args.clutter, noise=args.noise, cache=True
    )
    datasets = (
        SyntheticShapes(args.train_clouds, points, seed=2 * seed + 1, **scan),
        SyntheticShapes(args.test_clouds, points, seed=2 * seed + 2, **scan),
    )
    began = time.perf_counter()
    result = train(config, datasets=datasets, out=io.StringIO())
    lines = pathlib.Path(folder, "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])["test_accuracy"]
    return {
        "method": method,
        "seed": seed,
        "best": result.best_accuracy,
        "last": last,
        "seconds": time.perf_counter() - began,
    }


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(argv: list[str] | None = None) -> int:
    from pointpeft.train import load_config

    args = _parse(argv)
    for name in args.methods:
        base = FROM_RANDOM.get(name, name)
        if base != "dapt" and not (CONFIGS / "methods" / f"{base}.yaml").exists():
            raise SystemExit(f"--methods: no configs/methods/{base}.yaml for {name!r}")
    checkpoint = _pretrain(args, load_config(str(CONFIGS / "synthetic.yaml")))
    records = []
    for seed in args.seeds:
        for method in args.methods:
            record = _run(args, method, seed, checkpoint)
            records.append(record)
            print(f"  {method:14s} seed {seed}: best {record['best']:.1f}%  last {record['last']:.1f}%  "
                  f"({record['seconds']:.0f} s)", flush=True)  # fmt: skip
    if args.json:
        from pointpeft.atomic_write import atomic_write_text

        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps({"args": vars(args), "runs": records}, indent=1))
    print(
        f"\n{args.classes} classes, {args.train_clouds} training / {args.test_clouds} test scan-like clouds "
        f"(partial {args.partial}, clutter {args.clutter}, noise {args.noise}), {args.epochs} epochs, "
        f"seeds {args.seeds}, overrides {args.set or 'none'}\n"
    )
    print("| method | best test accuracy (%) | last epoch (%) |\n|---|---|---|")
    for method in args.methods:
        mine = [r for r in records if r["method"] == method]
        print(
            f"| {method} | {_mean_std([r['best'] for r in mine])} | {_mean_std([r['last'] for r in mine])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
