"""Where the host time of a compiled training step goes: the CPU-side calls of a few steps under
``torch.profiler`` (kernel launches outside CUDA graphs, graph launches, and the costliest operators), for
DAPT and full fine-tuning in the rows of ``bench_compiled_step.py``.

Run on a GPU:  PYTHONPATH=src python benchmarks/graphed_step_host.py [--batch 32] [--dtype fp32]
               [--mode reduce-overhead] [--methods dapt full]
"""

from __future__ import annotations

import argparse
import collections

import torch
from bench_compiled_step import prepare
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--mode", default="reduce-overhead", choices=["default", "reduce-overhead"])
    parser.add_argument("--methods", nargs="+", default=["dapt", "full"])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    for method in args.methods:
        step, compile_s, _ = prepare(method, args.dtype, args.batch, args.mode)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
        events = prof.key_averages()
        calls = collections.Counter({e.key: e.count for e in events})
        launches = sum(
            n for k, n in calls.items() if k in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")
        )
        graphs = sum(n for k, n in calls.items() if k == "cudaGraphLaunch")
        print(
            f"## {method}, batch {args.batch}, {args.dtype}, compiled {args.mode} (compile {compile_s:.0f} s): "
            f"per step {launches / args.steps:.0f} kernel launches outside graphs, "
            f"{graphs / args.steps:.1f} graph launches"
        )
        print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()
