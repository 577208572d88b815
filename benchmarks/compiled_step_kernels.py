"""Where the GPU time of a compiled training step goes: the CUDA kernels of a few steps under
``torch.profiler`` (those replayed inside CUDA graphs included), summed by kind, for DAPT and full
fine-tuning in the rows of ``bench_compiled_step.py``; then AdamW's step over DAPT's trainable tensors with
the ``foreach`` and the ``fused`` implementations, side by side.

Kinds: ``matmul`` (cuBLAS / CUTLASS / nvjet kernels), ``attention`` (flash / memory-efficient attention),
``fused pointwise`` and ``fused reduction`` (inductor's Triton kernels, ``triton_poi_*`` and
``triton_red_*`` / ``triton_per_*``), ``grouping`` (pointpeft's FPS and KNN kernels), ``optimizer``
(multi-tensor and fused Adam), ``copies`` (memcpy / memset), ``aten`` (any other kernel).

Run on a GPU:  PYTHONPATH=src python benchmarks/compiled_step_kernels.py [--batch 32] [--dtype bf16]
               [--methods dapt full] [--steps 5]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from bench_compiled_step import build, prepare
from bench_training import time_ms
from torch.profiler import ProfilerActivity, profile

KINDS = (
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("matmul", ("gemm", "cutlass", "nvjet", "cublas", "xmma", "sm90_", "sm80_")),
    ("fused pointwise", ("triton_poi",)),
    ("fused reduction", ("triton_red", "triton_per")),
    ("grouping", ("fps", "knn", "group")),
    ("optimizer", ("adam", "multi_tensor")),
    ("copies", ("memcpy", "memset")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, marks in KINDS:
        if any(mark in lowered for mark in marks):
            return kind
    return "aten"


def device_time_us(event: object) -> float:
    """The event's own device time in microseconds (the attribute's name changed across torch versions)."""
    for attribute in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, attribute, None)
        if value is not None:
            return float(value)
    return 0.0


def profile_method(method: str, dtype: str, batch: int, steps: int) -> None:
    step, compile_s, _ = prepare(method, dtype, batch, "reduce-overhead")
    step_ms = time_ms(step, steps=10, warmup=0)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if device_time_us(e) > 0]
    total = sum(device_time_us(e) for e in kernels) / steps / 1e3
    launches = sum(e.count for e in kernels) / steps
    by_kind: dict[str, float] = collections.defaultdict(float)
    count_by_kind: dict[str, float] = collections.defaultdict(float)
    for e in kernels:
        by_kind[kind_of(e.key)] += device_time_us(e) / steps / 1e3
        count_by_kind[kind_of(e.key)] += e.count / steps
    print(
        f"## {method}, batch {batch}, {dtype}, compiled reduce-overhead (compile {compile_s:.0f} s): "
        f"{total:.2f} ms of kernels and {launches:.0f} kernels per step; the step unprofiled: "
        f"{step_ms:.2f} ms (median of 10, CUDA events)"
    )
    print("| kind | ms per step | kernels per step | share |\n|---|---|---|---|")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:.2f} | {count_by_kind[kind]:.0f} | {ms / total:.0%} |")
    print("\nthe 15 costliest kernels (ms per step, calls per step):")
    for e in sorted(kernels, key=device_time_us, reverse=True)[:15]:
        print(f"  {device_time_us(e) / steps / 1e3:7.3f} ms  {e.count / steps:5.0f}  {e.key[:110]}")
    print()


def time_optimizers(repeats: int = 30) -> None:
    """AdamW's step over DAPT's trainable tensors (with gradients set), ``foreach`` against ``fused``."""
    model = build("dapt").cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    print(
        f"## AdamW step over DAPT's {len(params)} trainable tensors ({sum(p.numel() for p in params):,} values)"
    )
    print("| implementation | GPU ms | host ms |\n|---|---|---|")
    for name in ("foreach", "fused"):
        optimizer = torch.optim.AdamW(params, lr=1e-4, **{name: True})
        for _ in range(3):
            optimizer.step()
        gpu, host = [], []
        for _ in range(repeats):
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start = time.perf_counter()
            begin.record()
            optimizer.step()
            end.record()
            host.append((time.perf_counter() - start) * 1e3)
            torch.cuda.synchronize()
            gpu.append(begin.elapsed_time(end))
        print(f"| {name} | {statistics.median(gpu):.3f} | {statistics.median(host):.3f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--methods", nargs="+", default=["dapt", "full"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-optimizers", action="store_true", help="skip the AdamW comparison")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    if not args.no_optimizers:
        time_optimizers()
    for method in args.methods:
        profile_method(method, args.dtype, args.batch, args.steps)


if __name__ == "__main__":
    main()
