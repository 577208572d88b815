"""Checks of what the dataset files hold (cloud arrays, labels); every error names the file and the index.

The checks of arguments (counts, numbers, paths) are in :mod:`pointpeft.checks`. These checks take
``name_of(i)``, a function that says where item ``i`` is (``"path: 'data'[3]"``), so that each loader
names its own file and index while the check itself lives here, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "bad_values",
    "check_clouds_distinct",
    "check_clouds_finite",
    "check_clouds_in_range",
    "check_labels",
    "describe",
]

_CHUNK_CLOUDS = 1024  # clouds checked at a time (bounds the boolean temporaries)


def describe(value: object) -> str:
    """A short description of a value read from a file: type and shape, or type and (cut) repr."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (list, tuple, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {value!r}"[:200]


def bad_values(values: np.ndarray, limit: int = 10) -> str:
    """The distinct values of ``values`` (a 1-D array), sorted, the first ``limit`` of them shown."""
    uniq = np.unique(values)
    shown = ", ".join(str(v) for v in uniq[:limit].tolist())
    return shown + (f", ... ({uniq.size} distinct)" if uniq.size > limit else "")


def _plain(value: object) -> object:
    """A numpy scalar as the Python number it holds (for messages); anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _first_bad(bad: np.ndarray) -> tuple[int, int, list[int]]:
    """(count, first index, first ten indices) of the True entries of the 1-D mask ``bad``."""
    where = np.flatnonzero(bad)
    return where.size, int(where[0]), where[:10].tolist()


def check_clouds_finite(points: np.ndarray, name_of: Callable[[int], str]) -> None:
    """Raise naming the first cloud of ``points`` (M, P, 3) that holds NaN or inf.

    Raises:
        ValueError: ``"<name_of(i)>: non-finite coordinates ...; k cloud(s) in all, first at indices
            [...]"`` for the first such cloud ``i``.
    """
    bad = np.zeros(points.shape[0], dtype=bool)
    for start in range(0, points.shape[0], _CHUNK_CLOUDS):
        chunk = points[start : start + _CHUNK_CLOUDS]
        bad[start : start + chunk.shape[0]] = ~np.isfinite(chunk).all(axis=(1, 2))
    if bad.any():
        count, first, shown = _first_bad(bad)
        raise ValueError(
            f"{name_of(first)}: non-finite coordinates (NaN or inf, or values too large for float32); "
            f"{count} cloud(s) in all, first at indices {shown}"
        )


def check_clouds_in_range(
    points: np.ndarray, min_scale: float, max_abs: float, name_of: Callable[[int], str]
) -> None:
    """Raise naming the first cloud of the finite ``points`` (M, P, 3) whose largest coordinate magnitude
    is above ``max_abs`` or, unless 0, below ``min_scale``.

    With the bounds of :func:`pointpeft.ops.safe_coordinate_range`, this is the check the point ops
    make per batch (where their error cannot name the file), made per cloud when the file is read.

    Raises:
        ValueError: naming the first such cloud, its magnitude, the bounds and how many there are.
    """
    largest = np.zeros(points.shape[0], dtype=np.float64)
    for start in range(0, points.shape[0], _CHUNK_CLOUDS):
        chunk = points[start : start + _CHUNK_CLOUDS]
        largest[start : start + chunk.shape[0]] = np.abs(chunk).max(axis=(1, 2), initial=0.0)
    bad = (largest > max_abs) | ((largest < min_scale) & (largest > 0))
    if bad.any():
        count, first, shown = _first_bad(bad)
        raise ValueError(
            f"{name_of(first)}: the largest coordinate magnitude is {largest[first]:.3g}, outside "
            f"[{min_scale:.0e}, {max_abs:.0e}] (pointpeft.ops.safe_coordinate_range), where squared distances "
            f"overflow or underflow; {count} such cloud(s) in all, first at indices {shown}. Rescale the "
            "clouds (e.g. centre them and divide by their radius)"
        )


def check_clouds_distinct(points: np.ndarray, name_of: Callable[[int], str]) -> None:
    """Raise naming the first cloud of ``points`` (M, P, 3), P >= 2, whose points are all equal.

    Such a cloud has no shape (a zero-filled or corrupt record); one-point clouds (P = 1) are not checked.

    Raises:
        ValueError: naming the first degenerate cloud and how many there are.
    """
    if points.shape[1] < 2:
        return
    bad = np.zeros(points.shape[0], dtype=bool)
    for start in range(0, points.shape[0], _CHUNK_CLOUDS):
        chunk = points[start : start + _CHUNK_CLOUDS]
        bad[start : start + chunk.shape[0]] = (chunk == chunk[:, :1]).all(axis=(1, 2))
    if bad.any():
        count, first, shown = _first_bad(bad)
        raise ValueError(
            f"{name_of(first)}: all {points.shape[1]} points of the cloud are equal (a zero-filled or "
            f"corrupt record); {count} such cloud(s) in all, first at indices {shown}"
        )


def _non_integer_mask(raw: np.ndarray) -> np.ndarray:
    """True where ``raw`` (numeric, or object holding Python ints and floats) is not an integer."""
    if raw.dtype.kind in "iu":
        return np.zeros(raw.shape, dtype=bool)
    if raw.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            return ~np.isfinite(raw) | (raw != np.round(raw))
    return np.fromiter(
        (isinstance(v, float) and not (math.isfinite(v) and v.is_integer()) for v in raw.tolist()),
        dtype=bool,
        count=raw.size,
    )


def check_labels(raw: np.ndarray, num_classes: int, name_of: Callable[[int], str]) -> np.ndarray:
    """Class labels (M,) checked to be integers in ``[0, num_classes)``, as int64.

    Args:
        raw: labels (M,): an integer or float array (floats must be integral), or an object array of
            Python ints and floats (any size: a label like ``10**30`` is reported, never overflowed).
        num_classes: the number of classes K.
        name_of: ``name_of(i)`` says where label ``i`` is (file and index).

    Returns:
        int64 array (M,), values in [0, K).

    Raises:
        ValueError: naming the first non-integer (NaN, inf, 1.5) or out-of-range label (< 0 or >= K),
            the expected range and the bad values.
    """
    if raw.dtype.kind not in "iufO":
        raise ValueError(f"{name_of(0)}: labels must be integers, got dtype {raw.dtype}")
    non_integer = _non_integer_mask(raw)
    if non_integer.any():
        count, first, _ = _first_bad(non_integer)
        raise ValueError(
            f"{name_of(first)} must be an integer label, got {_plain(raw[first])!r}; labels must be integers in "
            f"[0, {num_classes}) ({count} non-integer label(s) in all: {bad_values(raw[non_integer])})"
        )
    out_of_range = np.asarray((raw < 0) | (raw >= num_classes), dtype=bool)
    if out_of_range.any():
        count, first, _ = _first_bad(out_of_range)
        raise ValueError(
            f"{name_of(first)} is {_plain(raw[first])!r}: labels must be in [0, {num_classes}), got out-of-range "
            f"values {bad_values(raw[out_of_range])} ({count} in all)"
        )
    return raw.astype(np.int64)
