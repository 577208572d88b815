"""Is a training step bound by the GPU or by the CPU that launches its kernels?

For each method and dtype, at one batch size: the median GPU time of a step (CUDA events), the median
host time to issue it (wall clock from a synchronized start to the return of ``step()``, without waiting
for the GPU), the number of kernel launches per step, and the places where the step waits for the GPU
(``torch.cuda.set_sync_debug_mode``). A step whose host time is close to its GPU time is launch-bound.

Run on a GPU:  PYTHONPATH=src python benchmarks/host_overhead.py [--batch 128] [--methods ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from bench_training import METHODS, make_step, time_ms
from torch.profiler import ProfilerActivity, profile

_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def host_ms(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def launches(step) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.key in _LAUNCHES)


def syncs(step) -> list[str]:
    """One line per distinct place where the step synchronizes with the GPU."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sorted({f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0][:80]}" for w in caught})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | batch {args.batch}")
    print("| dtype | method | GPU ms | host ms | kernel launches | syncs |")
    print("|---|---|---|---|---|---|")
    for dtype in ("fp32", "bf16"):
        for method in args.methods:
            step = make_step(method, dtype, args.batch, device)
            for _ in range(3):  # a CUDA graph is recorded at the third call
                step()
            gpu = time_ms(step, args.steps, warmup=2)
            host = host_ms(step, args.steps)
            count = launches(step)
            where = syncs(step)
            print(f"| {dtype} | {method} | {gpu:.1f} | {host:.1f} | {count} | {len(where)} |", flush=True)
            for line in where:
                print(f"    sync: {line}")


if __name__ == "__main__":
    main()
