"""Exact, chunked pure-PyTorch backend for the point-cloud ops (internal: use :mod:`pointpeft.ops`).

Every function here assumes its inputs were already validated by :mod:`pointpeft.ops`; the
``lengths`` arguments are None (every cloud full) or int64 tensors of shape (B,) on the device of
the clouds, with values in [0, N].

Numerical contract shared with any other backend (e.g. the Triton kernels), so that indices match
bit-for-bit:

* coordinates are upcast to float32 for float16/bfloat16/float32 inputs (float64 stays float64);
* a squared distance is ``dx*dx + dy*dy + dz*dz`` evaluated left to right with separate, correctly
  rounded multiplies and adds (no fused multiply-add), where ``dx`` is a plain difference of the two
  coordinates (its sign is irrelevant: negation is exact);
* ties are broken to the lowest point index.

Ragged batches (PyTorch3D semantics): points at index >= ``lengths[b]`` are padding. Their
coordinates may be anything (NaN included), so they are overwritten before any arithmetic: FPS
never picks them (running distance -inf) and kNN never returns them (coordinates +inf, so every
distance to them is +inf and sorts after every valid point). Output slots without a valid point
hold index -1 (and squared distance 0 in kNN).
"""

from __future__ import annotations

import math

import torch

# Upper bound on the number of elements of one temporary (B, chunk, N) distance block in ``knn``.
# Two float blocks and one bool block of this size are live at a time (about 9 MB for float32).
MAX_CHUNK_ELEMENTS: int = 2**20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which distances are evaluated for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """BoolTensor (B, size): True at index ``i`` of row ``b`` iff ``i < lengths[b]``."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def _split_xyz(
    xyz: torch.Tensor, dtype: torch.dtype, lengths: torch.Tensor | None = None, fill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``(B, N, 3)`` into three contiguous ``(B, N)`` coordinate arrays of ``dtype``.

    With ``lengths``, the coordinates of padding points are replaced by ``fill``.
    """
    xyz = xyz.detach().to(dtype)
    if lengths is not None:
        xyz = xyz.masked_fill(~valid_mask(lengths, xyz.shape[1])[..., None], fill)
    return xyz[..., 0].contiguous(), xyz[..., 1].contiguous(), xyz[..., 2].contiguous()


@torch.no_grad()
def farthest_point_sample(
    xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None
) -> torch.Tensor:
    """Iterative farthest point sampling; see :func:`pointpeft.ops.farthest_point_sample`.

    The coordinates are stored as one ``(3, B, N)`` array so that each step runs a short, fixed
    sequence of kernels on preallocated buffers: one ``index_select`` of the three center
    coordinates (by flat index ``b * N + i``), one broadcast subtraction and one in-place square for
    all of dx, dy, dz, two in-place adds, a running minimum, and a first-index argmax. Memory is
    O(B * N).

    On CPU, ``Tensor.argmax`` is a scalar loop and was the slowest kernel of a step, so the first
    maximum is found with vectorised integer kernels instead. The running distances are >= +0
    (never -0.0 or NaN) or -inf (padding), and such floats are ordered like their bit patterns read
    as signed integers. With ``bits`` that view and ``top`` its row maximum, ``bits - top`` is 0 at
    the maxima and negative elsewhere (it cannot overflow), so ``(bits - top) | (N - 1 - i)`` is
    ``N - 1 - i`` at a maximum and negative elsewhere: its row maximum is ``N - 1 - first``. On
    other devices ``Tensor.argmax`` (documented to return the first maximal index) is used.
    """
    batch, num_points, _ = xyz.shape
    device = xyz.device
    dtype = compute_dtype(xyz.dtype)
    if batch == 0:
        return torch.empty((0, num_samples), dtype=torch.long, device=device)

    coords = torch.empty((3, batch, num_points), dtype=dtype, device=device)
    coords.copy_(xyz.detach().permute(2, 0, 1))
    min_sq_dist = torch.full((batch, num_points), math.inf, dtype=dtype, device=device)
    if lengths is not None:
        padding = ~valid_mask(lengths, num_points)
        coords.masked_fill_(padding, 0.0)  # padding may hold NaN/inf: keep its distances finite
        min_sq_dist.masked_fill_(padding, -math.inf)  # ... and below every valid point's distance
    flat_coords = coords.view(3, batch * num_points)
    diff = torch.empty_like(coords)
    sq_dist, diff_y, diff_z = diff.unbind(0)  # (B, N) views; sq_dist accumulates in place
    center = torch.empty((3, batch), dtype=dtype, device=device)
    center_b = center[:, :, None]  # (3, B, 1)

    on_cpu = device.type == "cpu"
    if on_cpu:  # integer views for the argmax described above
        bits = min_sq_dist.view(torch.int32 if dtype == torch.float32 else torch.int64)
        key = diff_y.view(bits.dtype)  # diff_y is free once added into sq_dist
        index_dtype = bits.dtype if batch * num_points < 2**31 else torch.int64
        reverse = torch.arange(num_points - 1, -1, -1, dtype=bits.dtype, device=device)
    else:
        index_dtype = torch.long
    base = torch.arange(batch, dtype=index_dtype, device=device) * num_points
    last_of_row = base + (num_points - 1)
    # The loop issues about ten small kernels per step: bind them once to keep Python overhead low.
    index_select, sub, minimum = torch.index_select, torch.sub, torch.minimum
    square_, add_ = diff.mul_, sq_dist.add_
    if on_cpu:
        bits_max, key_or_, key_max = bits.amax, key.bitwise_or_, key.amax
    else:
        dist_argmax = min_sq_dist.argmax

    last = base + start_idx  # flat indices b * N + i
    picked = [last]
    for _ in range(num_samples - 1):
        index_select(flat_coords, 1, last, out=center)
        sub(coords, center_b, out=diff)  # dx, dy, dz
        square_(diff)  # dx*dx, dy*dy, dz*dz: separate multiplies ...
        add_(diff_y)  # ... then separate adds, left to right
        add_(diff_z)
        minimum(min_sq_dist, sq_dist, out=min_sq_dist)
        # First maximal index of every row: ties go to the lowest index.
        if on_cpu:
            sub(bits, bits_max(1, True), out=key)
            key_or_(reverse)
            last = sub(last_of_row, key_max(1))
        else:
            last = dist_argmax(1).add_(base)
        picked.append(last)
    out = (torch.stack(picked, dim=1) - base[:, None]).long()
    if lengths is not None:
        out.masked_fill_(~valid_mask(lengths, num_samples), -1)
    return out


