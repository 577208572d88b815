"""Where a DAPT training step's peak GPU memory comes from: the frozen patch encoder's forward, or the rest.

Run on a GPU:  PYTHONPATH=src python benchmarks/profile_memory.py [--batch 128] [--execution fused]

Prints the peak of (1) the patch encoder's forward alone (with and without cuDNN benchmark mode), and
(2) one training step in phases: the forward up to the end of the patch encoder, the rest of the
forward, and the backward.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE

GIB = 2**30


def encoder_peak(batch: int, benchmark: bool) -> tuple[float, float]:
    """``(peak GiB above the inputs, ms)`` of the frozen patch encoder's forward on ``batch`` clouds."""
    torch.backends.cudnn.benchmark = benchmark
    torch.manual_seed(0)
    backbone = PointMAE().cuda().train().requires_grad_(False)
    groups = torch.randn(batch, 128, 32, 3, device="cuda") * 0.1
    for _ in range(3):
        backbone.encoder(groups)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    backbone.encoder(groups)
    end.record()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / GIB, start.elapsed_time(end)


def step_phases(batch: int, execution: str) -> dict[str, float]:
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = pointpeft.wrap_with_dapt(
        PointMAE(drop_path_rate=0.1, pos_mode="once"),
        pointpeft.DAPTConfig(num_classes=15, adapter_dropout=0.5),
        execution=execution,
    ).cuda()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    points = torch.rand(batch, 2048, 3, device="cuda") * 2 - 1
    labels = torch.randint(0, 15, (batch,), device="cuda")
    peaks: dict[str, float] = {}

    def after_encoder(module, args, out):
        torch.cuda.synchronize()
        peaks["forward to the end of the patch encoder"] = torch.cuda.max_memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()

    def step():
        logits = model(points)
        torch.cuda.synchronize()
        peaks["rest of the forward"] = torch.cuda.max_memory_allocated() / GIB
        peaks["allocated after the forward"] = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.cuda.synchronize()
        peaks["backward"] = torch.cuda.max_memory_allocated() / GIB
        optimizer.step()

    step()
    handle = model.base_model.encoder.register_forward_hook(after_encoder)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    handle.remove()
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--execution", nargs="+", default=["fused"])
    args = parser.parse_args()
    for benchmark in (True, False):
        peak, ms = encoder_peak(args.batch, benchmark)
        print(
            f"patch encoder forward, batch {args.batch}, cudnn.benchmark {benchmark}: {peak:.3f} GiB, {ms:.2f} ms"
        )
    for execution in args.execution:
        print(f"training step, batch {args.batch}, {execution}: peak GiB by phase")
        for phase, value in step_phases(args.batch, execution).items():
            print(f"  {phase}: {value:.3f}")


if __name__ == "__main__":
    main()
