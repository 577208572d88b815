"""Time FPS, KNN and grouping on a GPU: pointpeft's Triton and torch backends, and every peer importable.

Usage: PYTHONPATH=src python benchmarks/bench_grouping.py [--cases A,A2,B,C] [--repeats 30]

Median of CUDA-event timings after warm-up, random points in [-1, 1]^3, float32, FPS from index 0. Cases
are (B, N, M, K): A is the Point-MAE ModelNet40 grouping, A2 the DAPT ScanObjectNN grouping. The backend
rows call the backend functions directly (no input validation); one row times the public
``pointpeft.ops.group``, whose validation checks finiteness and so waits for the GPU.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
from collections.abc import Callable

import torch

from pointpeft import ops
from pointpeft.ops import torch_backend, triton_backend

CASES = {
    "A": (32, 1024, 64, 32),
    "A2": (32, 2048, 128, 32),
    "B": (32, 8192, 512, 32),
    "C": (1, 100_000, 4096, 32),
}


def cuda_median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gather(xyz: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(xyz, 1, idx[..., None].expand(-1, -1, 3))


def peers(xyz: torch.Tensor, centers: torch.Tensor, m: int, k: int) -> dict[str, Callable[[], object]]:
    """Peer implementations that import here, keyed 'op: name'."""
    found: dict[str, Callable[[], object]] = {}

    def cdist_topk() -> object:
        return torch.cdist(centers, xyz).topk(k, dim=-1, largest=False)

    found["knn: torch.cdist+topk"] = cdist_topk
    try:
        pointnet2 = importlib.import_module("pointnet2_ops.pointnet2_utils")
        found["fps: pointnet2_ops"] = lambda: pointnet2.furthest_point_sample(xyz, m)
    except ImportError:
        pass
    try:
        ops3d = importlib.import_module("pytorch3d.ops")
        found["fps: pytorch3d"] = lambda: ops3d.sample_farthest_points(xyz, K=m)
        found["knn: pytorch3d"] = lambda: ops3d.knn_points(centers, xyz, K=k)
    except ImportError:
        pass
    try:
        torch_fps = importlib.import_module("torch_fps")
        mask = torch.ones(xyz.shape[:2], dtype=torch.bool, device=xyz.device)
        found["fps: torch-fps"] = lambda: torch_fps.farthest_point_sampling(xyz, mask, m, start_idx=0)
    except ImportError:
        pass
    try:
        cluster = importlib.import_module("torch_cluster")
        flat = xyz.reshape(-1, 3)
        batch = torch.arange(xyz.shape[0], device=xyz.device).repeat_interleave(xyz.shape[1])
        found["fps: torch_cluster"] = lambda: cluster.fps(
            flat, batch, ratio=m / xyz.shape[1], random_start=False
        )
    except ImportError:
        pass
    return found


def bench_case(name: str, repeats: int, with_torch: bool) -> list[tuple[str, str, float]]:
    """``(op, implementation, median ms)`` rows for one case."""
    b, n, m, k = CASES[name]
    gen = torch.Generator(device="cuda").manual_seed(0)
    xyz = torch.rand(b, n, 3, device="cuda", generator=gen) * 2 - 1
    centers = gather(xyz, triton_backend.farthest_point_sample(xyz, m, 0, None))
    candidates: list[tuple[str, str, Callable[[], object], int]] = [
        ("fps", "pointpeft triton", lambda: triton_backend.farthest_point_sample(xyz, m, 0, None), repeats),
        ("knn", "pointpeft triton", lambda: triton_backend.knn(centers, xyz, k, None, None), repeats),
        ("group", "pointpeft triton (fused)", lambda: triton_backend.group(xyz, m, k, 0, None), repeats),
        (
            "group",
            "pointpeft.ops.group (public API: validation + dispatch)",
            lambda: ops.group(xyz, m, k),
            repeats,
        ),
    ]
    if with_torch:  # pointpeft's pure-torch backend on the GPU: slow, fewer runs
        candidates += [
            ("fps", "pointpeft torch", lambda: torch_backend.farthest_point_sample(xyz, m, 0, None), 5),
            (
                "knn",
                "pointpeft torch (chunked, exact)",
                lambda: torch_backend.knn(centers, xyz, k, None, None),
                5,
            ),
        ]
    for label, fn in peers(xyz, centers, m, k).items():
        op, impl = label.split(": ")
        candidates.append((op, impl, fn, repeats))
    return [(op, impl, cuda_median_ms(fn, reps)) for op, impl, fn, reps in candidates]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-torch", action="store_true", help="skip pointpeft's (slow) pure-torch backend")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; ", end="")
    import triton

    print(f"triton {triton.__version__}; median of {args.repeats} runs (ms)")
    print("| case (B, N, M, K) | op | implementation | ms | x pointpeft triton |\n|---|---|---|---|---|")
    for name in args.cases.split(","):
        b, n, m, k = CASES[name]
        rows = bench_case(name, args.repeats, with_torch=not args.no_torch)
        ours = {op: ms for op, impl, ms in rows if impl.startswith("pointpeft triton")}
        for op, impl, ms in rows:
            ratio = f"{ms / ours[op]:.2f}" if op in ours else "-"
            print(f"| {name} ({b}, {n}, {m}, {k}) | {op} | {impl} | {ms:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
