"""Chamfer-L2 on a GPU: the pure-torch nearest-point search against the Triton KNN kernel, forward and
backward, and the time of one Point-MAE pre-training step (eager, fp32 with TF32 off).

    PYTHONPATH=src python benchmarks/bench_chamfer.py
"""

from __future__ import annotations

import time

import torch

from pointpeft.backbones import PointMAE
from pointpeft.pretrain import PointMAEPretrainer, chamfer_l2


def _time(fn, repeats: int = 20) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / repeats * 1e3


def _chamfer_ms(sets: int, n: int, backend: str) -> float:
    p = torch.randn(sets, n, 3, device="cuda", requires_grad=True)
    t = torch.randn(sets, n, 3, device="cuda")

    def step() -> None:
        p.grad = None
        chamfer_l2(p, t, backend=backend).backward()  # type: ignore[arg-type]

    return _time(step)


def _pretrain_step(batch: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = PointMAEPretrainer(PointMAE(num_group=64, group_size=32, drop_path_rate=0.1)).cuda()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    points = torch.randn(batch, 1024, 3, device="cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(points).backward()
        optimizer.step()

    torch.cuda.reset_peak_memory_stats()
    ms = _time(step, 10)
    return ms, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; fp32, TF32 off, eager")
    print("| sets × points (predicted, target) | torch ms | triton ms | torch / triton |\n|---|---|---|---|")
    for sets, n in ((128 * 38, 32), (128 * 19, 16), (8, 8192)):
        torch_ms, triton_ms = (_chamfer_ms(sets, n, backend) for backend in ("torch", "triton"))
        print(f"| {sets} × {n} | {torch_ms:.3f} | {triton_ms:.3f} | {torch_ms / triton_ms:.2f}× |")
    print("\none pre-training step (released sizes: 12×384, 64 groups of 32, 1,024 points), AdamW:")
    print("| batch | ms per step | peak GiB |\n|---|---|---|")
    for batch in (32, 128):
        ms, peak = _pretrain_step(batch)
        print(f"| {batch} | {ms:.1f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
