"""Triton GPU backend for the point-cloud ops (internal: use :mod:`pointpeft.ops`).

Same signatures and numerical contract as :mod:`pointpeft.ops.torch_backend`; the kernels are in
:mod:`pointpeft.ops.triton_kernels`, imported on first use. The launch settings below are module constants
so that tests can force every kernel on small clouds. Strategies:

* FPS: one program per cloud with the cloud in registers (N <= 8192); larger clouds are split over up
  to one program per SM that meet at a grid barrier every step; when even that does not fit, one
  program per cloud streams its points from memory.
* KNN: programs over (cloud, 16 queries) scan the points in tiles and keep a sorted top-k in registers;
  the (B, M, N) distance matrix is never formed. The grid is one-dimensional (B x blocks programs), so
  the number of queries is not bounded by CUDA's 65535 limit on the second grid axis.
* group: FPS, then one kernel that fuses KNN, the gather and the centering.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

from pointpeft.ops import torch_backend

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Whether triton is installed, looked up once (without importing it): torch.compile cannot trace importlib.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def unavailable_reason(tensor: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on ``tensor``, or None when they can.

    They run on CUDA tensors of fp16/bf16/fp32 with triton installed; on CPU tensors only under
    ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests).
    """
    if not TRITON_INSTALLED:
        return "triton is not installed (pip install 'pointpeft[triton]')"
    if tensor.dtype not in SUPPORTED_DTYPES:
        return f"the Triton kernels take float16, bfloat16 or float32, got {tensor.dtype}"
    if tensor.device.type == "cuda":
        return None
    if tensor.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for CPU tests), got one on {tensor.device}"


# Clouds up to this many points are held in registers by the FPS kernel; larger ones stream from memory.
MAX_REGISTER_POINTS = 8192
STREAM_BLOCK = 4096
# Larger clouds are split over several programs of MULTI_CHUNK points each, when every program of the
# grid fits on the GPU at once (the programs wait for each other at every step).
MULTI_CHUNK = 2048
# Queries per KNN / group program, and warps per program: among the fastest of BLOCK_Q in {8, 16, 32}
# and warps in {4, 8} on an H200 for cases A2, B and C of benchmarks/bench_grouping.py (docs/benchmarks.md).
BLOCK_Q = 8
KNN_WARPS = 4
# Clouds of at least this many points skip the tiles that cannot change a block's neighbours (on the
# H200: 2.0x faster at 100,000 points, 5% slower at 8,192, where few tiles can be skipped).
SKIP_MIN_POINTS = 32768
#: Largest k (KNN) or group_size (group) the kernels take: their register top-k of BLOCK_Q x KP int64 keys
#: fits the registers at KP = 256 (ptxas for sm_90: 252 of 255 per thread, no spill) and spills beyond, while
#: the compile time grows about fourfold per doubling of KP. pointpeft.ops sends larger k to the torch
#: backend under "auto" and refuses them for backend="triton".
MAX_K = 256


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 << max(0, (n - 1).bit_length())


def _kernels() -> ModuleType:
    """:mod:`pointpeft.ops.triton_kernels`, imported on first use: so ``TRITON_INTERPRET`` is read then,
    and CPU-only users never import triton."""
    from pointpeft.ops import triton_kernels

    return triton_kernels


def top_width(k: int) -> int:
    """Width ``KP`` of the register top-k that keeps ``k`` neighbours: a power of two, at least 16."""
    return max(16, next_pow2(k))


def top_k_constants(k: int, num_points: int) -> dict[str, int | bool]:
    """The compile-time constants of the register top-k (``KP``, ``LOG_KP``, ``SKIP``) for ``k``
    neighbours among clouds of ``num_points`` points."""
    width = top_width(k)
    return {"KP": width, "LOG_KP": width.bit_length() - 1, "SKIP": num_points >= SKIP_MIN_POINTS}


