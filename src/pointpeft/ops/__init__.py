"""Point-cloud ops: farthest point sampling, k-nearest neighbours and Point-MAE grouping.

Every public function validates its inputs and then dispatches to a backend. Today the only backend
is the exact, chunked pure-PyTorch one (``pointpeft.ops._torch``); all backends must return the same
indices bit-for-bit (see that module's docstring for the numerical contract).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from pointpeft.ops import _torch

__all__ = ["GroupResult", "KNNResult", "farthest_point_sample", "group", "knn"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class KNNResult(NamedTuple):
    """Result of :func:`knn`.

    Attributes:
        sq_dist: Tensor of shape (B, M, k), in the query dtype: squared distance from every query
            to each of its k nearest points, ascending. Differentiable w.r.t. ``query`` and ``points``.
        idx: LongTensor of shape (B, M, k): indices into ``points`` of the k nearest points, ordered
            by (squared distance, index).
    """

    sq_dist: torch.Tensor
    idx: torch.Tensor


class GroupResult(NamedTuple):
    """Result of :func:`group`.

    Attributes:
        neighborhood: Tensor of shape (B, G, K, 3), in the input dtype: the K nearest input points
            of every center, relative to that center (``xyz[idx] - center``).
        centers: Tensor of shape (B, G, 3), in the input dtype: the farthest-point-sampled centers.
    """

    neighborhood: torch.Tensor
    centers: torch.Tensor


# --------------------------------------------------------------------------------------------------
# Validation helpers (shared by all public functions)
# --------------------------------------------------------------------------------------------------


def _check_cloud(t: object, name: str, *, allow_empty: bool = False) -> torch.Tensor:
    """Check that ``t`` is a floating-point tensor of shape (B, N, 3) with N >= 1 (unless allowed)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, N, 3), got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(t.shape)}")
    if t.shape[1] == 0 and not allow_empty:
        raise ValueError(
            f"{name} must contain at least one point per cloud (N >= 1), got shape {tuple(t.shape)}"
        )
    return t


def _check_finite(t: torch.Tensor, name: str) -> None:
    """Check that every coordinate of ``t`` is finite (no NaN or inf)."""
    if t.numel() > 0 and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must contain only finite coordinates, got NaN or inf values")


