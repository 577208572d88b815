"""Point-cloud ops: farthest point sampling, k-nearest neighbours, Point-MAE grouping, and feature
propagation (``three_nn`` is :func:`knn` with ``k=3``; :func:`inverse_distance_weights` and
:func:`three_interpolate` carry features to every point, in pure torch).

Every public function validates its inputs and then dispatches to a backend:

* ``"torch"``: the exact, chunked pure-PyTorch implementation (``pointpeft.ops.torch_backend``), for
  every device and floating dtype;
* ``"triton"``: GPU kernels (``pointpeft.ops.triton_backend``), for CUDA tensors of float16, bfloat16 or
  float32 with ``triton`` installed (or CPU tensors under ``TRITON_INTERPRET=1``, for tests);
* ``"auto"`` (the default): ``"triton"`` for CUDA tensors it supports, ``"torch"`` otherwise.

The ``backend`` argument of every op picks one; when it is None the environment variable
``POINTPEFT_OPS_BACKEND`` is used if set (and not empty), else ``"auto"``. All backends return the
same indices bit-for-bit (see ``pointpeft.ops.torch_backend`` for the numerical contract). The modules
under ``pointpeft.ops`` other than this one are internal.

Ragged batches follow PyTorch3D: a ``lengths`` tensor of shape (B,) says how many leading points of
each cloud are valid; the others are padding, are never returned, and may hold any value.

Coordinates must lie in a safe range (:func:`safe_coordinate_range`) in which no squared distance can
overflow or underflow: every valid coordinate at most 1e18 in magnitude (1e153 for float64), and, unless
all of an op's coordinates are 0, the largest at least 1e-18 (1e-153). Outside it the ops raise a
``ValueError`` that names the argument, the bound and the magnitude found. Where a returned value does not
fit its dtype (float16 squared distances above 65504, float16 neighbour offsets beyond it) they raise too.

The ops work under ``torch.compile(fullgraph=True)`` and ``torch.export.export`` without graph breaks: the
index computations run as the custom operators ``pointpeft::farthest_point_sample``, ``pointpeft::knn``
and ``pointpeft::group`` (see ``pointpeft.ops.traceable``), which return the eager results bit for bit.
Under torch.compile/export the value checks are skipped (they would read values back from the device):
finite coordinates in the safe range, the values of lengths tensors and ``start_idx`` or the counts
against them, and the float16 overflow checks. Type, dtype, device and shape checks still run. Run an op
eagerly once to check its inputs.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from pointpeft.ops import dispatch, torch_backend, traceable
from pointpeft.ops.dispatch import BACKEND_ENV_VAR as BACKEND_ENV_VAR
from pointpeft.ops.dispatch import Backend as Backend
from pointpeft.ops.interpolate import inverse_distance_weights, three_interpolate

# ``safe_coordinate_range``, ``check_cloud`` and ``check_coordinates`` are public too (docs/ops.md);
# ``__all__`` keeps the names a star import brings.
__all__ = [
    "GroupResult",
    "KNNResult",
    "available_backends",
    "farthest_point_sample",
    "group",
    "inverse_distance_weights",
    "knn",
    "three_interpolate",
]

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
# Safe coordinate range
# --------------------------------------------------------------------------------------------------


def safe_coordinate_range(dtype: torch.dtype) -> tuple[float, float]:
    """``(min_scale, max_abs)``: the coordinate magnitudes the ops accept for inputs of ``dtype``.

    Squared distances are evaluated in float32 for float16/bfloat16/float32 inputs and in float64 for
    float64 inputs. ``max_abs`` is the largest power of ten ``c`` with ``3 * (2c)**2`` at most the largest
    finite value of that compute dtype, so no difference ``dx``, square or sum between two points whose
    coordinates are within ``[-c, c]`` can overflow (the margin, a factor 28 for float32 and 15 for
    float64, is far above the few roundings). ``min_scale = 1 / max_abs``: when the largest coordinate of
    an op's inputs is below it (and not 0), the squared distances between neighbouring points fall among
    the subnormal numbers of the compute dtype (below 1.2e-38 for float32), which lose precision and
    underflow to 0, so distinct points tie. (The ops check this over the whole batch, not per cloud.)

    Args:
        dtype: the dtype of the coordinates: float16, bfloat16, float32 or float64.

    Returns:
        ``(1e-18, 1e18)`` for float16, bfloat16 and float32; ``(1e-153, 1e153)`` for float64.

    Raises:
        TypeError: if ``dtype`` is not one of those four dtypes.
    """
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype!r}")
    largest = torch.finfo(torch_backend.compute_dtype(dtype)).max
    max_abs = 10.0 ** math.floor(math.log10(math.sqrt(largest / 12)))
    return 1 / max_abs, max_abs


def _largest_magnitude(extent: tuple[float, float]) -> float:
    """Largest ``|c|`` of the coordinates whose minimum and maximum are ``extent``."""
    return max(-extent[0], extent[1])


def _check_in_range(extent: tuple[float, float], name: str, dtype: torch.dtype, where: str) -> None:
    """Check that the finite coordinates of argument ``name`` with ``(min, max) = extent`` are within
    ``max_abs`` of :func:`safe_coordinate_range`."""
    largest = _largest_magnitude(extent)
    max_abs = safe_coordinate_range(dtype)[1]
    if largest <= max_abs:
        return
    compute = torch_backend.compute_dtype(dtype)
    wider = safe_coordinate_range(torch.float64)[1]
    advice = "" if compute == torch.float64 else f" or pass float64 coordinates (bound {wider:.0e})"
    raise ValueError(
        f"{name} must have coordinates of magnitude at most {max_abs:.0e}{where} for {dtype} inputs "
        f"(see pointpeft.ops.safe_coordinate_range): beyond it squared distances overflow {compute}; got a "
        f"coordinate of magnitude {largest:.3g}. Rescale the clouds (e.g. center them and divide by their "
        f"radius){advice}."
    )


def _check_scale(extents: list[tuple[float, float] | None], names: str, dtype: torch.dtype) -> None:
    """Check that the largest coordinate magnitude of an op's inputs (``extents``: the (min, max) of each
    argument, None where not read) is 0 or at least ``min_scale`` of :func:`safe_coordinate_range`."""
    read = [extent for extent in extents if extent is not None]
    if not read:
        return
    largest = max(_largest_magnitude(extent) for extent in read)
    min_scale = safe_coordinate_range(dtype)[0]
    if largest == 0 or largest >= min_scale:
        return
    raise ValueError(
        f"{names} must have a largest coordinate magnitude of 0 (every point at the origin) or at least "
        f"{min_scale:.0e} for {dtype} inputs (see pointpeft.ops.safe_coordinate_range): below it squared "
        f"distances underflow {torch_backend.compute_dtype(dtype)} and distinct points tie; got {largest:.3g}. "
        "Rescale the clouds (e.g. divide them by their radius)."
    )


def _may_not_fit(span: float | None, dtype: torch.dtype, *, squared: bool) -> bool:
    """Whether a coordinate difference (``squared`` False) or a squared distance (True) between points
    whose coordinates are all within ``span`` of each other may exceed the largest finite ``dtype``
    value. ``span`` None (the coordinates were not read) means no check can be made: False."""
    if span is None:
        return False
    worst = 3 * span * span if squared else span
    return worst * (1 + 2**-10) > torch.finfo(dtype).max  # margin for the roundings


def _span(extents: list[tuple[float, float] | None]) -> float | None:
    """Largest coordinate minus smallest over the ``extents`` (min, max) of several arguments; None when
    one of them was not read."""
    if any(extent is None for extent in extents):
        return None
    return max(e[1] for e in extents if e) - min(e[0] for e in extents if e)


# --------------------------------------------------------------------------------------------------
# Validation helpers (shared by all public functions)
# --------------------------------------------------------------------------------------------------


def check_cloud(t: object, name: str, *, allow_empty: bool = False) -> torch.Tensor:
    """Check that ``t`` is a dense floating-point tensor of shape (B, N, 3) with N >= 1 (unless
    ``allow_empty``); return it.

    This checks the type, layout, dtype and shape only; the ops also check the values (finite, in
    :func:`safe_coordinate_range`).

    Raises:
        TypeError: if ``t`` is not a dense (strided, not nested) tensor of float16, bfloat16, float32
            or float64.
        ValueError: if its shape is not (B, N, 3), or N is 0 (unless allowed).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, N, 3), got {type(t).__name__}")
    if t.is_nested or t.layout != torch.strided:
        layout = "nested" if t.is_nested else str(t.layout)
        raise TypeError(
            f"{name} must be a dense (strided) tensor of shape (B, N, 3), got a {layout} tensor "
            "(convert it with .to_dense(), or pad ragged clouds and pass lengths)"
        )
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


