"""Point-cloud ops: farthest point sampling, k-nearest neighbours and Point-MAE grouping.

Every public function validates its inputs and then dispatches to a backend:

* ``"torch"``: the exact, chunked pure-PyTorch implementation (``pointpeft.ops._torch``), for every
  device and floating dtype;
* ``"triton"``: GPU kernels (``pointpeft.ops._triton``), for CUDA tensors of float16, bfloat16 or
  float32 with ``triton`` installed (or CPU tensors under ``TRITON_INTERPRET=1``, for tests);
* ``"auto"`` (the default): ``"triton"`` for CUDA tensors it supports, ``"torch"`` otherwise.

The ``backend`` argument of every op picks one; when it is None the environment variable
``POINTPEFT_OPS_BACKEND`` is used if set (and not empty), else ``"auto"``. All backends return the
same indices bit-for-bit (see ``pointpeft.ops._torch`` for the numerical contract).

Ragged batches follow PyTorch3D: a ``lengths`` tensor of shape (B,) says how many leading points of
each cloud are valid; the others are padding, are never returned, and may hold any value.
"""

from __future__ import annotations

import math
import numbers
import os
from types import ModuleType
from typing import Literal, NamedTuple

import torch

from pointpeft.ops import _torch

__all__ = ["GroupResult", "KNNResult", "available_backends", "farthest_point_sample", "group", "knn"]

Backend = Literal["auto", "torch", "triton"]

#: Environment variable read when an op is called with ``backend=None``.
BACKEND_ENV_VAR = "POINTPEFT_OPS_BACKEND"

_BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LENGTH_DTYPES = (torch.int64, torch.int32)


