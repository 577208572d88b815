"""Part-segmentation metrics of the ShapeNetPart protocol: instance mIoU and class mIoU.

For a shape of category ``c`` the IoU of each part ``l`` of ``c`` is ``|pred = l and label = l| /
|pred = l or label = l|``, and 1 where the part is in neither the prediction nor the label; the shape's IoU
is the mean over the parts of ``c``. Instance mIoU is the mean of the shapes' IoUs; class mIoU the mean over
categories of the mean shape IoU within each (categories with no shape are left out). Predictions are
taken among the parts of the shape's category only (:func:`part_predictions`), as the standard test does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

#: The 16 ShapeNetPart categories and their part labels (50 in all), in the standard order.
SHAPENET_PART_CATEGORIES: dict[str, tuple[int, ...]] = {
    "Airplane": (0, 1, 2, 3),
    "Bag": (4, 5),
    "Cap": (6, 7),
    "Car": (8, 9, 10, 11),
    "Chair": (12, 13, 14, 15),
    "Earphone": (16, 17, 18),
    "Guitar": (19, 20, 21),
    "Knife": (22, 23),
    "Lamp": (24, 25, 26, 27),
    "Laptop": (28, 29),
    "Motorbike": (30, 31, 32, 33, 34, 35),
    "Mug": (36, 37),
    "Pistol": (38, 39, 40),
    "Rocket": (41, 42, 43),
    "Skateboard": (44, 45, 46),
    "Table": (47, 48, 49),
}


@dataclass
class PartIoU:
    """The ShapeNetPart metrics of a set of shapes.

    Attributes:
        instance_miou: mean over shapes of the shape IoU (a fraction in [0, 1]).
        class_miou: mean over the categories present of their mean shape IoU.
        per_category: ``{category name: mean shape IoU}`` for the categories present.
        shape_ious: ``(S,)`` float64, each shape's IoU.
    """

    instance_miou: float
    class_miou: float
    per_category: dict[str, float]
    shape_ious: torch.Tensor


def _category_parts(categories: Mapping[str, Sequence[int]]) -> list[tuple[str, tuple[int, ...]]]:
    if not isinstance(categories, Mapping) or not categories:
        raise TypeError(f"categories must be a non-empty mapping of names to part labels, got {categories!r}")
    out = []
    for name, parts in categories.items():
        parts = tuple(parts)
        if not parts or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in parts):
            raise ValueError(
                f"categories[{name!r}] must be a non-empty list of part labels >= 0, got {parts!r}"
            )
        out.append((name, parts))
    return out


def _check_labels(name: str, t: object, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32):
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name} must be an int64 or int32 tensor, got {got}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t.long()


def part_predictions(
    logits: torch.Tensor,
    category: torch.Tensor,
    categories: Mapping[str, Sequence[int]] = SHAPENET_PART_CATEGORIES,
) -> torch.Tensor:
    """The predicted part of every point, taken among the parts of its shape's category.

    Args:
        logits: ``(S, N, P)`` floating scores over all P part labels.
        category: ``(S,)`` int, each shape's category as its index in ``categories``.
        categories: category name → its part labels (default: ShapeNetPart's).

    Returns:
        ``(S, N)`` int64 part labels.
    """
    named = _category_parts(categories)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 3:
        raise ValueError(
            f"logits must be a floating (S, N, P) tensor, got {getattr(logits, 'shape', logits)!r}"
        )
    category = _check_labels("category", category, (logits.shape[0],))
    largest = max(p for _, parts in named for p in parts)
    if logits.shape[2] <= largest:
        raise ValueError(
            f"logits has {logits.shape[2]} part scores, the categories use labels up to {largest}"
        )
    if category.numel() and (category.min() < 0 or category.max() >= len(named)):
        raise ValueError(f"category must hold indices in [0, {len(named)}), got {category.tolist()}")
    allowed = torch.zeros(len(named), logits.shape[2], dtype=torch.bool, device=logits.device)
    for index, (_, parts) in enumerate(named):
        allowed[index, list(parts)] = True
    masked = logits.masked_fill(~allowed[category.to(logits.device)].unsqueeze(1), float("-inf"))
    return masked.argmax(dim=2)


def part_iou(
    predicted: torch.Tensor,
    labels: torch.Tensor,
    category: torch.Tensor,
    categories: Mapping[str, Sequence[int]] = SHAPENET_PART_CATEGORIES,
) -> PartIoU:
    """Instance and class mIoU of predicted part labels.

    Args:
        predicted: ``(S, N)`` int part labels (e.g. from :func:`part_predictions`).
        labels: ``(S, N)`` int true part labels.
        category: ``(S,)`` int, each shape's category as its index in ``categories``.
        categories: category name → its part labels (default: ShapeNetPart's).

    Returns:
        a :class:`PartIoU`.

    Raises:
        TypeError / ValueError: naming the argument, for non-integer tensors, shapes that differ, no shape,
            category indices out of range, or a true label that is not a part of its shape's category.
    """
    named = _category_parts(categories)
    predicted = _check_labels("predicted", predicted)
    if predicted.dim() != 2 or predicted.shape[0] == 0:
        raise ValueError(f"predicted must have shape (S, N) with S >= 1, got {tuple(predicted.shape)}")
    labels = _check_labels("labels", labels, tuple(predicted.shape)).to(predicted.device)
    category = _check_labels("category", category, (predicted.shape[0],)).to(predicted.device)
    if category.min() < 0 or category.max() >= len(named):
        raise ValueError(f"category must hold indices in [0, {len(named)}), got {category.tolist()}")
    ious = torch.empty(predicted.shape[0], dtype=torch.float64)
    for shape, cat in enumerate(category.tolist()):
        name, parts = named[cat]
        part_list = torch.tensor(parts, device=labels.device)
        if not torch.isin(labels[shape], part_list).all():
            raise ValueError(f"labels of shape {shape} ({name}) hold labels outside its parts {list(parts)}")
        pred = predicted[shape].unsqueeze(0) == part_list.unsqueeze(1)  # (parts, N)
        true = labels[shape].unsqueeze(0) == part_list.unsqueeze(1)
        union = (pred | true).sum(dim=1).double()
        inter = (pred & true).sum(dim=1).double()
        per_part = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        ious[shape] = per_part.mean().cpu()
    per_category = {}
    for index, (name, _) in enumerate(named):
        mine = ious[(category == index).cpu()]
        if mine.numel():
            per_category[name] = mine.mean().item()
    return PartIoU(
        instance_miou=ious.mean().item(),
        class_miou=sum(per_category.values()) / len(per_category),
        per_category=per_category,
        shape_ious=ious,
    )
