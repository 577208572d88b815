"""ShapeNetPart in the ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` layout (the part
segmentation data of PointNet++ and the Point-MAE family).

The root holds ``synsetoffset2category.txt`` (rows ``Name<TAB>synset``), one folder per category synset of
per-shape text files (rows ``x y z nx ny nz part``), and
``train_test_split/shuffled_{train,val,test}_file_list.json`` (lists of ``"shape_data/<synset>/<token>"``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pointpeft.checks import check_bool, check_choice, check_int, check_path
from pointpeft.segmentation.metrics import SHAPENET_PART_CATEGORIES

__all__ = ["ShapeNetPart"]

_CATEGORY_FILE = "synsetoffset2category.txt"
_SPLIT_FILES = {
    "train": ("train",),
    "val": ("val",),
    "trainval": ("train", "val"),
    "test": ("test",),
}


class ShapeNetPart(Dataset):
    """The shapes of one split, each as ``npoints`` points with its category and per-point part labels.

    A shape's file is read when the shape is first indexed (and kept if ``cache``); its rows are checked
    then (7 finite numbers, an integer part label among its category's parts), with the file and row in
    every error. ``npoints`` rows are drawn with replacement, as the reference loader does, from a generator
    seeded by ``(seed, index)``: item ``i`` is the same at every access. ``x y z`` of the whole shape are
    centred and scaled into the unit sphere before the sampling (the reference's ``pc_normalize``); normals,
    if kept, are not changed.

    Args:
        root: the dataset folder.
        split: ``"trainval"`` (the reference's training set), ``"train"``, ``"val"`` or ``"test"``.
        npoints: points per item, >= 1 (reference: 2048).
        normals: keep the normals: items of ``(npoints, 6)`` points instead of ``(npoints, 3)``.
        seed: the sampling's seed, >= 0.
        cache: keep every file once read.

    Attributes:
        categories: the category names, in the file's order (an item's category is its index here).
        synsets: the synset of each category.
        shapes: ``(category index, file path)`` of every shape of the split, in the split files' order.

    Items are ``(points (npoints, 3 or 6) float32, category int, parts (npoints,) int64)``.

    Raises:
        FileNotFoundError: if the root, the category file, a split file or (when indexed) a shape's file is
            missing. ValueError / TypeError: for bad arguments or malformed files, naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "trainval",
        *,
        npoints: int = 2048,
        normals: bool = False,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        super().__init__()
        root_str = check_path("root", root, what="the ShapeNetPart folder")
        if not os.path.isdir(root_str):
            raise FileNotFoundError(f"ShapeNetPart root directory not found: {root_str}")
        self.split = check_choice("split", split, list(_SPLIT_FILES))
        self.npoints = check_int("npoints", npoints, 1)
        self.normals = check_bool("normals", normals)
        self.seed = check_int("seed", seed, 0)
        self.cache = check_bool("cache", cache)
        self.categories, self.synsets = self._read_categories(os.path.join(root_str, _CATEGORY_FILE))
        self.shapes = self._read_splits(root_str)
        if not self.shapes:
            raise ValueError(f"ShapeNetPart split {self.split!r} in {root_str} lists no shape")
        self._cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _read_categories(path: str) -> tuple[list[str], list[str]]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ShapeNetPart category file not found: {path}")
        names: list[str] = []
        synsets: list[str] = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.split()
                if len(fields) != 2 or fields[0] not in SHAPENET_PART_CATEGORIES:
                    raise ValueError(
                        f"{path}:{number}: expected 'Name<TAB>synset' with a ShapeNetPart category name "
                        f"({', '.join(SHAPENET_PART_CATEGORIES)}), got {line.strip()!r}"
                    )
                names.append(fields[0])
                synsets.append(fields[1])
        if not names:
            raise ValueError(f"{path}: names no category")
        return names, synsets

    def _read_splits(self, root: str) -> list[tuple[int, str]]:
        index = {synset: i for i, synset in enumerate(self.synsets)}
        shapes = []
        for part in _SPLIT_FILES[self.split]:
            path = os.path.join(root, "train_test_split", f"shuffled_{part}_file_list.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"ShapeNetPart split file not found: {path}")
            try:
                with open(path, encoding="utf-8") as f:
                    entries: Any = json.load(f)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: not a JSON list of shape names ({exc})") from None
            if not isinstance(entries, list):
                raise ValueError(
                    f"{path}: expected a JSON list of 'shape_data/<synset>/<token>', got {type(entries).__name__}"
                )
            for position, entry in enumerate(entries):
                fields = entry.split("/") if isinstance(entry, str) else []
                if len(fields) != 3 or fields[1] not in index:
                    raise ValueError(
                        f"{path}: entry {position} must be 'shape_data/<synset>/<token>' with a synset of "
                        f"{_CATEGORY_FILE}, got {entry!r}"
                    )
                shapes.append((index[fields[1]], os.path.join(root, fields[1], f"{fields[2]}.txt")))
        return shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def _read_shape(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        category, path = self.shapes[i]
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"ShapeNetPart shape {i} ({self.categories[category]}): file not found: {path}"
            )
        try:
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{path}: rows must be 7 numbers 'x y z nx ny nz part' ({exc})") from None
        if rows.shape[0] == 0 or rows.shape[1] != 7:
            raise ValueError(f"{path}: rows must be 7 numbers 'x y z nx ny nz part', got shape {rows.shape}")
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise ValueError(f"{path}: row {int(np.argmax(bad)) + 1} holds a non-finite value")
        parts = rows[:, 6]
        allowed = SHAPENET_PART_CATEGORIES[self.categories[category]]
        wrong = (parts != np.round(parts)) | ~np.isin(parts, allowed)
        if wrong.any():
            row = int(np.argmax(wrong))
            raise ValueError(
                f"{path}: row {row + 1} has part label {float(parts[row])}, not one of the "
                f"{self.categories[category]} parts {list(allowed)}"
            )
        # the whole shape into the unit sphere, before the sampling (as the reference loader)
        xyz = rows[:, :3] - rows[:, :3].mean(axis=0)
        scale = np.sqrt((xyz * xyz).sum(axis=1)).max()
        if scale == 0:
            raise ValueError(f"{path}: all points are equal (the cloud cannot be scaled)")
        points = np.concatenate([xyz / scale, rows[:, 3:6]], axis=1).astype(np.float32)
        return points, parts.astype(np.int64)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -len(self) <= i < len(self):
            raise IndexError(f"index {i!r} out of range for {len(self)} shapes")
        i = int(i) % len(self)
        shape = self._cached.get(i)
        if shape is None:
            shape = self._read_shape(i)
            if self.cache:
                self._cached[i] = shape
        points, parts = shape
        choice = np.random.default_rng((self.seed, i)).choice(len(parts), self.npoints, replace=True)
        chosen = points[choice]
        out = (
            np.concatenate([points[:, :3][choice], chosen[:, 3:]], axis=1) if self.normals else chosen[:, :3]
        )
        return torch.from_numpy(np.ascontiguousarray(out)), self.shapes[i][0], torch.from_numpy(parts[choice])
