"""Anatomy of a DAPT training step on a GPU: what it costs, part by part, and whether the host or the GPU
bounds it.

For each batch and precision:

* per method (see ``bench_training.METHODS``): the step's median GPU time (CUDA events), the host's time to
  issue it (wall clock from a synchronized start to the return of ``step()``), and its peak memory; a step
  whose host time reaches its GPU time is bound by the launches, not by the GPU;
* the parts of the forward, timed alone: the grouping (``pointpeft.ops.group``), the frozen patch encoder,
  and the rest (the DAPT model's forward minus the two);
* the CUDA kernels of the ``--kernels`` methods' steps, summed by kind (matrix products, convolutions,
  normalisation, attention, elementwise, reductions, grouping, optimizer, copies).

Then inference (``torch.no_grad``, eval mode) at each batch: time and peak memory above the inputs of the
frozen backbone's own forward and of the DAPT model's.

Run on a GPU:  PYTHONPATH=src python benchmarks/step_anatomy.py [--batches 32 128] [--dtypes fp32 bf16]
"""

from __future__ import annotations

import argparse
import gc
import re
from collections import defaultdict
from collections.abc import Callable

import bench_training
import torch
from bench_training import METHODS, build, fixed_batch, make_step, set_precision, time_ms
from host_overhead import host_ms
from torch.profiler import ProfilerActivity, profile

import pointpeft
from pointpeft.backbones import PointMAE

GIB = 2**30
_KINDS = (
    ("grouping", r"fps|knn|group|gather_groups"),
    ("optimizer", r"multi_tensor|adam|foreach"),
    ("attention", r"fmha|flash|attention|efficient_attention|sdpa"),
    ("matmul", r"gemm|sm90|cutlass|cublas|ampere_|sgemm|matmul|nvjet|xmma"),
    ("convolution", r"conv|cudnn|implicit"),
    ("normalisation", r"norm|batch_norm|welford|layer_norm"),
    ("softmax", r"softmax"),
    ("reduction", r"reduce|max|sum|mean|argmax|topk"),
    ("copy", r"copy|cat|memcpy|memset|fill|index|scatter|gather"),
    ("elementwise", r"elementwise|vectorized|unrolled|triton|gelu|mul|add"),
)


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    for kind, pattern in _KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def kernel_table(step: Callable[[], None], steps: int = 3) -> tuple[dict[str, tuple[float, int]], list]:
    """``({kind: (GPU ms per step, launches per step)}, [(ms per step, kernel name)] top 12)``."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    top = []
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", None)
        if cuda_us is None:
            cuda_us = getattr(event, "cuda_time_total", 0.0)
        if not cuda_us or event.key.startswith(("ProfilerStep", "cuda")):
            continue
        if getattr(event, "device_type", None) is not None and "CUDA" not in str(event.device_type):
            continue
        kind = kind_of(event.key)
        kinds[kind][0] += cuda_us / 1e3 / steps
        kinds[kind][1] += event.count // steps
        top.append((cuda_us / 1e3 / steps, event.key[:90]))
    top.sort(reverse=True)
    return {k: (v[0], int(v[1])) for k, v in kinds.items()}, top[:12]


def parts(batch: int, dtype: str, device: torch.device) -> dict[str, float]:
    """Forward parts, timed alone (training mode, as in a step): grouping, frozen encoder, whole forward."""
    model = build("dapt-fused", device)
    backbone = model.base_model if hasattr(model, "base_model") else model
    points, _ = fixed_batch(batch, device)
    group = pointpeft.ops.group
    neighborhood, _ = group(points, 128, 32)
    encoder = getattr(backbone, "encoder", None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def grouping() -> None:
        group(points, 128, 32)

    def encode() -> None:
        with autocast, torch.no_grad():
            encoder(neighborhood)

    def forward() -> None:
        with autocast:
            model(points)

    out = {"grouping": time_ms(grouping, 20, 3)}
    if encoder is not None:
        out["frozen encoder forward"] = time_ms(encode, 20, 3)
    out["forward (grad on, no backward)"] = time_ms(forward, 10, 3)
    return out


def inference(batch: int, dtype: str, device: torch.device) -> dict[str, tuple[float, float]]:
    """``{name: (ms, peak GiB above the inputs)}`` of eval forwards under ``torch.no_grad``."""
    points, _ = fixed_batch(batch, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16")
    torch.manual_seed(0)
    models = {"frozen backbone (its own forward)": PointMAE(pos_mode="once").to(device).eval()}
    models["DAPT (fused)"] = build("dapt-fused", device).eval()
    models["DAPT (plain)"] = build("dapt-plain", device).eval()
    result = {}
    for name, model in models.items():

        @torch.no_grad()
        def run(m: torch.nn.Module = model) -> None:
            with autocast:
                m(points)

        run()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / GIB
        result[name] = (time_ms(run, 10, 2), peak)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["full-plain", "dapt-plain", "dapt-fused", "dapt-recompute", "dapt-graph"],
    )
    parser.add_argument("--kernels", nargs="*", default=["dapt-graph"], choices=METHODS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead"])
    args = parser.parse_args()
    bench_training.COMPILE_MODE = args.compile_mode
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | pointpeft {pointpeft.__version__}")
    for batch in args.batches:
        for dtype in args.dtypes:
            set_precision(dtype)
            print(f"\n## batch {batch}, {dtype} (TF32 {'on' if dtype == 'tf32' else 'off'})")
            print("| method | GPU ms | host ms | peak GiB |")
            print("|---|---|---|---|")
            for method in args.methods:
                gc.collect()
                torch.cuda.empty_cache()
                step = make_step(method, dtype, batch, device)
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                gpu = time_ms(step, args.steps, warmup=1)
                peak = torch.cuda.max_memory_allocated() / GIB
                host = host_ms(step, args.steps)
                print(f"| {method} | {gpu:.1f} | {host:.1f} | {peak:.3f} |", flush=True)
                if method in args.kernels:
                    kinds, top = kernel_table(step)
                    total = sum(ms for ms, _ in kinds.values())
                    print(
                        f"  {method} kernels per step: {total:.1f} ms GPU in {sum(n for _, n in kinds.values())} launches"
                    )
                    for kind, (ms, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
                        print(f"    {kind:14s} {ms:8.2f} ms  {n:6d} launches")
                    for ms, name in top:
                        print(f"    top {ms:7.2f} ms  {name}")
                del step
            for name, ms in parts(batch, dtype, device).items():
                print(f"  part: {name}: {ms:.2f} ms")
            for name, (ms, peak) in inference(batch, dtype, device).items():
                print(f"  inference: {name}: {ms:.2f} ms, peak {peak:.3f} GiB above the inputs")
            gc.collect()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
