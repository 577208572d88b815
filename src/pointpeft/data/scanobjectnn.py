"""ScanObjectNN (OBJ_BG, OBJ_ONLY, PB_T50_RS) read from the HDF5 files of the Point-MAE family.

Each file holds ``data`` (float, (M, P, 3), P = 2048 in the released files) and ``label`` (int, (M,)
or (M, 1), values 0..14). Points are returned as stored (raw xyz, no normalisation), as the reference
loader does; sampling and augmentation happen per batch (see :mod:`pointpeft.data.transforms`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SCANOBJECTNN_FILES", "ScanObjectNN"]

#: The file of each variant and split, relative to the dataset root.
SCANOBJECTNN_FILES: dict[str, dict[str, str]] = {
    "OBJ_BG": {
        "train": "main_split/training_objectdataset.h5",
        "test": "main_split/test_objectdataset.h5",
    },
    "OBJ_ONLY": {
        "train": "main_split_nobg/training_objectdataset.h5",
        "test": "main_split_nobg/test_objectdataset.h5",
    },
    "PB_T50_RS": {
        "train": "main_split/training_objectdataset_augmentedrot_scale75.h5",
        "test": "main_split/test_objectdataset_augmentedrot_scale75.h5",
    },
}

_SPLITS = ("train", "test")


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "reading ScanObjectNN needs h5py: pip install 'pointpeft[data]' (or pip install h5py)"
        ) from exc
    return h5py


def _bad_values(values: np.ndarray, limit: int = 10) -> str:
    uniq = np.unique(values)
    shown = ", ".join(str(v) for v in uniq[:limit].tolist())
    return shown + (f", ... ({uniq.size} distinct)" if uniq.size > limit else "")


class ScanObjectNN(Dataset):
    """ScanObjectNN classification (15 classes) from the Point-MAE family's HDF5 files.

    Args:
        root: the dataset root, containing ``main_split/`` (OBJ_BG, PB_T50_RS) and/or
            ``main_split_nobg/`` (OBJ_ONLY); see :data:`SCANOBJECTNN_FILES`.
        variant: ``"OBJ_BG"``, ``"OBJ_ONLY"`` or ``"PB_T50_RS"`` (case-insensitive).
        split: ``"train"`` or ``"test"``.

    Attributes:
        num_classes: 15.
        variant, split: the arguments (``variant`` upper-cased).
        path: the HDF5 file read.
        points: FloatTensor (M, P, 3), float32, raw xyz (P = 2048 in the released files).
        labels: LongTensor (M,), values in [0, 15).

    Items are ``(points (P, 3) float32 tensor, label int)``.

    Raises:
        ValueError: on a bad ``variant`` or ``split``, or a file with missing keys, wrong shapes,
            non-numeric or non-finite points, or labels that are not integers in [0, 15); the message
            names the file.
        FileNotFoundError: if the file of ``variant``/``split`` does not exist.
        ImportError: if h5py is not installed.
    """

    num_classes = 15

    def __init__(self, root: str | os.PathLike[str], variant: str = "OBJ_BG", split: str = "train") -> None:
        super().__init__()
        if not isinstance(variant, str) or variant.upper() not in SCANOBJECTNN_FILES:
            raise ValueError(
                f"variant must be one of {list(SCANOBJECTNN_FILES)} (case-insensitive), got {variant!r}"
            )
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
        self.variant = variant.upper()
        self.split = split
        root_str = os.fspath(root)
        self.path = os.path.join(root_str, SCANOBJECTNN_FILES[self.variant][split])
        if not os.path.isfile(self.path):
            where = "" if os.path.isdir(root_str) else f" (the root directory {root_str} does not exist)"
            raise FileNotFoundError(
                f"ScanObjectNN {self.variant} {split} split: file not found: {self.path}{where}"
            )
        points, labels = self._read(self.path)
        self.points: torch.Tensor = torch.from_numpy(points)
        self.labels: torch.Tensor = torch.from_numpy(labels)

    @classmethod
    def _read(cls, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Read and validate one file: float32 points (M, P, 3) and int64 labels (M,)."""
        h5py = _import_h5py()
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise ValueError(f"{path}: cannot be read as an HDF5 file ({exc})") from exc
        with f:
            keys = sorted(f.keys())
            missing = [k for k in ("data", "label") if k not in f or not isinstance(f[k], h5py.Dataset)]
            if missing:
                raise ValueError(
                    f"{path}: expected HDF5 datasets 'data' and 'label', missing {missing}; keys found: {keys}"
                )
            data_ds, label_ds = f["data"], f["label"]
            for name, ds in (("data", data_ds), ("label", label_ds)):
                if ds.dtype.kind not in "biuf":
                    raise ValueError(f"{path}: '{name}' must be numeric, got dtype {ds.dtype}")
            if data_ds.ndim != 3 or data_ds.shape[2] != 3:
                raise ValueError(f"{path}: 'data' must have shape (M, P, 3), got {tuple(data_ds.shape)}")
            m = data_ds.shape[0]
            if label_ds.shape not in ((m,), (m, 1)):
                raise ValueError(
                    f"{path}: 'label' must have shape ({m},) or ({m}, 1) to match 'data' of shape "
                    f"{tuple(data_ds.shape)}, got {tuple(label_ds.shape)}"
                )
            points = np.asarray(data_ds[()], dtype=np.float32)
            raw_labels = np.asarray(label_ds[()]).reshape(m)

        finite = np.isfinite(points).all(axis=(1, 2))
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(
                f"{path}: 'data' holds non-finite coordinates (NaN or inf, or values too large for "
                f"float32) in {bad.size} object(s), first at indices {bad[:10].tolist()}"
            )
        if raw_labels.dtype.kind == "f":
            not_int = ~np.isfinite(raw_labels) | (raw_labels != np.round(raw_labels))
            if not_int.any():
                raise ValueError(
                    f"{path}: 'label' must hold integers, got {_bad_values(raw_labels[not_int])}"
                )
        if m and (raw_labels.min() < 0 or raw_labels.max() >= cls.num_classes):
            out = raw_labels[(raw_labels < 0) | (raw_labels >= cls.num_classes)]
            raise ValueError(
                f"{path}: labels must be in [0, {cls.num_classes}), got out-of-range values {_bad_values(out)}"
            )
        return np.ascontiguousarray(points), raw_labels.astype(np.int64)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Object ``index``: ``(points (P, 3) float32, label int)``."""
        return self.points[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(variant={self.variant!r}, split={self.split!r}, size={len(self)}, "
            f"num_points={self.points.shape[1]})"
        )
