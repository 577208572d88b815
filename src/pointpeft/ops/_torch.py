"""Exact, chunked pure-PyTorch backend for the point-cloud ops (private).

Every function here assumes its inputs were already validated by :mod:`pointpeft.ops`.

Numerical contract shared with any future backend (e.g. a Triton kernel), so that indices match
bit-for-bit:

* coordinates are upcast to float32 for float16/bfloat16/float32 inputs (float64 stays float64);
* a squared distance is ``dx*dx + dy*dy + dz*dz`` evaluated left to right with separate, correctly
  rounded multiplies and adds (no fused multiply-add), where ``dx`` is a plain difference of the two
  coordinates (its sign is irrelevant: negation is exact);
* ties are broken to the lowest point index.
"""

from __future__ import annotations

import math

import torch

# Upper bound on the number of elements of one temporary (B, chunk, N) distance block in ``knn``.
# Two float blocks and one bool block of this size are live at a time (about 9 MB for float32).
_MAX_CHUNK_ELEMENTS: int = 2**20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which distances are evaluated for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _split_xyz(xyz: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``(B, N, 3)`` into three contiguous ``(B, N)`` coordinate arrays of ``dtype``."""
    xyz = xyz.detach().to(dtype)
    return xyz[..., 0].contiguous(), xyz[..., 1].contiguous(), xyz[..., 2].contiguous()


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, num_samples: int, start_idx: int) -> torch.Tensor:
    """Iterative farthest point sampling; see :func:`pointpeft.ops.farthest_point_sample`.

    Structure-of-arrays, in-place loop: memory is O(B * N) and every step runs a fixed sequence of
    elementwise kernels on preallocated buffers.
    """
    batch, num_points, _ = xyz.shape
    device = xyz.device
    x, y, z = _split_xyz(xyz, compute_dtype(xyz.dtype))

    out = torch.empty((batch, num_samples), dtype=torch.long, device=device)
    min_sq_dist = torch.full_like(x, float("inf"))
    acc = torch.empty_like(x)
    tmp = torch.empty_like(x)
    center = torch.empty((batch, 1), dtype=x.dtype, device=device)
    last = torch.full((batch, 1), start_idx, dtype=torch.long, device=device)

    for i in range(num_samples):
        out[:, i : i + 1] = last
        if i == num_samples - 1:
            break
        # acc = dx*dx; acc += dy*dy; acc += dz*dz  (separate multiply and add, left to right)
        torch.gather(x, 1, last, out=center)
        torch.sub(x, center, out=tmp)
        torch.mul(tmp, tmp, out=acc)
        torch.gather(y, 1, last, out=center)
        torch.sub(y, center, out=tmp)
        torch.mul(tmp, tmp, out=tmp)
        acc.add_(tmp)
        torch.gather(z, 1, last, out=center)
        torch.sub(z, center, out=tmp)
        torch.mul(tmp, tmp, out=tmp)
        acc.add_(tmp)
        torch.minimum(min_sq_dist, acc, out=min_sq_dist)
        # argmax returns the first maximal index: ties go to the lowest index.
        last = min_sq_dist.argmax(dim=1, keepdim=True)
    return out


@torch.no_grad()
def knn_idx(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, M, k)`` of the ``k`` nearest ``points`` of every query (exact, tie-broken).

    Queries are processed in chunks so that one ``(B, chunk, N)`` distance block holds at most
    ``_MAX_CHUNK_ELEMENTS`` elements (at least one query per chunk).
    """
    batch, num_queries, _ = query.shape
    num_points = points.shape[1]
    device = points.device
    dtype = compute_dtype(points.dtype)
    px, py, pz = (c[:, None, :] for c in _split_xyz(points, dtype))  # (B, 1, N)
    qx, qy, qz = (c[:, :, None] for c in _split_xyz(query, dtype))  # (B, M, 1)

    out = torch.empty((batch, num_queries, k), dtype=torch.long, device=device)
    if batch == 0 or num_queries == 0:
        return out

    chunk = max(1, min(num_queries, _MAX_CHUNK_ELEMENTS // (batch * num_points)))
    block_numel = batch * chunk * num_points
    acc_buf = torch.empty(block_numel, dtype=dtype, device=device)
    tmp_buf = torch.empty(block_numel, dtype=dtype, device=device)
    mask_buf = torch.empty(block_numel, dtype=torch.bool, device=device)

    for start in range(0, num_queries, chunk):
        stop = min(start + chunk, num_queries)
        shape = (batch, stop - start, num_points)
        numel = shape[0] * shape[1] * shape[2]
        acc = acc_buf[:numel].view(shape)
        tmp = tmp_buf[:numel].view(shape)
        mask = mask_buf[:numel].view(shape)

        # acc = dx*dx; acc += dy*dy; acc += dz*dz  (same formula and order as FPS)
        torch.sub(px, qx[:, start:stop], out=tmp)
        torch.mul(tmp, tmp, out=acc)
        torch.sub(py, qy[:, start:stop], out=tmp)
        torch.mul(tmp, tmp, out=tmp)
        acc.add_(tmp)
        torch.sub(pz, qz[:, start:stop], out=tmp)
        torch.mul(tmp, tmp, out=tmp)
        acc.add_(tmp)

        out[:, start:stop] = _select_k_smallest(acc, k, mask)
    return out


def _select_k_smallest(sq_dist: torch.Tensor, k: int, mask: torch.Tensor) -> torch.Tensor:
    """Indices of the ``k`` smallest entries of each row of ``sq_dist`` (..., N).

    The result is exactly the first ``k`` positions of a stable ascending sort of each row, i.e.
    ordered by (distance, index). ``mask`` is a bool scratch buffer shaped like ``sq_dist``.
    """
    vals, idx = sq_dist.topk(k, dim=-1, largest=False, sorted=False)
    # ``topk`` picks an arbitrary subset when the k-th value is tied with values outside the
    # selection. A row is ambiguous exactly when more than k entries are <= its k-th value; those
    # rows (only those) are redone with a stable sort, which keeps the lowest indices.
    kth = vals.amax(dim=-1, keepdim=True)
    torch.le(sq_dist, kth, out=mask)
    ambiguous = mask.sum(dim=-1) > k
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero(as_tuple=True)
        row_dist = sq_dist[rows]  # (R, N)
        row_vals, row_idx = row_dist.sort(dim=-1, stable=True)
        vals[rows] = row_vals[:, :k]
        idx[rows] = row_idx[:, :k]
    # Order the selected set by (distance, index): sort by index, then stable-sort by distance.
    idx, perm = idx.sort(dim=-1)
    vals = vals.gather(-1, perm)
    _, perm = vals.sort(dim=-1, stable=True)
    return idx.gather(-1, perm)


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable ``dx*dx + dy*dy + dz*dz`` between broadcastable ``(..., 3)`` tensors.

    Evaluated in the compute dtype of ``a`` and returned in ``a.dtype``.
    """
    dtype = compute_dtype(a.dtype)
    diff = b.to(dtype) - a.to(dtype)
    dx, dy, dz = diff.unbind(-1)
    return (dx * dx + dy * dy + dz * dz).to(a.dtype)


def gather_points(xyz: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Differentiable gather: ``xyz (B, N, 3)``, ``idx (B, ...)`` -> ``(B, ..., 3)``."""
    count = math.prod(idx.shape[1:])
    flat = idx.reshape(xyz.shape[0], count, 1).expand(-1, -1, 3)
    return xyz.gather(1, flat).view(*idx.shape, 3)


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sq_dist, idx)`` of the ``k`` nearest neighbours; see :func:`pointpeft.ops.knn`."""
    idx = knn_idx(query, points, k)
    neighbours = gather_points(points, idx)  # (B, M, k, 3)
    sq_dist = squared_distance(query[:, :, None, :], neighbours)
    return sq_dist, idx


def group(
    xyz: torch.Tensor, num_group: int, group_size: int, start_idx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neighborhood, centers)``; see :func:`pointpeft.ops.group`."""
    center_idx = farthest_point_sample(xyz, num_group, start_idx)
    centers = gather_points(xyz, center_idx)  # (B, G, 3)
    idx = knn_idx(centers, xyz, group_size)  # (B, G, K)
    neighborhood = gather_points(xyz, idx) - centers[:, :, None, :]
    return neighborhood, centers
