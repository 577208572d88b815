"""Datasets (ScanObjectNN, ModelNet40, ModelNet40 few-shot, synthetic shapes) and the reference's point
sampling and augmentation.

Every dataset item is ``(points (P, 3) float32, label int)``. Files are validated when opened, before
anything of a size they declare is allocated: a missing file raises ``FileNotFoundError``; a corrupt,
truncated or forged file, one that declares more data than it stores, an empty set (no objects, no
points, fewer points than asked for), wrong keys, shapes or dtypes, non-finite points and labels that are
not integers in range raise a ``ValueError`` that names the file and, where there is one, the dataset and
the index of the first bad cloud or label. Pickled files (the ModelNet40 caches) are read with a
restricted unpickler that runs no code and rebuilds only plain numpy arrays; its errors are
:class:`PickleFileError` (a ``ValueError``). The shared checks are in :mod:`pointpeft.data.checks`.
"""

from pointpeft.data.modelnet import ModelNet40, ModelNet40FewShot
from pointpeft.data.safe_pickle import PickleFileError
from pointpeft.data.scanobjectnn import ScanObjectNN
from pointpeft.data.shapenetpart import ShapeNetPart
from pointpeft.data.synthetic import SyntheticShapes
from pointpeft.data.synthetic_parts import SYNTHETIC_PART_CATEGORIES, SyntheticParts
from pointpeft.data.transforms import (
    RotateAboutY,
    ScaleAndTranslate,
    point_all_for,
    sample_test_points,
    sample_train_points,
    vote_logits,
)

__all__ = [
    "SYNTHETIC_PART_CATEGORIES",
    "ModelNet40",
    "ModelNet40FewShot",
    "PickleFileError",
    "RotateAboutY",
    "ScaleAndTranslate",
    "ScanObjectNN",
    "ShapeNetPart",
    "SyntheticParts",
    "SyntheticShapes",
    "point_all_for",
    "sample_test_points",
    "sample_train_points",
    "vote_logits",
]