@torch.no_grad()
def knn_idx(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor | None = None,
    point_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices ``(B, M, k)`` of the ``k`` nearest ``points`` of every query (exact, tie-broken).

    Queries are processed in chunks so that one ``(B, chunk, N)`` distance block holds at most
    ``MAX_CHUNK_ELEMENTS`` elements (at least one query per chunk). Slots without a valid point
    (``j >= point_lengths[b]``) and padding query rows hold -1.
    """
    batch, num_queries, _ = query.shape
    num_points = points.shape[1]
    device = points.device
    dtype = compute_dtype(points.dtype)
    ragged = query_lengths is not None or point_lengths is not None
    # Padding points sit at +inf: every distance to them is +inf (never NaN, as valid queries are
    # finite), so they sort after every valid point, whose indices are all lower.
    p_xyz = _split_xyz(points, dtype, point_lengths, math.inf)
    q_xyz = _split_xyz(query, dtype, query_lengths, 0.0)
    px, py, pz = (c[:, None, :] for c in p_xyz)  # (B, 1, N)
    qx, qy, qz = (c[:, :, None] for c in q_xyz)  # (B, M, 1)

    shape = (batch, num_queries, k)
    if ragged:
        out = torch.full(shape, -1, dtype=torch.long, device=device)
    else:
        out = torch.empty(shape, dtype=torch.long, device=device)
    if batch == 0 or num_queries == 0:
        return out
    # Rows past the longest query cloud are all padding: skip them.
    num_active = num_queries if query_lengths is None else int(query_lengths.max())
    if num_active == 0:
        return out

    chunk = max(1, min(num_active, MAX_CHUNK_ELEMENTS // (batch * num_points)))
    block_numel = batch * chunk * num_points
    acc_buf = torch.empty(block_numel, dtype=dtype, device=device)
    tmp_buf = torch.empty(block_numel, dtype=dtype, device=device)
    mask_buf = torch.empty(block_numel, dtype=torch.bool, device=device)
    limit = None if point_lengths is None else point_lengths[:, None, None]

    for start in range(0, num_active, chunk):
        stop = min(start + chunk, num_active)
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

        idx = _select_k_smallest(acc, k, mask)
        if limit is not None:  # only when k > lengths[b]: slots past the valid points
            idx.masked_fill_(idx >= limit, -1)
        out[:, start:stop] = idx
    if query_lengths is not None:
        out.masked_fill_(~valid_mask(query_lengths, num_queries)[..., None], -1)
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


def knn(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor | None,
    point_lengths: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sq_dist, idx)`` of the ``k`` nearest neighbours; see :func:`pointpeft.ops.knn`."""
    idx = knn_idx(query, points, k, query_lengths, point_lengths)
    return neighbour_sq_dist(query, points, idx, query_lengths, point_lengths), idx


def neighbour_sq_dist(
    query: torch.Tensor,
    points: torch.Tensor,
    idx: torch.Tensor,
    query_lengths: torch.Tensor | None,
    point_lengths: torch.Tensor | None,
) -> torch.Tensor:
    """Differentiable squared distances ``(B, M, k)`` from every query to its neighbours ``idx``.

    Shared by the backends, so that every backend returns the same values with a gradient. With
    lengths, empty slots (idx -1) get exactly 0 and a zero gradient.
    """
    if query_lengths is None and point_lengths is None:
        neighbours = gather_points(points, idx)  # (B, M, k, 3)
        return squared_distance(query[:, :, None, :], neighbours)
    # Ragged: padding coordinates (possibly NaN) are replaced before any arithmetic, so no NaN reaches
    # values or gradients.
    if query_lengths is not None:
        query = query.masked_fill(~valid_mask(query_lengths, query.shape[1])[..., None], 0.0)
    query = query[:, :, None, :]  # (B, M, 1, 3)
    neighbours = gather_points(points, idx.clamp(min=0))
    neighbours = torch.where((idx >= 0)[..., None], neighbours, query)  # empty slot: dx = dy = dz = 0
    return squared_distance(query, neighbours)


def group(
    xyz: torch.Tensor, num_group: int, group_size: int, start_idx: int, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neighborhood, centers)``; see :func:`pointpeft.ops.group`.

    Requires ``num_group`` and ``group_size`` <= every length, so no output slot is padding.
    """
    center_idx = farthest_point_sample(xyz, num_group, start_idx, lengths)
    centers = gather_points(xyz, center_idx)  # (B, G, 3)
    idx = knn_idx(centers, xyz, group_size, None, lengths)  # (B, G, K)
    neighborhood = gather_points(xyz, idx) - centers[:, :, None, :]
    return neighborhood, centers