def _check_int(value: object, name: str, *, low: int, high: int, high_name: str) -> int:
    """Check that ``value`` is an integer (not a bool) in ``[low, high]``; return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high_name}] = [{low}, {high}], got {value}")
    return value


def _check_pair(query: torch.Tensor, points: torch.Tensor, query_name: str, points_name: str) -> None:
    """Check that two clouds share dtype, device and batch size."""
    if query.dtype != points.dtype:
        raise TypeError(
            f"{query_name} and {points_name} must have the same dtype, got {query.dtype} and {points.dtype}"
        )
    if query.device != points.device:
        raise ValueError(
            f"{query_name} and {points_name} must be on the same device, got {query.device} and {points.device}"
        )
    if query.shape[0] != points.shape[0]:
        raise ValueError(
            f"{query_name} and {points_name} must have the same batch size B, "
            f"got {query.shape[0]} and {points.shape[0]}"
        )


# --------------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------------


def farthest_point_sample(xyz: torch.Tensor, num_samples: int, *, start_idx: int = 0) -> torch.Tensor:
    """Iterative farthest point sampling (FPS).

    The first sample is ``start_idx``; every following sample is the point whose squared distance to
    the set already sampled (the running minimum over that set) is largest, ties going to the lowest
    index. Squared distances are ``dx*dx + dy*dy + dz*dz`` evaluated in float32 for
    float16/bfloat16/float32 inputs and in float64 for float64 inputs.

    Args:
        xyz: FloatTensor of shape (B, N, 3) (float16, bfloat16, float32 or float64) giving B clouds
            of N points each. Must be finite. Not differentiated through.
        num_samples: M, the number of points to sample per cloud, 1 <= M <= N.
        start_idx: index in [0, N) of the first sample (the same for every cloud).

    Returns:
        LongTensor of shape (B, M) on the device of ``xyz``: indices into dimension 1 of ``xyz``.
        The indices of one cloud are distinct whenever it has at least M distinct points.

    Raises:
        TypeError: if ``xyz`` is not a floating-point tensor or a count is not an int.
        ValueError: if a shape, count or index is out of range or ``xyz`` is not finite.
    """
    xyz = _check_cloud(xyz, "xyz")
    n = xyz.shape[1]
    num_samples = _check_int(num_samples, "num_samples", low=1, high=n, high_name="N")
    start_idx = _check_int(start_idx, "start_idx", low=0, high=n - 1, high_name="N - 1")
    _check_finite(xyz, "xyz")
    return _torch.farthest_point_sample(xyz, num_samples, start_idx)


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> KNNResult:
    """Exact k-nearest neighbours of every query point among ``points`` (same batch element).

    Neighbours are ordered by ascending squared distance, ties going to the lowest point index, so
    the result is deterministic. Distances are ``dx*dx + dy*dy + dz*dz`` evaluated in float32 for
    float16/bfloat16/float32 inputs (float64 for float64). A query that coincides with a point has
    distance exactly 0 to it. Queries are processed in chunks, so memory does not grow as B*M*N.

    Args:
        query: FloatTensor of shape (B, M, 3) holding M query points per cloud (M may be 0).
        points: FloatTensor of shape (B, N, 3), same dtype and device as ``query``, N >= 1.
        k: number of neighbours per query, 1 <= k <= N.

    Returns:
        KNNResult with
          - **sq_dist**: Tensor of shape (B, M, k), dtype of the inputs: squared distances, ascending
            along the last dimension; differentiable w.r.t. ``query`` and ``points`` (the selection
            itself is piecewise constant and not differentiated).
          - **idx**: LongTensor of shape (B, M, k): indices into dimension 1 of ``points``.

    Raises:
        TypeError: if an input is not a floating-point tensor, dtypes differ, or ``k`` is not an int.
        ValueError: on bad shapes, batch or device mismatch, ``k`` out of range, non-finite inputs.
    """
    query = _check_cloud(query, "query", allow_empty=True)
    points = _check_cloud(points, "points")
    _check_pair(query, points, "query", "points")
    k = _check_int(k, "k", low=1, high=points.shape[1], high_name="N")
    _check_finite(query, "query")
    _check_finite(points, "points")
    sq_dist, idx = _torch.knn(query, points, k)
    return KNNResult(sq_dist, idx)


def group(xyz: torch.Tensor, num_group: int, group_size: int, *, start_idx: int = 0) -> GroupResult:
    """Point-MAE grouping: FPS centers, then the k nearest input points of every center.

    ``centers = xyz[farthest_point_sample(xyz, num_group, start_idx=start_idx)]`` and, with
    ``idx = knn(centers, xyz, group_size).idx`` (each center is its own nearest neighbour, distance
    0), ``neighborhood = xyz[idx] - centers[:, :, None]``.

    Args:
        xyz: FloatTensor of shape (B, N, 3) (float16, bfloat16, float32 or float64), finite.
        num_group: G, the number of centers per cloud, 1 <= G <= N.
        group_size: K, the number of points per group, 1 <= K <= N.
        start_idx: index in [0, N) of the first FPS center.

    Returns:
        GroupResult with
          - **neighborhood**: Tensor of shape (B, G, K, 3), dtype of ``xyz``: neighbours relative to
            their center, ordered by (squared distance, index).
          - **centers**: Tensor of shape (B, G, 3), dtype of ``xyz``: the center coordinates.

        Both are differentiable w.r.t. ``xyz`` through the gathers (the selection is not).

    Raises:
        TypeError: if ``xyz`` is not a floating-point tensor or a count is not an int.
        ValueError: if a shape, count or index is out of range or ``xyz`` is not finite.
    """
    xyz = _check_cloud(xyz, "xyz")
    n = xyz.shape[1]
    num_group = _check_int(num_group, "num_group", low=1, high=n, high_name="N")
    group_size = _check_int(group_size, "group_size", low=1, high=n, high_name="N")
    start_idx = _check_int(start_idx, "start_idx", low=0, high=n - 1, high_name="N - 1")
    _check_finite(xyz, "xyz")
    neighborhood, centers = _torch.group(xyz, num_group, group_size, start_idx)
    return GroupResult(neighborhood, centers)
