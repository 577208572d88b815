"""Part segmentation: the ShapeNetPart metrics (instance and class mIoU). The segmentation model, loader and
training are not written yet."""

from pointpeft.segmentation.metrics import SHAPENET_PART_CATEGORIES, PartIoU, part_iou, part_predictions

__all__ = ["SHAPENET_PART_CATEGORIES", "PartIoU", "part_iou", "part_predictions"]