def _check_coordinates(
    t: torch.Tensor, name: str, lengths: torch.Tensor | None = None
) -> tuple[float, float] | None:
    """Check that every coordinate of ``t`` (B, N, 3) is finite (no NaN or inf) and at most ``max_abs``
    of :func:`safe_coordinate_range` in magnitude; with ``lengths``, only the coordinates of valid points
    (index < ``lengths[b]``) are checked (padding counts as 0).

    Returns:
        ``(min, max)`` of the checked coordinates, for the checks that need the clouds' extent, or None
        when ``t`` is empty or a CUDA graph is being recorded (no value can be read then).

    Raises:
        ValueError: if a checked coordinate is not finite or out of range, or ``t`` is on ``meta``.
    """
    if t.device.type == "meta":
        raise ValueError(
            f"{name} must be on a device that holds values (cpu, cuda, ...), got a tensor on meta: the ops "
            "pick points by their coordinates"
        )
    if t.numel() == 0:
        return None
    if traceable.tracing():
        # Under torch.compile/export no value is read back (that would be a host sync in the graph): the
        # value checks run in eager calls only.
        return None
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        # Reading a value back is not allowed while a CUDA graph records; pointpeft.CUDAGraphStep checks
        # its inputs before every replay instead.
        return None
    where = ""
    t = t.detach()
    if lengths is not None:
        t = t.masked_fill(~torch_backend.valid_mask(lengths, t.shape[1])[..., None], 0.0)
        where = " at its valid points (index < lengths[b])"
    # One vectorised pass and one read back: aminmax propagates NaN, so both ends are finite iff every
    # value is (about 15x faster than ``isfinite(t).all()`` on CPU), and they bound every magnitude.
    low, high = torch.stack(torch.aminmax(t)).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} must contain only finite coordinates{where}, got NaN or inf values")
    _check_in_range((low, high), name, t.dtype, where)
    return low, high