class KNNResult(NamedTuple):
    """Result of :func:`knn`.

    Attributes:
        sq_dist: Tensor of shape (B, M, k), in the query dtype: squared distance from every query
            to each of its k nearest points, ascending. Differentiable w.r.t. ``query`` and ``points``.
            0 in slots whose ``idx`` is -1.
        idx: LongTensor of shape (B, M, k): indices into ``points`` of the k nearest points, ordered
            by (squared distance, index); -1 in slots without a valid point (ragged batches only).
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


def _check_finite(t: torch.Tensor, name: str, lengths: torch.Tensor | None = None) -> None:
    """Check that every coordinate of ``t`` is finite (no NaN or inf); with ``lengths``, only the
    coordinates of valid points (index < ``lengths[b]``) are checked."""
    if t.numel() == 0:
        return
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        # Reading a value back is not allowed while a CUDA graph records; pointpeft.CUDAGraphStep checks
        # its inputs before every replay instead.
        return
    where = ""
    if lengths is not None:
        t = t.detach().masked_fill(~_torch.valid_mask(lengths, t.shape[1])[..., None], 0.0)
        where = " at its valid points (index < lengths[b])"
    # One vectorised pass: aminmax propagates NaN, so both ends are finite iff every value is
    # (about 15x faster than ``isfinite(t).all()`` on CPU).
    low, high = torch.aminmax(t.detach())
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise ValueError(f"{name} must contain only finite coordinates{where}, got NaN or inf values")


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


def _check_lengths(
    lengths: object, name: str, cloud: torch.Tensor, cloud_name: str, size_name: str = "N"
) -> tuple[torch.Tensor | None, int]:
    """Check a PyTorch3D-style ``lengths`` tensor for ``cloud`` (B, N, 3).

    ``lengths`` must be None or an int64/int32 tensor of shape (B,) on the device of ``cloud`` with
    values in [0, N]. Returns ``(lengths, min_length)``: ``lengths`` as int64, or None when it is
    None or every cloud is full (so backends only ever see real padding); ``min_length`` is N when
    there is no padding (or B == 0).
    """
    batch, size = cloud.shape[0], cloud.shape[1]
    if lengths is None:
        return None, size
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(
            f"{name} must be None or an int64 torch.Tensor of shape (B,), got {type(lengths).__name__}"
        )
    if lengths.dtype not in _LENGTH_DTYPES:
        raise TypeError(f"{name} must have dtype int64 or int32, got {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(
            f"{name} must have shape (B,) = ({batch},) to match {cloud_name}, got {tuple(lengths.shape)}"
        )
    if lengths.device != cloud.device:
        raise ValueError(
            f"{name} and {cloud_name} must be on the same device, got {lengths.device} and {cloud.device}"
        )
    if batch == 0:
        return None, size
    low, high = (int(v) for v in torch.aminmax(lengths))
    if low < 0 or high > size:
        raise ValueError(
            f"{name} must have values in [0, {size_name}] = [0, {size}], got values in [{low}, {high}]"
        )
    if low == size:
        return None, size
    return lengths.to(torch.int64).contiguous(), low


def _check_start_idx(start_idx: int, lengths: torch.Tensor | None) -> None:
    """Check that ``start_idx < lengths[b]`` for every cloud ``b`` with ``lengths[b] > 0``."""
    if lengths is None:
        return
    bad = ((lengths > 0) & (lengths <= start_idx)).nonzero()
    if bad.numel() > 0:
        b = int(bad[0, 0])
        raise ValueError(
            f"start_idx must be < lengths[b] for every cloud b with lengths[b] > 0, "
            f"got start_idx = {start_idx} and lengths[{b}] = {int(lengths[b])}"
        )


# --------------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------------


def _import_triton() -> tuple[ModuleType | None, str | None]:
    """Import ``pointpeft.ops._triton`` on first use; return ``(module, None)`` or ``(None, why)``."""
    try:
        from pointpeft.ops import _triton
    except ImportError as exc:  # e.g. a broken triton install imported by the kernels
        return None, f"pointpeft.ops._triton could not be imported ({exc})"
    return _triton, None


def _select_backend(backend: object, tensor: torch.Tensor) -> ModuleType:
    """The backend module that runs an op on ``tensor``, following ``backend`` (see the module doc).

    Raises:
        ValueError: if ``backend`` (or ``POINTPEFT_OPS_BACKEND``) is not a known backend.
        RuntimeError: if ``"triton"`` is requested but cannot run on ``tensor``.
    """
    origin = ""
    if backend is None:
        env = os.environ.get(BACKEND_ENV_VAR, "")
        if env == "":
            backend = "auto"
        elif env in _BACKENDS:
            backend, origin = env, f" (through the environment variable {BACKEND_ENV_VAR})"
        else:
            raise ValueError(
                f"environment variable {BACKEND_ENV_VAR} must be one of 'auto', 'torch', 'triton' "
                f"(or unset/empty), got {env!r}"
            )
    elif not isinstance(backend, str) or backend not in _BACKENDS:
        raise ValueError(f"backend must be None, 'auto', 'torch' or 'triton', got {backend!r}")

    if backend == "torch":
        return _torch
    if backend == "auto" and tensor.device.type != "cuda":
        return _torch  # never the Triton interpreter on CPU tensors unless asked for
    module, reason = _import_triton()
    if module is not None:
        reason = module.unavailable_reason(tensor)
    if reason is None:
        return module
    if backend == "triton":
        raise RuntimeError(
            f"backend='triton' was requested{origin}, but the Triton kernels cannot run here: {reason}. "
            "Use backend='torch' or backend='auto' to run the pure-PyTorch implementation."
        )
    return _torch


def available_backends(device: str | torch.device = "cpu") -> tuple[str, ...]:
    """Names of the backends that can run the ops on tensors of ``device``.

    Args:
        device: a device or device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).

    Returns:
        ``("torch",)`` or ``("torch", "triton")``: ``"torch"`` always; ``"triton"`` when the Triton
        kernels can run on a float32 tensor of ``device`` (triton installed and a CUDA device, or
        ``TRITON_INTERPRET=1`` for CPU). float16 and bfloat16 are supported wherever float32 is;
        float64 always runs on ``"torch"``.

    Raises:
        ValueError: if ``device`` is not a valid, available device.
    """
    try:
        probe = torch.empty(0, dtype=torch.float32, device=device)
    except (RuntimeError, AssertionError, TypeError) as exc:
        raise ValueError(f"device must be a valid, available torch device, got {device!r} ({exc})") from exc
    module, reason = _import_triton()
    if module is not None and module.unavailable_reason(probe) is None:
        return ("torch", "triton")
    return ("torch",)


# --------------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------------


def farthest_point_sample(
    xyz: torch.Tensor,
    num_samples: int,
    *,
    start_idx: int = 0,
    lengths: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Iterative farthest point sampling (FPS).

    The first sample is ``start_idx``; every following sample is the point whose squared distance to
    the set already sampled (the running minimum over that set) is largest, ties going to the lowest
    index. Squared distances are ``dx*dx + dy*dy + dz*dz`` evaluated in float32 for
    float16/bfloat16/float32 inputs and in float64 for float64 inputs.

    Args:
        xyz: FloatTensor of shape (B, N, 3) (float16, bfloat16, float32 or float64) giving B clouds
            of N points each. Must be finite at valid points. Not differentiated through.
        num_samples: M, the number of points to sample per cloud, 1 <= M <= N.
        start_idx: index in [0, N) of the first sample (the same for every cloud); with ``lengths``
            it must also be < ``lengths[b]`` for every cloud with ``lengths[b] > 0``.
        lengths: optional LongTensor (int64 or int32) of shape (B,), values in [0, N], on the device
            of ``xyz``: cloud b samples among its first ``lengths[b]`` points only; the others are
            padding and may hold anything (NaN included). None means every cloud has N points.
        backend: None, ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`pointpeft.ops`).

    Returns:
        LongTensor of shape (B, M) on the device of ``xyz``: indices into dimension 1 of ``xyz``.
        The indices of one cloud are distinct whenever it has at least M distinct valid points.
        Cloud b gets ``min(M, lengths[b])`` samples; the positions after them hold -1.

    Raises:
        TypeError: if ``xyz`` or ``lengths`` has a wrong type or dtype, or a count is not an int.
        ValueError: if a shape, count, index or length is out of range, ``xyz`` is not finite at a
            valid point, or ``backend`` is unknown.
        RuntimeError: if ``backend="triton"`` is requested but cannot run on ``xyz``.
    """
    xyz = _check_cloud(xyz, "xyz")
    n = xyz.shape[1]
    num_samples = _check_int(num_samples, "num_samples", low=1, high=n, high_name="N")
    start_idx = _check_int(start_idx, "start_idx", low=0, high=n - 1, high_name="N - 1")
    lengths, _ = _check_lengths(lengths, "lengths", xyz, "xyz")
    _check_start_idx(start_idx, lengths)
    _check_finite(xyz, "xyz", lengths)
    impl = _select_backend(backend, xyz)
    return impl.farthest_point_sample(xyz, num_samples, start_idx, lengths)


