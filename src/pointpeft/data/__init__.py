"""Datasets (ScanObjectNN, ModelNet40, ModelNet40 few-shot, synthetic shapes) and the reference's point
sampling and augmentation.

Every dataset item is ``(points (P, 3) float32, label int)``. Files are validated when opened; a missing
file, wrong keys, wrong shapes or out-of-range labels raise an error that names the file. Pickled files
(the ModelNet40 caches) are read with a restricted unpickler that runs no code.
"""

from pointpeft.data.modelnet import ModelNet40, ModelNet40FewShot
from pointpeft.data.scanobjectnn import ScanObjectNN
from pointpeft.data.synthetic import SyntheticShapes
from pointpeft.data.transforms import (
    ScaleAndTranslate,
    point_all_for,
    sample_test_points,
    sample_train_points,
    vote_logits,
)

__all__ = [
    "ModelNet40",
    "ModelNet40FewShot",
    "ScaleAndTranslate",
    "ScanObjectNN",
    "SyntheticShapes",
    "point_all_for",
    "sample_test_points",
    "sample_train_points",
    "vote_logits",
]