def check_coordinates(t: torch.Tensor, name: str, lengths: torch.Tensor | None = None) -> None:
    """Check the values of the cloud ``t`` (B, N, 3) as :func:`farthest_point_sample` checks ``xyz``:
    finite and within :func:`safe_coordinate_range` at its valid points, with errors naming ``name``.

    For code that hands clouds to the ops under another name (a model's ``points``, a step's
    ``inputs``) and wants its errors to say so. It reads the device once (nothing while a CUDA graph
    records), as the ops do again. Under torch.compile/export it checks the types, dtypes and shapes
    only: the value checks are skipped (run it eagerly once to check the values).

    Args:
        t: FloatTensor of shape (B, N, 3) (see :func:`check_cloud`).
        name: the argument name used in the errors.
        lengths: optional LongTensor (int64 or int32) of shape (B,), values in [0, N], on the device
            of ``t``: only the first ``lengths[b]`` points of cloud b are checked.

    Raises:
        TypeError: if ``t`` or ``lengths`` has a wrong type, layout or dtype.
        ValueError: if a shape or length is out of range, or a checked coordinate is not finite or
            outside :func:`safe_coordinate_range`.
    """
    t = check_cloud(t, name, allow_empty=True)
    checked, _ = _check_lengths(lengths, "lengths", t, name)
    _check_scale([_check_coordinates(t, name, checked)], name, t.dtype)


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
    there is no padding (or B == 0). Under torch.compile/export the values are not read: ``lengths``
    comes back as int64 even when every cloud is full, with ``min_length`` N.
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
            f"{name} and {cloud_name} must be on the same device, got {lengths.device} and {cloud.device} "
            f"(move it with {name}.to({cloud_name}.device))"
        )
    if batch == 0:
        return None, size
    if traceable.tracing():  # no value read back under torch.compile/export: the eager call checks them
        return _as_int64(lengths), size
    low, high = (int(v) for v in torch.aminmax(lengths))
    if low < 0 or high > size:
        raise ValueError(
            f"{name} must have values in [0, {size_name}] = [0, {size}], got values in [{low}, {high}]"
        )
    if low == size:
        return None, size
    return _as_int64(lengths), low


