"""Part segmentation: Point-MAE's segmentation model (:class:`PointMAESegmentation`) and the ShapeNetPart
metrics (instance and class mIoU). DAPT on it, its training loop and a synthetic part-labelled set are not
written yet."""

from pointpeft.segmentation.metrics import SHAPENET_PART_CATEGORIES, PartIoU, part_iou, part_predictions
from pointpeft.segmentation.model import FeaturePropagation, PointMAESegmentation

__all__ = [
    "SHAPENET_PART_CATEGORIES",
    "FeaturePropagation",
    "PartIoU",
    "PointMAESegmentation",
    "part_iou",
    "part_predictions",
]