def farthest_point_sample(
    xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None
) -> torch.Tensor:
    """Farthest point sampling; see :func:`pointpeft.ops.farthest_point_sample`."""
    kernels = _kernels()
    batch, num_points, _ = xyz.shape
    out = torch.empty((batch, num_samples), dtype=torch.long, device=xyz.device)
    if batch == 0:
        return out
    common = dict(HAS_LENGTHS=lengths is not None, enable_fp_fusion=False)
    lengths_arg = lengths if lengths is not None else out  # unused pointer when HAS_LENGTHS is False
    if num_points <= MAX_REGISTER_POINTS:
        block = max(16, next_pow2(num_points))
        kernels.fps_kernel[(batch,)](
            xyz, lengths_arg, out, num_points, num_samples, start_idx, *xyz.stride(), out.stride(0),
            BLOCK_N=block, num_warps=4 if block <= 2048 else 8, **common,
        )  # fmt: skip
    elif (programs := -(-num_points // MULTI_CHUNK)) * batch <= _resident_programs(xyz.device):
        p2 = next_pow2(programs)
        candidates = torch.empty((batch, 2, 5, p2), dtype=torch.float32, device=xyz.device)
        counter = torch.zeros(batch, dtype=torch.int32, device=xyz.device)
        kernels.fps_multi_kernel[(batch * programs,)](
            xyz, lengths_arg, out, candidates, counter, num_points, num_samples, start_idx, programs,
            *xyz.stride(), out.stride(0), CHUNK=MULTI_CHUNK, P2=p2, num_warps=8, **common,
        )  # fmt: skip
    else:
        scratch = torch.empty((batch, num_points), dtype=torch.float32, device=xyz.device)
        kernels.fps_stream_kernel[(batch,)](
            xyz, lengths_arg, out, scratch, num_points, num_samples, start_idx, *xyz.stride(), out.stride(0),
            BLOCK_N=STREAM_BLOCK, num_warps=16, **common,
        )  # fmt: skip
    return out


def _resident_programs(device: torch.device) -> int:
    """How many programs of the multi-program FPS kernel may run at once: one per SM on a GPU; one in
    the interpreter, which runs programs one after another."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def knn(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor | None,
    point_lengths: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sq_dist, idx)`` of the ``k`` nearest neighbours; see :func:`pointpeft.ops.knn`."""
    kernels = _kernels()
    batch, num_queries, _ = query.shape
    num_points = points.shape[1]
    idx = torch.empty((batch, num_queries, k), dtype=torch.long, device=query.device)
    sq_dist = torch.empty((batch, num_queries, k), dtype=query.dtype, device=query.device)
    if batch == 0 or num_queries == 0:
        return sq_dist, idx
    kernels.knn_kernel[(batch * triton_cdiv(num_queries, BLOCK_Q),)](
        query, points, query_lengths if query_lengths is not None else idx,
        point_lengths if point_lengths is not None else idx, sq_dist, idx, batch, num_queries, num_points, k,
        *query.stride(), *points.stride(), idx.stride(0), idx.stride(1),
        HAS_QLEN=query_lengths is not None, HAS_PLEN=point_lengths is not None, BLOCK_Q=BLOCK_Q,
        num_warps=KNN_WARPS, enable_fp_fusion=False, **top_k_constants(k, num_points),
    )  # fmt: skip
    if torch.is_grad_enabled() and (query.requires_grad or points.requires_grad):
        # The same values, with a graph.
        sq_dist = torch_backend.neighbour_sq_dist(query, points, idx, query_lengths, point_lengths)
    return sq_dist, idx


def group(
    xyz: torch.Tensor, num_group: int, group_size: int, start_idx: int, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neighborhood, centers)``: FPS, then one fused KNN + gather + centering kernel."""
    center_idx = farthest_point_sample(xyz, num_group, start_idx, lengths)
    if torch.is_grad_enabled() and xyz.requires_grad:
        centers = torch_backend.gather_points(xyz, center_idx)
        _, idx = knn(centers.detach(), xyz.detach(), group_size, None, lengths)
        return torch_backend.gather_points(xyz, idx) - centers[:, :, None, :], centers
    kernels = _kernels()
    batch, num_points, _ = xyz.shape
    neighborhood = torch.empty((batch, num_group, group_size, 3), dtype=xyz.dtype, device=xyz.device)
    centers = torch.empty((batch, num_group, 3), dtype=xyz.dtype, device=xyz.device)
    if batch == 0:
        return neighborhood, centers
    kernels.group_kernel[(batch * triton_cdiv(num_group, BLOCK_Q),)](
        xyz, lengths if lengths is not None else center_idx, center_idx, neighborhood, centers, batch,
        num_group, num_points, group_size, *xyz.stride(), center_idx.stride(0),
        HAS_LENGTHS=lengths is not None, BLOCK_Q=BLOCK_Q, num_warps=KNN_WARPS,
        enable_fp_fusion=False, **top_k_constants(group_size, num_points),
    )  # fmt: skip
    return neighborhood, centers


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)