def _as_int64(lengths: torch.Tensor) -> torch.Tensor:
    """``lengths`` as a contiguous int64 tensor (itself when it is one: no copy, no node in a graph)."""
    if lengths.dtype == torch.int64 and lengths.is_contiguous():
        return lengths
    return lengths.to(torch.int64).contiguous()


def _check_start_idx(start_idx: int, lengths: torch.Tensor | None) -> None:
    """Check that ``start_idx < lengths[b]`` for every cloud ``b`` with ``lengths[b] > 0``."""
    if lengths is None or traceable.tracing():
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
    module, _ = dispatch.import_triton()
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
    check_values: bool = True,
) -> torch.Tensor:
    """Iterative farthest point sampling (FPS).

    The first sample is ``start_idx``; every following sample is the point whose squared distance to
    the set already sampled (the running minimum over that set) is largest, ties going to the lowest
    index. Squared distances are ``dx*dx + dy*dy + dz*dz`` evaluated in float32 for
    float16/bfloat16/float32 inputs and in float64 for float64 inputs.

    Args:
        xyz: FloatTensor of shape (B, N, 3) (float16, bfloat16, float32 or float64) giving B clouds
            of N points each. Must be finite and within :func:`safe_coordinate_range` at valid points.
            Not differentiated through.
        num_samples: M, the number of points to sample per cloud, 1 <= M <= N.
        start_idx: index in [0, N) of the first sample (the same for every cloud); with ``lengths``
            it must also be < ``lengths[b]`` for every cloud with ``lengths[b] > 0``.
        lengths: optional LongTensor (int64 or int32) of shape (B,), values in [0, N], on the device
            of ``xyz``: cloud b samples among its first ``lengths[b]`` points only; the others are
            padding and may hold anything (NaN included). None means every cloud has N points.
        backend: None, ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`pointpeft.ops`).
        check_values: check that the coordinates are finite and within :func:`safe_coordinate_range`
            (True, the default). That check reads a value back from the device, so on a GPU the host waits
            for the work queued before. False skips it, for a caller that has checked the same values
            already (where they were at hand: :func:`check_coordinates` on the CPU copy of a batch); on
            coordinates that would fail it the indices are unspecified.

    Returns:
        LongTensor of shape (B, M) on the device of ``xyz``: indices into dimension 1 of ``xyz``.
        The indices of one cloud are distinct whenever it has at least M distinct valid points
        (points whose coordinates all differ by less than about 1e-23 in float32, 1e-162 in float64,
        have squared distance 0 and count as coincident). Cloud b gets ``min(M, lengths[b])``
        samples; the positions after them hold -1.

    Under ``torch.compile`` and ``torch.export`` the op runs as the custom operator
    ``pointpeft::farthest_point_sample`` (no graph break; the eager indices) and its value checks are
    skipped: finite coordinates in :func:`safe_coordinate_range`, the values of ``lengths``, and
    ``start_idx`` against them. Type, dtype, device and shape checks still run. Run it eagerly once to
    check the inputs.

    Raises:
        TypeError: if ``xyz`` or ``lengths`` has a wrong type or dtype, or a count is not an int.
        ValueError: if a shape, count, index or length is out of range, ``xyz`` is not finite or
            outside :func:`safe_coordinate_range` at a valid point, or ``backend`` is unknown.
        RuntimeError: if ``backend="triton"`` is requested but cannot run on ``xyz``.
    """
    xyz = check_cloud(xyz, "xyz")
    n = xyz.shape[1]
    num_samples = _check_int(num_samples, "num_samples", low=1, high=n, high_name="N")
    start_idx = _check_int(start_idx, "start_idx", low=0, high=n - 1, high_name="N - 1")
    lengths, _ = _check_lengths(lengths, "lengths", xyz, "xyz")
    _check_start_idx(start_idx, lengths)
    if not isinstance(check_values, bool):
        raise TypeError(f"check_values must be a bool, got {type(check_values).__name__} {check_values!r}")
    if check_values:
        extent = _check_coordinates(xyz, "xyz", lengths)
        _check_scale([extent], "xyz", xyz.dtype)
    impl = dispatch.select_backend(backend, xyz)
    if traceable.tracing():
        name = dispatch.backend_name(impl)
        return traceable.farthest_point_sample(xyz, num_samples, start_idx, lengths, name)
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
        points: FloatTensor of shape (B, N, 3), same dtype and device as ``query``, N >= 1. Valid
            queries and points must be finite and within :func:`safe_coordinate_range`.
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
        ``m >= query_lengths[b]``. A squared distance that does not fit the input dtype (above 65504
        for float16) raises rather than returning inf.

    Under ``torch.compile`` and ``torch.export`` the op runs as the custom operator ``pointpeft::knn``
    (no graph break; the eager indices, and distances recomputed from them in plain torch where a
    gradient is needed, as eager calls do) and its value checks are skipped: finite coordinates in
    :func:`safe_coordinate_range`, the values of the lengths tensors, and the float16 overflow of
    ``sq_dist`` (an overflowing distance is then inf). Type, dtype, device and shape checks still run.
    Run it eagerly once to check the inputs.

    Raises:
        TypeError: if an input is not a floating-point tensor, dtypes differ, a lengths tensor has a
            wrong type or dtype, or ``k`` is not an int.
        ValueError: on bad shapes, batch or device mismatch, ``k`` or lengths out of range,
            non-finite valid inputs or inputs outside :func:`safe_coordinate_range`, an unknown
            ``backend``, or a returned squared distance that overflows the input dtype (float16).
        RuntimeError: if ``backend="triton"`` is requested but cannot run on the inputs (among them,
            ``k`` above 256).
    """
    query = check_cloud(query, "query", allow_empty=True)
    points = check_cloud(points, "points")
    _check_pair(query, points, "query", "points")
    k = _check_int(k, "k", low=1, high=points.shape[1], high_name="N")
    query_lengths, _ = _check_lengths(query_lengths, "query_lengths", query, "query", "M")
    point_lengths, _ = _check_lengths(point_lengths, "point_lengths", points, "points")
    extents = [_check_coordinates(query, "query", query_lengths)]
    extents.append(_check_coordinates(points, "points", point_lengths))
    _check_scale(extents, "query and points", points.dtype)
    impl = dispatch.select_backend(backend, points, k=k)
    if traceable.tracing():
        # One opaque operator with the eager outputs; where a gradient is needed, the distances are
        # recomputed from its indices in plain torch (as the eager backends do).
        name = dispatch.backend_name(impl)
        sq_dist, idx = traceable.knn(query, points, k, query_lengths, point_lengths, name)
        if torch.is_grad_enabled() and (query.requires_grad or points.requires_grad):
            sq_dist = torch_backend.neighbour_sq_dist(query, points, idx, query_lengths, point_lengths)
        return KNNResult(sq_dist, idx)
    sq_dist, idx = impl.knn(query, points, k, query_lengths, point_lengths)
    if _may_not_fit(_span(extents), query.dtype, squared=True) and bool(torch.isinf(sq_dist).any()):
        _raise_sq_dist_overflow(query, points, idx, query_lengths, point_lengths)
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
        xyz: FloatTensor of shape (B, N, 3) (float16, bfloat16, float32 or float64), finite and
            within :func:`safe_coordinate_range` at valid points.
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

    Under ``torch.compile`` and ``torch.export`` the op runs as the custom operator ``pointpeft::group``
    (no graph break; the eager outputs) or, where a gradient is needed, as
    ``pointpeft::farthest_point_sample`` and ``pointpeft::knn`` with the gathers in plain torch, as eager
    calls do then. Its value checks are skipped: finite coordinates in :func:`safe_coordinate_range`,
    the values of ``lengths`` and the counts and ``start_idx`` against them, and the float16 overflow
    of ``neighborhood``. Type, dtype, device and shape checks still run. Run it eagerly once to check
    the inputs.

    Raises:
        TypeError: if ``xyz`` or ``lengths`` has a wrong type or dtype, or a count is not an int.
        ValueError: if a shape, count, index or length is out of range, ``xyz`` is not finite or
            outside :func:`safe_coordinate_range` at a valid point, ``backend`` is unknown, or a
            neighbour offset overflows the input dtype (float16: beyond 65504 along an axis).
        RuntimeError: if ``backend="triton"`` is requested but cannot run on ``xyz`` (among them,
            ``group_size`` above 256).
    """
    xyz = check_cloud(xyz, "xyz")
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
    extent = _check_coordinates(xyz, "xyz", lengths)
    _check_scale([extent], "xyz", xyz.dtype)
    impl = dispatch.select_backend(backend, xyz, k=group_size, k_name="group_size")
    if traceable.tracing():
        return _traced_group(xyz, num_group, group_size, start_idx, lengths, dispatch.backend_name(impl))
    neighborhood, centers = impl.group(xyz, num_group, group_size, start_idx, lengths)
    if _may_not_fit(_span([extent]), xyz.dtype, squared=False) and bool(torch.isinf(neighborhood).any()):
        _raise_offset_overflow(xyz.dtype)
    return GroupResult(neighborhood, centers)


