"""Compiled DAPT training steps (``torch.compile(model)``): compile time, median GPU time, host time to issue
a step, and peak memory, for each batch, precision and compile mode.

``fp32`` has TF32 off for matrix products and cuDNN, ``tf32`` on for both; ``bf16`` is bf16 autocast (TF32 off for what stays in
fp32). Modes: ``default`` (inductor) and ``reduce-overhead`` (inductor, the compiled forward and backward
replayed as CUDA graphs). ScanObjectNN setting (2048 points, 128 groups of 32, 15 classes), Point-MAE 12 x 384
with drop path 0.1, DAPT rank 64, pool cls+prompt+patch, adapter dropout 0.5, ``execution``
(default ``fused``); forward with grouping + cross entropy + backward + AdamW; median of 10 steps after 3
warm-up steps. "compile s" is the wall time of the first step (compilation included). Memory: the peak
allocated during the timed steps (blind to a CUDA graph's pool, which replays do not allocate from) and the
memory reserved since the model was built (which holds the pools; an upper bound).

Run on a GPU:  PYTHONPATH=src python benchmarks/bench_compiled_step.py [--batches 32 128] [--dtypes fp32 bf16]
               [--modes default reduce-overhead] [--execution fused]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE


def measure(execution: str, dtype: str, batch: int, mode: str) -> str:
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    reserved_before = torch.cuda.memory_reserved()
    torch.manual_seed(0)
    config = pointpeft.DAPTConfig(num_classes=15, adapter_dropout=0.5)
    backbone = PointMAE(drop_path_rate=0.1, pos_mode="once")
    model = pointpeft.wrap_with_dapt(backbone, config, execution=execution).cuda().train()
    compiled = torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    points = torch.rand(batch, 2048, 3, device="cuda") * 2 - 1
    labels = torch.randint(0, 15, (batch,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = compiled(points)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(10):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    peak = torch.cuda.max_memory_allocated() / 2**30
    # A CUDA graph's memory pool is allocated while it records, before the peak above was reset, and its
    # replays allocate nothing: the memory reserved since the model was built counts it (an upper bound).
    reserved = (torch.cuda.memory_reserved() - reserved_before) / 2**30
    hosts = []
    for _ in range(10):
        torch.cuda.synchronize()
        begin_s = time.perf_counter()
        step()
        hosts.append((time.perf_counter() - begin_s) * 1e3)
    torch.cuda.synchronize()
    return (
        f"| {batch} | {'fp32' if dtype == 'tf32' else dtype} | {'on' if dtype == 'tf32' else 'off'} | "
        f"compiled, {mode} | {execution} | {compile_s:.0f} | {peak:.3f} | {reserved:.3f} | "
        f"{statistics.median(times):.1f} | {statistics.median(hosts):.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=["default", "reduce-overhead"])
    parser.add_argument("--execution", default="fused", choices=["fused", "recompute", "plain"])
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | pointpeft {pointpeft.__version__}")
    print(
        "| batch | precision | TF32 | mode | execution | compile s | peak GiB | GPU ms per step | host ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        for dtype in args.dtypes:
            for mode in args.modes:
                try:
                    print(measure(args.execution, dtype, batch, mode), flush=True)
                except Exception as error:  # a compiler failure is a result here, not a crash
                    line = str(error).splitlines()[0][:200] if str(error) else ""
                    print(
                        f"| {batch} | {dtype} | | compiled, {mode} | {args.execution} | failed: "
                        f"{type(error).__name__}: {line} | | | |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
