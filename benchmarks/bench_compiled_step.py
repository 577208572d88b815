"""One compiled DAPT training step (``torch.compile(model)``, default mode) at batch 128: peak memory and
median step time of ``execution`` in ``fp32`` (TF32 off for matrix products and cuDNN) or ``bf16`` autocast.
ScanObjectNN setting (2048 points, 128 groups of 32, 15 classes), Point-MAE 12 x 384 with drop path 0.1,
DAPT rank 64, pool cls+prompt+patch, adapter dropout 0.5; forward with grouping + cross entropy + backward +
AdamW; median of 10 steps after 3 warm-up steps.

Run on a GPU:  PYTHONPATH=src python benchmarks/bench_compiled_step.py fused fp32
"""

from __future__ import annotations

import statistics
import sys

import torch
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE


def main(execution: str, dtype: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    config = pointpeft.DAPTConfig(num_classes=15, adapter_dropout=0.5)
    backbone = PointMAE(drop_path_rate=0.1, pos_mode="once")
    model = pointpeft.wrap_with_dapt(backbone, config, execution=execution).cuda().train()
    compiled = torch.compile(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    points = torch.rand(128, 2048, 3, device="cuda") * 2 - 1
    labels = torch.randint(0, 15, (128,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = compiled(points)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"| 128 | {dtype} | {execution} | compiled | {peak:.3f} | {statistics.median(times):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
