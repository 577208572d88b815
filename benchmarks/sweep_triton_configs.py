"""Sweep the launch settings of the Triton FPS and KNN kernels (the numbers behind the defaults).

Usage: PYTHONPATH=src python benchmarks/sweep_triton_configs.py

For cases A, A2, B and C of bench_grouping.py: FPS for 1-16 warps (A, A2, B), KNN for 8-32 queries per
program, 4 or 8 warps, with and without skipping the tiles that cannot change a block's neighbours; prints
the four fastest settings of each (median ms of CUDA-event timings) and the default's time.
"""

from __future__ import annotations

import functools

import torch
from bench_grouping import CASES, cuda_median_ms, gather

from pointpeft.ops import triton_backend
from pointpeft.ops import triton_kernels as kernels


def fps_launch(xyz: torch.Tensor, out: torch.Tensor, warps: int) -> None:
    b, n, _ = xyz.shape
    kernels.fps_kernel[(b,)](
        xyz, out, out, n, out.shape[1], 0, *xyz.stride(), out.stride(0),
        HAS_LENGTHS=False, BLOCK_N=triton_backend.next_pow2(n), num_warps=warps, enable_fp_fusion=False,
    )  # fmt: skip


def knn_launch(
    query: torch.Tensor,
    points: torch.Tensor,
    dist: torch.Tensor,
    idx: torch.Tensor,
    block_q: int,
    warps: int,
    skip: bool,
) -> None:
    b, m, k = idx.shape
    constants = triton_backend.top_k_constants(k, points.shape[1])
    constants["SKIP"] = skip
    kernels.knn_kernel[(b * -(-m // block_q),)](
        query, points, idx, idx, dist, idx, b, m, points.shape[1], k, *query.stride(), *points.stride(),
        idx.stride(0), idx.stride(1), HAS_QLEN=False, HAS_PLEN=False, BLOCK_Q=block_q, num_warps=warps,
        enable_fp_fusion=False, **constants,
    )  # fmt: skip


def best(results: list[tuple[float, str]]) -> str:
    return ", ".join(f"{ms:.4f} ms ({label})" for ms, label in sorted(results)[:4])


def main() -> None:
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    for name in ("A", "A2", "B", "C"):
        b, n, m, k = CASES[name]
        xyz = torch.rand(b, n, 3, device="cuda") * 2 - 1
        out = torch.empty(b, m, dtype=torch.long, device="cuda")
        if triton_backend.next_pow2(n) <= triton_backend.MAX_REGISTER_POINTS:
            fps = [
                (cuda_median_ms(functools.partial(fps_launch, xyz, out, w), 20), f"warps={w}")
                for w in (1, 2, 4, 8, 16)
                if triton_backend.next_pow2(n) // (32 * w) <= 64
            ]
            print(f"{name} FPS: {best(fps)}")
        centers = gather(xyz, triton_backend.farthest_point_sample(xyz, m, 0, None))
        dist = torch.empty(b, m, k, device="cuda")
        idx = torch.empty(b, m, k, dtype=torch.long, device="cuda")
        knn = [
            (
                cuda_median_ms(functools.partial(knn_launch, centers, xyz, dist, idx, bq, w, skip), 20),
                f"BLOCK_Q={bq} warps={w} skip={skip}",
            )
            for bq in (8, 16, 32)
            for w in (4, 8)
            for skip in (False, True)
        ]
        print(f"{name} KNN: {best(knn)}")
        default = cuda_median_ms(lambda: triton_backend.knn(centers, xyz, k, None, None), 20)  # noqa: B023
        print(f"{name} KNN default (BLOCK_Q={triton_backend.BLOCK_Q}, warps={triton_backend.KNN_WARPS}, "
              f"skip={n >= triton_backend.SKIP_MIN_POINTS}): {default:.4f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
