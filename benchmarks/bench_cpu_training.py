"""Training step time on the CPU: full fine-tuning and DAPT (plain, fused, recompute), side by side.

Run:  PYTHONPATH=src python benchmarks/bench_cpu_training.py [--size demo|full] [--steps 5]

``demo`` is the synthetic config's model (64 channels, 4 blocks, 32 groups of 16, batch 16 of 256 points);
``full`` is Point-MAE at its defaults (batch 8 of 2048 points). One step is forward + backward + AdamW;
the median of ``--steps`` steps after 2 warm-up steps, with 2 torch threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE

SIZES = {
    "demo": (dict(trans_dim=64, depth=4, num_heads=4, num_group=32, group_size=16, encoder_dims=64), 16, 256),
    "full": (dict(pos_mode="once", drop_path_rate=0.1), 8, 2048),
}


def step_ms(kind: str, execution: str, size: str, steps: int) -> float:
    dims, batch, num_points = SIZES[size]
    torch.manual_seed(0)
    backbone = PointMAE(**dims)
    if kind == "full":
        model = pointpeft.full_finetune(backbone, 15, execution=execution)
    else:
        config = pointpeft.DAPTConfig(num_classes=15, adapter_dropout=0.5)
        model = pointpeft.wrap_with_dapt(backbone, config, execution=execution)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    points = torch.rand(batch, num_points, 3) * 2 - 1
    labels = torch.arange(batch) % 15

    def step() -> None:
        loss = F.cross_entropy(model(points), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [("full", "plain"), ("dapt", "plain"), ("dapt", "fused"), ("dapt", "recompute")]
    base = None
    print("| size | method | step ms | / full fine-tuning |\n|---|---|---|---|")
    for kind, execution in rows:
        ms = step_ms(kind, execution, args.size, args.steps)
        base = base or ms
        print(f"| {args.size} | {kind}-{execution} | {ms:.1f} | {ms / base:.3f} |", flush=True)


if __name__ == "__main__":
    main()
