"""A seeded, procedurally generated point-cloud classification dataset: no files needed.

:class:`SyntheticShapes` samples points on parametric surfaces (sphere, cube, torus, Möbius strip, ...)
with a random pose, scale, density, noise, partial view and clutter, so that the whole pipeline
(datasets, sampling, augmentation, training, voting) can be run and tested with nothing on disk.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from pointpeft.checks import check_bool, check_int, check_real

__all__ = ["MAX_NOISE", "MAX_NUM_POINTS", "MAX_NUM_SAMPLES", "SCALE_BOUNDS", "SHAPE_NAMES", "SyntheticShapes"]

_TAU = 2.0 * math.pi
_ANISOTROPY = 0.1  # per-axis scale factors in [1 - _ANISOTROPY, 1 + _ANISOTROPY]
_DENSITY_POOL = 2  # non-uniform density: keep num_points of _DENSITY_POOL * num_points candidates
_DENSITY_STRENGTH = (0.5, 1.5)  # kappa of the exp(kappa * <p, d>) density weight
_MIN_CANONICAL = 256  # the canonical centre and radius of a shape are measured on >= this many samples

#: The most points per item (an item's float64 temporaries take about 150 bytes per point).
MAX_NUM_POINTS = 2**20
#: The most items (``len()`` must fit a C ssize_t).
MAX_NUM_SAMPLES = 2**62
#: The largest noise std (shape units): beyond it the shape is lost in the noise anyway, and far beyond
#: it squared norms overflow float64 and the normalised cloud would silently become zeros.
MAX_NOISE = 1e3
#: The range allowed for both ends of ``scale_range``: far outside it the density weights and squared
#: norms overflow or underflow float64.
SCALE_BOUNDS = (1e-6, 1e6)


# --------------------------------------------------------------------------------------------------
# Surface samplers: (rng, m) -> float64 array (3, m) (coordinates as rows, which keeps numpy's
# reductions fast), roughly uniform on the surface, in canonical pose and of extent ~1. Shape
# parameters (proportions) are drawn from the rng first.
# --------------------------------------------------------------------------------------------------


def _sq_norms(pts: np.ndarray) -> np.ndarray:
    """Squared norms (m,) of the columns of ``pts`` (3, m)."""
    return pts[0] * pts[0] + pts[1] * pts[1] + pts[2] * pts[2]


def _unit_vectors(rng: np.random.Generator, m: int) -> np.ndarray:
    """(3, m) points uniform on the unit sphere."""
    v = rng.standard_normal((3, m))
    return v / np.sqrt(np.maximum(_sq_norms(v), 1e-24))


def _rejection(
    rng: np.random.Generator,
    m: int,
    propose: Callable[[int], np.ndarray],
    weight: Callable[[np.ndarray], np.ndarray],
    max_weight: float,
) -> np.ndarray:
    """m proposals (columns of ``propose(k)``, an array (d, k)) accepted with probability
    ``weight / max_weight`` (the surface-area correction of a parametrisation)."""
    chunks, have = [], 0
    while have < m:
        cand = propose(2 * (m - have) + 16)
        keep = cand[:, rng.random(cand.shape[1]) * max_weight < weight(cand)]
        chunks.append(keep)
        have += keep.shape[1]
    return np.concatenate(chunks, axis=1)[:, :m]


def _triangles(rng: np.random.Generator, m: int, tris: np.ndarray) -> np.ndarray:
    """m points uniform on the union of the triangles ``tris`` (T, 3 vertices, 3), area-weighted."""
    a, ab, ac = tris[:, 0].T, (tris[:, 1] - tris[:, 0]).T, (tris[:, 2] - tris[:, 0]).T  # (3, T) each
    area = np.sqrt(_sq_norms(np.cross(ab, ac, axis=0)))
    cum = np.cumsum(area)
    which = np.minimum(np.searchsorted(cum, rng.random(m) * cum[-1]), tris.shape[0] - 1)
    r1 = np.sqrt(rng.random(m))
    r2 = rng.random(m)
    return a[:, which] + (r1 * (1 - r2)) * ab[:, which] + (r1 * r2) * ac[:, which]


def _tube(
    rng: np.random.Generator,
    m: int,
    curve: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    t_range: tuple[float, float],
    radius: float,
    speed: tuple[Callable[[np.ndarray], np.ndarray], float] | None = None,
) -> np.ndarray:
    """m points on a tube of ``radius`` around a curve, ``curve(t) -> (c(t), c'(t))``, both (3, len(t)),
    for t in ``t_range``. With ``speed = (|c'|(t), an upper bound of it)``, t is drawn proportionally
    to the speed (uniform in arc length); without, t is uniform (right for constant-speed curves)."""
    lo, hi = t_range
    if speed is None:
        t = lo + (hi - lo) * rng.random(m)
    else:
        speed_fn, max_speed = speed
        t = _rejection(
            rng, m, lambda k: lo + (hi - lo) * rng.random((1, k)), lambda tt: speed_fn(tt[0]), max_speed
        )[0]
    center, tangent = curve(t)
    tx, ty, tz = tangent / np.sqrt(_sq_norms(tangent))
    # normal = tangent x (a helper axis far from parallel to it): z, else x.
    use_z = np.abs(tz) < 0.9
    zeros = np.zeros(m)
    normal = np.stack([np.where(use_z, ty, zeros), np.where(use_z, -tx, tz), np.where(use_z, zeros, -ty)])
    nx, ny, nz = normal / np.sqrt(_sq_norms(normal))
    binormal = np.stack([ty * nz - tz * ny, tz * nx - tx * nz, tx * ny - ty * nx])
    phi = _TAU * rng.random(m)
    return center + radius * (np.cos(phi) * np.stack([nx, ny, nz]) + np.sin(phi) * binormal)


def _sphere(rng: np.random.Generator, m: int) -> np.ndarray:
    return _unit_vectors(rng, m)


def _cube(rng: np.random.Generator, m: int) -> np.ndarray:
    pts = rng.uniform(-1.0, 1.0, (3, m))
    face = rng.integers(0, 6, m)
    pts[face // 2, np.arange(m)] = np.where(face % 2 == 0, -1.0, 1.0)
    return pts


def _cylinder(rng: np.random.Generator, m: int) -> np.ndarray:
    half = rng.uniform(0.6, 1.5)  # half-height, radius 1
    side, cap = 2 * _TAU * half, math.pi  # areas of the side and of one cap
    u = rng.random(m) * (side + 2 * cap)
    on_side = u < side
    t = _TAU * rng.random(m)
    w = rng.random(m)
    r = np.where(on_side, 1.0, np.sqrt(w))
    z = np.where(on_side, half * (2 * w - 1), np.where(u < side + cap, -half, half))
    return np.stack([r * np.cos(t), r * np.sin(t), z])


def _cone(rng: np.random.Generator, m: int) -> np.ndarray:
    height = rng.uniform(1.5, 2.5)  # base radius 1 at z = 0, apex at z = height
    side, base = math.pi * math.hypot(1.0, height), math.pi
    on_side = rng.random(m) * (side + base) < side
    r = np.sqrt(rng.random(m))  # on the side: the distance from the apex as a fraction of the slant
    t = _TAU * rng.random(m)
    return np.stack([r * np.cos(t), r * np.sin(t), np.where(on_side, height * (1 - r), 0.0)])


def _torus(rng: np.random.Generator, m: int) -> np.ndarray:
    tube = rng.uniform(0.25, 0.45)  # major radius 1
    u, v = _rejection(
        rng, m, lambda k: _TAU * rng.random((2, k)), lambda a: 1 + tube * np.cos(a[1]), 1 + tube
    )
    ring = 1 + tube * np.cos(v)
    return np.stack([ring * np.cos(u), ring * np.sin(u), tube * np.sin(v)])


def _planar_disc(rng: np.random.Generator, m: int) -> np.ndarray:
    """(2, m) points uniform on the unit disc."""
    r = np.sqrt(rng.random(m))
    t = _TAU * rng.random(m)
    return np.stack([r * np.cos(t), r * np.sin(t)])


def _disc(rng: np.random.Generator, m: int) -> np.ndarray:
    return np.concatenate([_planar_disc(rng, m), np.zeros((1, m))])


def _ellipsoid(rng: np.random.Generator, m: int) -> np.ndarray:
    axes = np.array([1.0, rng.uniform(0.55, 0.75), rng.uniform(0.3, 0.45)])
    a, b, c = axes
    # The area element of the map p -> axes * p from the unit sphere is |(bc p_x, ac p_y, ab p_z)|.
    factor = np.array([[b * c], [a * c], [a * b]])
    pts = _rejection(
        rng, m, lambda k: _unit_vectors(rng, k), lambda p: np.sqrt(_sq_norms(p * factor)), float(factor.max())
    )
    return pts * axes[:, None]


def _pyramid(rng: np.random.Generator, m: int) -> np.ndarray:
    height = rng.uniform(1.2, 2.0)  # square base [-1, 1]^2 at z = 0, apex at z = height
    c = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    apex = np.array([0.0, 0.0, height])
    tris = [np.stack([c[k], c[(k + 1) % 4], apex]) for k in range(4)]
    tris += [c[[0, 1, 2]], c[[0, 2, 3]]]
    return _triangles(rng, m, np.stack(tris))


def _helix(rng: np.random.Generator, m: int) -> np.ndarray:
    turns = rng.uniform(2.5, 4.0)
    height = rng.uniform(2.0, 3.0)  # coil radius 1
    tube = rng.uniform(0.12, 0.2)
    pitch = height / (_TAU * turns)

    def curve(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cos, sin = np.cos(t), np.sin(t)
        return np.stack([cos, sin, pitch * t]), np.stack([-sin, cos, np.full_like(t, pitch)])

    return _tube(rng, m, curve, (0.0, _TAU * turns), tube)


def _capsule(rng: np.random.Generator, m: int) -> np.ndarray:
    half = rng.uniform(0.7, 1.5)  # half-length of the cylinder part, radius 1
    side, caps = 2 * _TAU * half, 4 * math.pi
    on_side = rng.random(m) * (side + caps) < side
    t = _TAU * rng.random(m)
    u = rng.uniform(-1.0, 1.0, m)
    # Side: z = half * u. Caps (Archimedes): a sphere point at height u, shifted by +-half.
    r = np.where(on_side, 1.0, np.sqrt(np.maximum(1 - u * u, 0.0)))
    z = np.where(on_side, half * u, u + np.copysign(half, u))
    return np.stack([r * np.cos(t), r * np.sin(t), z])


def _saddle(rng: np.random.Generator, m: int) -> np.ndarray:
    k = rng.uniform(0.5, 0.8)  # z = k (x^2 - y^2) over the unit disc
    x, y = _rejection(
        rng,
        m,
        lambda n: _planar_disc(rng, n),
        lambda p: np.sqrt(1 + 4 * k * k * (p[0] * p[0] + p[1] * p[1])),
        math.sqrt(1 + 4 * k * k),
    )
    return np.stack([x, y, k * (x * x - y * y)])


def _mobius(rng: np.random.Generator, m: int) -> np.ndarray:
    width = rng.uniform(0.3, 0.5)  # half-width of the strip, centre-line radius 1
    u = _TAU * rng.random(m)
    v = rng.uniform(-width, width, m)
    ring = 1 + v * np.cos(u / 2)
    return np.stack([ring * np.cos(u), ring * np.sin(u), v * np.sin(u / 2)])


_TETRAHEDRON = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
_TETRAHEDRON_FACES = _TETRAHEDRON[[[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]]


def _tetrahedron(rng: np.random.Generator, m: int) -> np.ndarray:
    return _triangles(rng, m, _TETRAHEDRON_FACES)


def _trefoil(rng: np.random.Generator, m: int) -> np.ndarray:
    tube = rng.uniform(0.08, 0.13)

    def curve(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t2, t3 = 2 * t, 3 * t
        c = np.stack([np.sin(t) + 2 * np.sin(t2), np.cos(t) - 2 * np.cos(t2), -np.sin(t3)]) / 3.0
        dc = np.stack([np.cos(t) + 4 * np.cos(t2), -np.sin(t) + 4 * np.sin(t2), -3 * np.cos(t3)]) / 3.0
        return c, dc

    def speed(t: np.ndarray) -> np.ndarray:
        cos3 = np.cos(3 * t)
        return np.sqrt(17 + 8 * cos3 + 9 * cos3 * cos3) / 3.0  # |c'|, at most sqrt(34) / 3

    return _tube(rng, m, curve, (0.0, _TAU), tube, speed=(speed, math.sqrt(34.0) / 3.0))


_GENERATORS: tuple[tuple[str, Callable[[np.random.Generator, int], np.ndarray]], ...] = (
    ("sphere", _sphere),
    ("cube", _cube),
    ("cylinder", _cylinder),
    ("cone", _cone),
    ("torus", _torus),
    ("disc", _disc),
    ("ellipsoid", _ellipsoid),
    ("pyramid", _pyramid),
    ("helix", _helix),
    ("capsule", _capsule),
    ("saddle", _saddle),
    ("mobius", _mobius),
    ("tetrahedron", _tetrahedron),
    ("trefoil", _trefoil),
)

#: Names of all the shape generators, in class-index order; ``SyntheticShapes(num_classes=k)`` uses
#: the first k.
SHAPE_NAMES: tuple[str, ...] = tuple(name for name, _ in _GENERATORS)

# Independent random streams of one item, so that toggling an option changes only its own part.
# Stage k draws from the item's PCG64 stream starting at position k * _STAGE_STRIDE.
_SHAPE, _POSE, _DENSITY, _PARTIAL, _NOISE, _CLUTTER = range(6)
_STAGE_STRIDE = 1 << 96

_Number = TypeVar("_Number", int, float)


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _at_most(name: str, value: _Number, high: _Number) -> _Number:
    """``value`` if it is <= ``high``, else a ValueError naming ``name`` and the bound."""
    if value > high:
        shown = f"{high:g}" if isinstance(high, float) else str(high)
        raise ValueError(f"{name} must be at most {shown}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


class SyntheticShapes(Dataset):
    """Seeded synthetic point clouds of parametric surfaces, for classification without any files.

    Classes (``num_classes`` takes the first ``num_classes``; :data:`SHAPE_NAMES` lists them):

    ====  =============  ====================================================================
    0     sphere         unit sphere
    1     cube           surface of a cube
    2     cylinder       closed cylinder (side and both caps), height / radius in [1.2, 3]
    3     cone           closed cone (side and base), height / radius in [1.5, 2.5]
    4     torus          ring torus, tube / ring radius in [0.25, 0.45]
    5     disc           flat disc
    6     ellipsoid      ellipsoid with axes 1 : [0.55, 0.75] : [0.3, 0.45]
    7     pyramid        square pyramid (sides and base), height / half-base in [1.2, 2]
    8     helix          tube around a helix (a spring), 2.5 to 4 turns
    9     capsule        cylinder with hemispherical caps, cylinder length / radius in [1.4, 3]
    10    saddle         hyperbolic paraboloid z = k (x^2 - y^2) over a disc, k in [0.5, 0.8]
    11    mobius         Möbius strip, half-width / radius in [0.3, 0.5]
    12    tetrahedron    surface of a regular tetrahedron
    13    trefoil        tube around a trefoil knot
    ====  =============  ====================================================================

    Every item is made as follows, each step with its own random stream derived from ``(seed, i)``
    (so turning an option on or off changes only what that option does):

    1. points are sampled (area-uniformly) on the surface of class ``i % num_classes``, whose
       proportions are drawn in the ranges above;
    2. the shape is scaled by a random isotropic factor in ``scale_range`` times mild per-axis factors
       in [0.9, 1.1] (the anisotropy), then, if ``random_pose``, rotated by a uniformly random 3-D
       rotation;
    3. if ``nonuniform_density``, ``num_points`` points are drawn without replacement from
       ``2 * num_points`` surface samples with weights ``exp(kappa * <p, d>)``, kappa in [0.5, 1.5],
       for a random direction ``d``, so points are denser on one side, as in real scans;
    4. if ``partial > 0``, the ``floor(partial * num_points)`` points on one side of a random plane
       through the shape are dropped (a partial view) and the cloud is filled back to ``num_points``
       by repeating kept points (each kept point once, then kept points drawn at random);
    5. Gaussian noise of std ``noise`` is added to every coordinate;
    6. if ``clutter > 0``, ``round(clutter * num_points)`` random points are replaced by background
       points uniform in the axis-aligned bounding box of the cloud;
    7. the cloud is normalised like ``pc_normalize``: centroid at the origin, largest norm 1.

    Because of step 7 the isotropic scale does not change the final size; it changes the size of the
    noise relative to the shape (``noise`` is in the units of the unscaled shape, whose largest
    norm is 1; the normalised noise std is about ``noise / scale``).

    Item ``i`` depends only on ``(seed, i)`` and the options (not on the order of access, the worker,
    or any global random state), and is generated when indexed: about 0.4 to 0.7 ms for 1024 points
    on one slow CPU core, so 1000 items take well under a second. Labels are balanced:
    ``label = i % num_classes``.

    Args:
        num_samples: number of items, in [1, MAX_NUM_SAMPLES] (2**62).
        num_points: P, the number of points per item, in [1, MAX_NUM_POINTS] (2**20).
        num_classes: number of classes, in [2, len(SHAPE_NAMES)] = [2, 14].
        seed: int >= 0; datasets with different seeds hold different items (use different seeds for
            train and test splits).
        noise: standard deviation of the Gaussian noise, in [0, MAX_NOISE] (1e3).
        random_pose: rotate every item by a uniformly random rotation.
        scale_range: ``(low, high)`` with 0 < low <= high, both in SCALE_BOUNDS ([1e-6, 1e6]): range of
            the isotropic scale.
        nonuniform_density: make the point density vary across the surface.
        partial: fraction of the points removed as a partial view, in [0, 1).
        clutter: fraction of the points replaced by uniform background clutter, in [0, 1).
        cache: keep every item once generated (``num_samples * num_points * 12`` bytes when all are), so
            that a training run's later epochs read clouds instead of generating them (about 1.5 ms per
            cloud of 2048 points on one CPU core: 47 ms per batch of 32, more than a compiled GPU step).

    Items are ``(points, label)``: a float32 tensor of shape (num_points, 3) and an int.

    Attributes:
        num_classes: the number of classes.
        classes: tuple of the ``num_classes`` class names (``classes[label]`` names a label).

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if an argument is out of range.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        num_points: int = 1024,
        *,
        num_classes: int = 10,
        seed: int = 0,
        noise: float = 0.01,
        random_pose: bool = True,
        scale_range: tuple[float, float] = (0.7, 1.3),
        nonuniform_density: bool = True,
        partial: float = 0.0,
        clutter: float = 0.0,
        cache: bool = False,
    ) -> None:
        super().__init__()
        self.num_samples = _at_most("num_samples", check_int("num_samples", num_samples, 1), MAX_NUM_SAMPLES)
        self.num_points = _at_most("num_points", check_int("num_points", num_points, 1), MAX_NUM_POINTS)
        self.num_classes = check_int("num_classes", num_classes, 2, len(_GENERATORS))
        self.seed = check_int("seed", seed, 0)
        self.noise = _at_most(
            "noise", check_real("noise", noise, "a finite float >= 0", lambda v: v >= 0), MAX_NOISE
        )
        self.random_pose = check_bool("random_pose", random_pose)
        self.scale_range = self._check_scale_range(scale_range)
        self.nonuniform_density = check_bool("nonuniform_density", nonuniform_density)
        self.partial = check_real("partial", partial, "a float in [0, 1)", lambda v: 0 <= v < 1)
        self.clutter = check_real("clutter", clutter, "a float in [0, 1)", lambda v: 0 <= v < 1)
        self.classes: tuple[str, ...] = SHAPE_NAMES[: self.num_classes]
        self.cache = check_bool("cache", cache)
        self._cached: dict[int, torch.Tensor] = {}

    @staticmethod
    def _check_scale_range(value: object) -> tuple[float, float]:
        expected = "a pair (low, high) of finite floats with 0 < low <= high"
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"scale_range must be {expected}, got {type(value).__name__} {value!r}")
        low, high = (check_real("scale_range", v, expected, lambda x: x > 0) for v in value)
        if low > high:
            raise ValueError(f"scale_range must be {expected}, got ({low!r}, {high!r})")
        lo, hi = SCALE_BOUNDS
        if low < lo or high > hi:
            raise ValueError(
                f"scale_range must lie within [{lo:g}, {hi:g}] (SCALE_BOUNDS; the noise and density weights "
                f"overflow beyond), got ({low!r}, {high!r})"
            )
        return (low, high)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, num_points={self.num_points}, "
            f"num_classes={self.num_classes}, seed={self.seed}, noise={self.noise}, "
            f"random_pose={self.random_pose}, scale_range={self.scale_range}, "
            f"nonuniform_density={self.nonuniform_density}, partial={self.partial}, clutter={self.clutter}"
            f"{', cache=True' if self.cache else ''})"
        )

    def label(self, index: int) -> int:
        """The label of item ``index`` (``index % num_classes``), without generating its points."""
        return self._index(index) % self.num_classes

    def _index(self, index: object) -> int:
        if isinstance(index, torch.Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"index must be an int, got {type(index).__name__} {index!r}")
        index = int(index)
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(
                f"index must be in [-{self.num_samples}, {self.num_samples}) "
                f"(num_samples = {self.num_samples}), got {index}"
            )
        return index % self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index``: ``(points float32 tensor (num_points, 3), label int)``."""
        index = self._index(index)
        label = index % self.num_classes
        points = self._cached.get(index)
        if points is None:
            points = torch.from_numpy(np.ascontiguousarray(self._points(index, label), dtype=np.float32))
            if self.cache:
                self._cached[index] = points
        return (points.clone() if self.cache else points), label  # a copy: the cached cloud stays as made

    def _points(self, index: int, label: int) -> np.ndarray:
        """The (num_points, 3) float64 cloud of item ``index``."""
        n = self.num_points
        rng = np.random.default_rng([self.seed, index])
        bits = rng.bit_generator
        start = bits.state

        def stream(stage: int) -> np.random.Generator:
            """``rng`` moved to the start of the stage's own stretch of the random stream."""
            bits.state = start
            bits.advance(stage * _STAGE_STRIDE)  # type: ignore[attr-defined]  # PCG64 has it
            return rng

        # 1. Surface samples of the class, in canonical pose, centred, largest norm 1 (measured on at
        # least _MIN_CANONICAL samples, so that tiny clouds are scaled like large ones).
        pool = _DENSITY_POOL * n if self.nonuniform_density else n
        pts = _GENERATORS[label][1](stream(_SHAPE), max(pool, _MIN_CANONICAL))
        pts = pts - pts.mean(axis=1, keepdims=True)
        pts = pts[:, :pool] / math.sqrt(_sq_norms(pts).max())

        # 2. Scale (isotropic, then mild anisotropy) and pose.
        rng = stream(_POSE)
        iso = rng.uniform(*self.scale_range)
        pts = pts * (iso * rng.uniform(1 - _ANISOTROPY, 1 + _ANISOTROPY, (3, 1)))
        quat = rng.standard_normal(4)
        if self.random_pose:
            pts = _rotation(quat) @ pts

        # 3. Non-uniform density: weighted sampling without replacement (Gumbel top-k), weights
        # exp(kappa <p, d>) with p in units of the shape's radius.
        if self.nonuniform_density:
            rng = stream(_DENSITY)
            direction = _unit_vectors(rng, 1)[:, 0]
            kappa = rng.uniform(*_DENSITY_STRENGTH)
            keys = (kappa / iso) * (direction @ pts) - np.log(-np.log(rng.random(pool)))
            pts = pts[:, np.argpartition(-keys, n - 1)[:n]]

        # 4. Partial view: drop the points on one side of a random plane, refill by repetition.
        drop = math.floor(self.partial * n)
        if drop > 0:
            rng = stream(_PARTIAL)
            proj = _unit_vectors(rng, 1)[:, 0] @ pts
            kept = np.argpartition(proj, drop)[drop:]
            pts = pts[:, np.concatenate([kept, kept[rng.integers(0, kept.shape[0], drop)]])]

        # 5. Noise.
        if self.noise > 0:
            pts = pts + self.noise * stream(_NOISE).standard_normal(pts.shape)

        # 6. Clutter: uniform points in the bounding box replace random points.
        count = round(self.clutter * n)
        if count > 0:
            rng = stream(_CLUTTER)
            where = rng.permutation(n)[:count]
            low, high = pts.min(axis=1, keepdims=True), pts.max(axis=1, keepdims=True)
            pts = pts.copy()
            pts[:, where] = low + (high - low) * rng.random((3, count))

        # 7. pc_normalize. A cloud of one repeated point (num_points = 1, or a tiny partial view without
        # noise) becomes all zeros.
        pts = pts - pts.mean(axis=1, keepdims=True)
        radius = math.sqrt(_sq_norms(pts).max())
        return (pts / radius if radius > 1e-9 else np.zeros_like(pts)).T


def _rotation(quat: np.ndarray) -> np.ndarray:
    """The 3x3 rotation matrix of the (not necessarily unit) quaternion ``(w, x, y, z)``.

    For a standard normal ``quat`` the rotation is uniformly distributed (Haar measure on SO(3)).
    """
    w, x, y, z = quat / max(float(np.linalg.norm(quat)), 1e-12)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
