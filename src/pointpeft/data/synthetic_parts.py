"""Procedurally generated part-labelled shapes: a small stand-in for ShapeNetPart (nothing to download)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from pointpeft.checks import check_bool, check_int, check_real

__all__ = ["SYNTHETIC_PART_CATEGORIES", "SyntheticParts"]

#: The categories of :class:`SyntheticParts` and their part labels (7 in all), in the order of the
#: category index: a table (top, legs), a mug (body, handle), a lamp (base, pole, shade).
SYNTHETIC_PART_CATEGORIES: dict[str, tuple[int, ...]] = {"Table": (0, 1), "Mug": (2, 3), "Lamp": (4, 5, 6)}


def _box(rng: np.random.Generator, n: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``n`` points on the surface of the axis-aligned box ``[low, high]``, area-uniform."""
    size = high - low
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    axis = rng.choice(3, n, p=areas / areas.sum())
    points = low + rng.random((n, 3)) * size
    side = rng.random(n) < 0.5
    points[np.arange(n), axis] = np.where(side, low[axis], high[axis])
    return points


def _cylinder(rng: np.random.Generator, n: int, radius: float, y0: float, y1: float) -> np.ndarray:
    """``n`` points on the side of the cylinder of axis y from ``y0`` to ``y1``."""
    angle = rng.random(n) * 2 * math.pi
    return np.stack([radius * np.cos(angle), y0 + rng.random(n) * (y1 - y0), radius * np.sin(angle)], axis=1)


def _table(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    width, depth, height = rng.uniform(0.8, 1.2), rng.uniform(0.5, 0.9), rng.uniform(0.6, 1.0)
    top_n = n // 2
    top = _box(rng, top_n, np.array([-width, height, -depth]), np.array([width, height + 0.08, depth]))
    legs = []
    leg_n = np.diff(np.linspace(0, n - top_n, 5).astype(int))
    for (sx, sz), count in zip(((-1, -1), (-1, 1), (1, -1), (1, 1)), leg_n, strict=True):
        x, z = sx * (width - 0.08), sz * (depth - 0.08)
        legs.append(
            _box(rng, count, np.array([x - 0.04, 0.0, z - 0.04]), np.array([x + 0.04, height, z + 0.04]))
        )
    return np.concatenate([top, *legs]), np.repeat([0, 1], [top_n, n - top_n])


def _mug(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    radius, height = rng.uniform(0.35, 0.5), rng.uniform(0.8, 1.2)
    body_n = (3 * n) // 4
    body = _cylinder(rng, body_n, radius, 0.0, height)
    t = rng.random(n - body_n) * math.pi - math.pi / 2  # a half ring beside the body, in the x-y plane
    ring, tube = height * 0.3, 0.05
    around = rng.random(n - body_n) * 2 * math.pi
    handle = np.stack(
        [
            radius + (ring + tube * np.cos(around)) * np.cos(t),
            height / 2 + (ring + tube * np.cos(around)) * np.sin(t),
            tube * np.sin(around),
        ],
        axis=1,
    )
    return np.concatenate([body, handle]), np.repeat([2, 3], [body_n, n - body_n])


def _lamp(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    base_r, pole_h, shade_r = rng.uniform(0.3, 0.5), rng.uniform(0.8, 1.2), rng.uniform(0.35, 0.55)
    base_n, pole_n = n // 4, n // 4
    r = base_r * np.sqrt(rng.random(base_n))
    a = rng.random(base_n) * 2 * math.pi
    base = np.stack([r * np.cos(a), np.zeros(base_n), r * np.sin(a)], axis=1)
    pole = _cylinder(rng, pole_n, 0.04, 0.0, pole_h)
    shade_n = n - base_n - pole_n
    h = rng.random(shade_n)  # a cone frustum around the pole's top
    a = rng.random(shade_n) * 2 * math.pi
    radius = shade_r * (0.4 + 0.6 * h)
    shade = np.stack([radius * np.cos(a), pole_h - 0.1 + 0.4 * (1 - h), radius * np.sin(a)], axis=1)
    return np.concatenate([base, pole, shade]), np.repeat([4, 5, 6], [base_n, pole_n, shade_n])


_MAKERS = (_table, _mug, _lamp)


class SyntheticParts(Dataset):
    """Part-labelled synthetic shapes of the :data:`SYNTHETIC_PART_CATEGORIES`: item ``i`` is of category
    ``i % 3``, its points sampled on its parts (each part's share fixed, the proportions drawn at random),
    then (if ``random_pose``) rotated about the vertical axis, noised and normalised into the unit sphere.
    Item ``i`` depends only on ``(seed, i)`` and the options.

    Args:
        num_samples: items, >= 1.
        num_points: points per item, >= 8.
        seed: >= 0; use different seeds for training and test sets.
        noise: std of the Gaussian noise added to every coordinate, in [0, 1].
        random_pose: rotate each shape by a random angle about the vertical (y) axis.

    Attributes:
        categories: the category names (a category is its index here).
        num_parts: 7, the part labels.

    Items are ``(points (num_points, 3) float32, category int, parts (num_points,) int64)``, as
    :class:`~pointpeft.data.ShapeNetPart`'s.
    """

    def __init__(
        self,
        num_samples: int = 600,
        num_points: int = 1024,
        *,
        seed: int = 0,
        noise: float = 0.005,
        random_pose: bool = True,
    ) -> None:
        super().__init__()
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.num_points = check_int("num_points", num_points, 8)
        self.seed = check_int("seed", seed, 0)
        self.noise = check_real("noise", noise, "a float in [0, 1]", lambda v: 0 <= v <= 1)
        self.random_pose = check_bool("random_pose", random_pose)
        self.categories = list(SYNTHETIC_PART_CATEGORIES)
        self.num_parts = sum(len(parts) for parts in SYNTHETIC_PART_CATEGORIES.values())

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -len(self) <= i < len(self):
            raise IndexError(f"index {i!r} out of range for {len(self)} shapes")
        i = int(i) % len(self)
        rng = np.random.default_rng((self.seed, i))
        category = i % len(_MAKERS)
        points, parts = _MAKERS[category](rng, self.num_points)
        if self.random_pose:
            angle = rng.random() * 2 * math.pi
            c, s = math.cos(angle), math.sin(angle)
            points = points @ np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        points = points + rng.normal(0.0, self.noise, points.shape)
        points = points - points.mean(axis=0)
        points = points / np.sqrt((points * points).sum(axis=1)).max()
        order = rng.permutation(self.num_points)
        return (
            torch.from_numpy(points[order].astype(np.float32)),
            category,
            torch.from_numpy(parts[order].astype(np.int64)),
        )