def knn(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    *,
    query_lengths: torch.Tensor | None = None,
    point_lengths: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> KNNResult:
    """Exact k-nearest neighbours of every query point among ``points`` (same batch element).

    Neighbours are ordered by ascending squared distance, ties going to the lowest point index, so
    the result is deterministic. Distances are ``dx*dx + dy*dy + dz*dz`` evaluated in float32 for
    float16/bfloat16/float32 inputs (float64 for float64). A query that coincides with a point has
    distance exactly 0 to it. Queries are processed in chunks, so memory does not grow as B*M*N.

    Args:
        query: FloatTensor of shape (B, M, 3) holding M query points per cloud (M may be 0).
        points: FloatTensor of shape (B, N, 3), same dtype and device as ``query``, N >= 1.
        k: number of neighbours per query, 1 <= k <= N.
        query_lengths: optional LongTensor (int64 or int32) of shape (B,), values in [0, M]: only the
            first ``query_lengths[b]`` queries of cloud b are valid. None means all M are.
        point_lengths: optional LongTensor (int64 or int32) of shape (B,), values in [0, N]: only the
            first ``point_lengths[b]`` points of cloud b can be neighbours. None means all N can.
            Padding queries and points may hold anything (NaN included).
        backend: None, ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`pointpeft.ops`).

    Returns:
        KNNResult with
          - **sq_dist**: Tensor of shape (B, M, k), dtype of the inputs: squared distances, ascending
            along the last dimension; differentiable w.r.t. ``query`` and ``points`` (the selection
            itself is piecewise constant and not differentiated).
          - **idx**: LongTensor of shape (B, M, k): indices into dimension 1 of ``points``.

        Slots without a neighbour hold idx -1 and sq_dist 0 (with zero gradient): the slots
        ``j >= point_lengths[b]`` of every query of cloud b, and every slot of the padding queries
        ``m >= query_lengths[b]``.

    Raises:
        TypeError: if an input is not a floating-point tensor, dtypes differ, a lengths tensor has a
            wrong type or dtype, or ``k`` is not an int.
        ValueError: on bad shapes, batch or device mismatch, ``k`` or lengths out of range,
            non-finite valid inputs, or an unknown ``backend``.
        RuntimeError: if ``backend="triton"`` is requested but cannot run on the inputs.
    """
    query = _check_cloud(query, "query", allow_empty=True)
    points = _check_cloud(points, "points")
    _check_pair(query, points, "query", "points")
    k = _check_int(k, "k", low=1, high=points.shape[1], high_name="N")
    query_lengths, _ = _check_lengths(query_lengths, "query_lengths", query, "query", "M")
    point_lengths, _ = _check_lengths(point_lengths, "point_lengths", points, "points")
    _check_finite(query, "query", query_lengths)
    _check_finite(points, "points", point_lengths)
    impl = _select_backend(backend, points)
    sq_dist, idx = impl.knn(query, points, k, query_lengths, point_lengths)
    return KNNResult(sq_dist, idx)


def group(
    xyz: torch.Tensor,
    num_group: int,
    group_size: int,
    *,
    start_idx: int = 0,
    lengths: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> GroupResult:
    """Point-MAE grouping: FPS centers, then the k nearest input points of every center.

    ``centers = xyz[farthest_point_sample(xyz, num_group, start_idx=start_idx, lengths=lengths)]``
    and, with ``idx = knn(centers, xyz, group_size, point_lengths=lengths).idx`` (each center is its
    own nearest neighbour, distance 0), ``neighborhood = xyz[idx] - centers[:, :, None]``.

    Args:
        xyz: FloatTensor of shape (B, N, 3) (float16, bfloat16, float32 or float64), finite at
            valid points.
        num_group: G, the number of centers per cloud, 1 <= G <= N (and <= min(lengths)).
        group_size: K, the number of points per group, 1 <= K <= N (and <= min(lengths)).
        start_idx: index of the first FPS center, in [0, N) (and < min(lengths)).
        lengths: optional LongTensor (int64 or int32) of shape (B,), values in [0, N], on the device
            of ``xyz``: only the first ``lengths[b]`` points of cloud b are grouped; the others are
            padding and may hold anything. Every cloud must have at least G and K valid points, so
            the outputs hold no padding. None means every cloud has N points.
        backend: None, ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`pointpeft.ops`).

    Returns:
        GroupResult with
          - **neighborhood**: Tensor of shape (B, G, K, 3), dtype of ``xyz``: neighbours relative to
            their center, ordered by (squared distance, index).
          - **centers**: Tensor of shape (B, G, 3), dtype of ``xyz``: the center coordinates.

        Both are differentiable w.r.t. ``xyz`` through the gathers (the selection is not).

    Raises:
        TypeError: if ``xyz`` or ``lengths`` has a wrong type or dtype, or a count is not an int.
        ValueError: if a shape, count, index or length is out of range, ``xyz`` is not finite at a
            valid point, or ``backend`` is unknown.
        RuntimeError: if ``backend="triton"`` is requested but cannot run on ``xyz``.
    """
    xyz = _check_cloud(xyz, "xyz")
    n = xyz.shape[1]
    num_group = _check_int(num_group, "num_group", low=1, high=n, high_name="N")
    group_size = _check_int(group_size, "group_size", low=1, high=n, high_name="N")
    start_idx = _check_int(start_idx, "start_idx", low=0, high=n - 1, high_name="N - 1")
    lengths, min_length = _check_lengths(lengths, "lengths", xyz, "xyz")
    for value, name in ((num_group, "num_group"), (group_size, "group_size")):
        if value > min_length:
            raise ValueError(
                f"{name} must be <= min(lengths) = {min_length} (every cloud needs {name} valid points), "
                f"got {value}"
            )
    _check_start_idx(start_idx, lengths)
    _check_finite(xyz, "xyz", lengths)
    impl = _select_backend(backend, xyz)
    neighborhood, centers = impl.group(xyz, num_group, group_size, start_idx, lengths)
    return GroupResult(neighborhood, centers)