def _traced_group(
    xyz: torch.Tensor,
    num_group: int,
    group_size: int,
    start_idx: int,
    lengths: torch.Tensor | None,
    name: str,
) -> GroupResult:
    """:func:`group` under torch.compile/export, through the custom operators of ``backend`` ``name``.

    Without a gradient, one opaque ``pointpeft::group`` with the eager outputs. With one, the indices come
    from ``pointpeft::farthest_point_sample`` and ``pointpeft::knn`` and the gathers and the centering
    run in plain torch, as the eager backends do for inputs that require grad.
    """
    if not (torch.is_grad_enabled() and xyz.requires_grad):
        neighborhood, centers = traceable.group(xyz, num_group, group_size, start_idx, lengths, name)
        return GroupResult(neighborhood, centers)
    center_idx = traceable.farthest_point_sample(xyz, num_group, start_idx, lengths, name)
    centers = torch_backend.gather_points(xyz, center_idx)
    _, idx = traceable.knn(centers, xyz, group_size, None, lengths, name)
    return GroupResult(torch_backend.gather_points(xyz, idx) - centers[:, :, None, :], centers)


def _raise_offset_overflow(dtype: torch.dtype) -> None:
    """Raise the error of a :func:`group` whose neighbour offsets do not fit ``dtype``."""
    raise ValueError(
        f"group cannot return neighborhood in {dtype}: a neighbour lies more than {torch.finfo(dtype).max:g} "
        f"(the largest finite {dtype} value) from its center along an axis. Pass float32 coordinates "
        "(xyz.float()) or rescale the cloud."
    )


def _raise_sq_dist_overflow(
    query: torch.Tensor,
    points: torch.Tensor,
    idx: torch.Tensor,
    query_lengths: torch.Tensor | None,
    point_lengths: torch.Tensor | None,
) -> None:
    """Raise the error of a :func:`knn` whose squared distances do not fit the input dtype, naming the
    largest one (recomputed in the compute dtype from the found neighbours ``idx``)."""
    dtype = torch_backend.compute_dtype(query.dtype)
    with torch.no_grad():
        exact = torch_backend.neighbour_sq_dist(
            query.detach().to(dtype), points.detach().to(dtype), idx, query_lengths, point_lengths
        )
    raise ValueError(
        f"knn cannot return sq_dist in {query.dtype}: a squared distance between query and points is "
        f"{float(exact.max()):.4g}, above {torch.finfo(query.dtype).max:g}, the largest finite "
        f"{query.dtype} value. Pass {dtype} query and points (query.to({dtype}), points.to({dtype})), "
        "or rescale the clouds."
    )
