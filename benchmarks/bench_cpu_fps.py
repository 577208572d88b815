"""CPU benchmark: ``pointpeft.ops.farthest_point_sample`` against the obvious per-step FPS loop.

Usage::

    PYTHONPATH=src python benchmarks/bench_cpu_fps.py [--threads 2] [--runs 30] [--batch 32 --points 1024 --samples 64]

Prints the median wall time of both loops over ``--runs`` timed runs (after warm-up; the two are
interleaved so that drifting machine load affects both alike) and the ratio of the medians. Timings
are only meaningful on an otherwise idle machine: the 1-minute load average is printed and a warning
(taken before the runs) is shown when it suggests other processes compete for the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pointpeft.ops import farthest_point_sample


@torch.no_grad()
def naive_fps(xyz: torch.Tensor, num_samples: int, start_idx: int = 0) -> torch.Tensor:
    """The obvious loop: per step ``d = ((xyz - xyz[b, last]) ** 2).sum(-1)``, running min, argmax."""
    batch, num_points, _ = xyz.shape
    b = torch.arange(batch)[:, None]
    dist = torch.full((batch, num_points), float("inf"))
    last = torch.full((batch, 1), start_idx, dtype=torch.long)
    picked = [last]
    for _ in range(num_samples - 1):
        d = ((xyz - xyz[b, last]) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        last = dist.argmax(-1, keepdim=True)
        picked.append(last)
    return torch.cat(picked, dim=1)


def pointpeft_fps(xyz: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The public op (validation included), forced onto the pure-PyTorch backend."""
    return farthest_point_sample(xyz, num_samples, backend="torch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per loop (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per loop (default 5)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be >= 20")

    load = os.getloadavg()[0]  # before this process adds its own load
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(args.batch, args.points, 3, generator=gen)
    m = args.samples
    if not torch.equal(naive_fps(xyz, m), pointpeft_fps(xyz, m)):
        print("note: the two loops picked different indices on this input (rounding of ** 2 / sum)")

    loops = {"naive loop": naive_fps, "pointpeft.ops": pointpeft_fps}
    for fn in loops.values():
        for _ in range(args.warmup):
            fn(xyz, m)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.runs):
        for name, fn in loops.items():
            start = time.perf_counter()
            fn(xyz, m)
            times[name].append(time.perf_counter() - start)

    print(
        f"FPS on CPU: B={args.batch}, N={args.points}, M={m}, float32, {args.threads} thread(s), "
        f"{args.runs} runs after {args.warmup} warm-up runs; torch {torch.__version__}"
    )
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"  {name:14s} median {medians[name] * 1e3:8.3f} ms   (min {min(ts) * 1e3:8.3f} ms)")
    print(
        f"  speed-up (median naive / median pointpeft): {medians['naive loop'] / medians['pointpeft.ops']:.2f}x"
    )
    print(f"  1-minute load average before the runs: {load:.2f} on {os.cpu_count()} CPU(s)")
    if load > 0.5:
        print("  warning: the machine is busy; these timings are unreliable, rerun when it is idle")


if __name__ == "__main__":
    main()
