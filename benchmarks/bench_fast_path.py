"""DAPT's fast path (``execution="fused"``: selective activation checkpointing, the block's own forward
keeping only its matrix products' outputs) against the plain computation, eager and under ``torch.compile``,
side by side in one run.

One step = forward (grouping included) + cross entropy + backward + AdamW step, ScanObjectNN setting (2048
points, 128 groups x 32, 15 classes), Point-MAE 12 x 384 (drop path 0.1), DAPT rank 64 with pool
cls+prompt+patch. "fp32" is TF32 off for matrix products and cuDNN; "bf16" is bf16 autocast.

This script also ran (at commit 0d3462a) the hand-written fused autograd functions that the selective
checkpointing replaced; docs/benchmarks.md holds that comparison.

Run on a GPU:  PYTHONPATH=src python benchmarks/bench_fast_path.py [--batches 32 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable

import torch
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE

ROWS = (("plain", "eager"), ("fused", "eager"), ("plain", "compiled"), ("fused", "compiled"))


def build(path: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = PointMAE(drop_path_rate=0.1, pos_mode="once")
    config = pointpeft.DAPTConfig(num_classes=15, adapter_dropout=0.5)
    return pointpeft.wrap_with_dapt(backbone, config, execution=path).to(device).train()


def time_ms(fn: Callable[[], object], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(
    path: str, mode: str, dtype: str, batch: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """``(peak GiB, median ms)`` of one training step."""
    gc.collect()
    torch.cuda.empty_cache()
    model = build(path, device)
    runner = torch.compile(model) if mode == "compiled" else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    points = torch.rand(batch, 2048, 3, device=device, generator=gen) * 2 - 1
    labels = torch.randint(0, 15, (batch,), device=device, generator=gen)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = runner(points)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # compilation, optimizer state, cuDNN search
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = time_ms(step, steps, warmup=2)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return peak, ms


@torch.no_grad()
def inference(mode: str, dtype: str, batch: int, steps: int, device: torch.device) -> tuple[float, float]:
    gc.collect()
    torch.cuda.empty_cache()
    model = build("fused", device).eval()
    runner = torch.compile(model) if mode == "compiled" else model
    points = torch.rand(batch, 2048, 3, device=device) * 2 - 1

    def forward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            runner(points)

    for _ in range(3):
        forward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = time_ms(forward, steps, warmup=2)
    return torch.cuda.max_memory_allocated() / 2**30, ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", nargs="+", default=[f"{p}-{m}" for p, m in ROWS])
    parser.add_argument("--inference", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch._dynamo.config.cache_size_limit = 64
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; fp32 = TF32 off (matmul and cuDNN)")
    print("| batch | precision | fast path | mode | peak GiB | ms per step |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        for batch in args.batches:
            for row in args.rows:
                path, mode = row.split("-")
                peak, ms = measure(path, mode, dtype, batch, args.steps, device)
                print(f"| {batch} | {dtype} | {path} | {mode} | {peak:.3f} | {ms:.1f} |", flush=True)
    if args.inference:
        print("\n| batch | precision | inference | peak GiB | ms |")
        print("|---|---|---|---|---|")
        for dtype in args.dtypes:
            for batch in args.batches:
                for mode in ("eager", "compiled"):
                    peak, ms = inference(mode, dtype, batch, args.steps, device)
                    print(f"| {batch} | {dtype} | {mode} | {peak:.3f} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
