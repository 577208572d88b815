"""The ShapeNetPart metrics: hand-worked cases, a Python twin on random shapes, predictions restricted to
the shape's category, bad input refused naming it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pointpeft.segmentation import SHAPENET_PART_CATEGORIES, part_iou, part_predictions

TWO = {"A": (0, 1), "B": (2, 3, 4)}


def test_hand_worked_instance_and_class_miou():
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 3, 3]])
    predicted = torch.tensor([[0, 1, 1, 1], [2, 2, 2, 2], [4, 4, 4, 4]])
    result = part_iou(predicted, labels, torch.tensor([0, 1, 1]), TWO)
    # shape 0: part 0 1/2, part 1 2/3; shape 1: part 2 exact, parts 3 and 4 in neither (1 each); shape 2: 0
    expected = [(1 / 2 + 2 / 3) / 2, 1.0, 0.0]
    assert result.shape_ious.tolist() == pytest.approx(expected, abs=1e-12)
    assert result.instance_miou == pytest.approx(sum(expected) / 3, abs=1e-12)
    assert result.per_category == pytest.approx({"A": expected[0], "B": 0.5}, abs=1e-12)
    assert result.class_miou == pytest.approx((expected[0] + 0.5) / 2, abs=1e-12)


def test_shapenet_part_has_16_categories_of_50_parts():
    parts = [p for ps in SHAPENET_PART_CATEGORIES.values() for p in ps]
    assert len(SHAPENET_PART_CATEGORIES) == 16 and sorted(parts) == list(range(50))


def _twin(predicted, labels, category, categories):
    named = list(categories.items())
    ious = []
    for pred, true, cat in zip(predicted.tolist(), labels.tolist(), category.tolist(), strict=True):
        parts = named[cat][1]
        per_part = []
        for part in parts:
            inter = sum(1 for p, t in zip(pred, true, strict=True) if p == part and t == part)
            union = sum(1 for p, t in zip(pred, true, strict=True) if p == part or t == part)
            per_part.append(1.0 if union == 0 else inter / union)
        ious.append(sum(per_part) / len(per_part))
    by_cat = {}
    for iou, cat in zip(ious, category.tolist(), strict=True):
        by_cat.setdefault(named[cat][0], []).append(iou)
    means = {k: sum(v) / len(v) for k, v in by_cat.items()}
    return sum(ious) / len(ious), sum(means.values()) / len(means)


@settings(max_examples=40, deadline=None)
@given(shapes=st.integers(1, 6), points=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_part_iou_matches_a_python_loop(shapes, points, seed):
    g = torch.Generator().manual_seed(seed)
    names = list(SHAPENET_PART_CATEGORIES)
    category = torch.randint(0, len(names), (shapes,), generator=g)
    labels = torch.empty(shapes, points, dtype=torch.long)
    for s in range(shapes):
        parts = torch.tensor(SHAPENET_PART_CATEGORIES[names[category[s]]])
        labels[s] = parts[torch.randint(0, len(parts), (points,), generator=g)]
    logits = torch.randn(shapes, points, 50, generator=g)
    predicted = part_predictions(logits, category)
    instance, klass = _twin(predicted, labels, category, SHAPENET_PART_CATEGORIES)
    result = part_iou(predicted, labels, category)
    assert result.instance_miou == pytest.approx(instance, abs=1e-12)
    assert result.class_miou == pytest.approx(klass, abs=1e-12)
    # every prediction is a part of its shape's category, the best-scoring one of them
    for s in range(shapes):
        parts = list(SHAPENET_PART_CATEGORIES[names[category[s]]])
        assert torch.equal(predicted[s], torch.tensor(parts)[logits[s][:, parts].argmax(dim=1)])


def test_bad_input_is_refused_naming_it():
    ok = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(TypeError, match=r"predicted must be an int64 or int32 tensor, got torch.float32"):
        part_iou(ok.float(), ok, torch.zeros(2, dtype=torch.long), TWO)
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 4\), got \(2, 3\)"):
        part_iou(ok, ok[:, :3], torch.zeros(2, dtype=torch.long), TWO)
    with pytest.raises(ValueError, match=r"category must hold indices in \[0, 2\)"):
        part_iou(ok, ok, torch.tensor([0, 2]), TWO)
    with pytest.raises(
        ValueError, match=r"labels of shape 1 \(B\) hold labels outside its parts \[2, 3, 4\]"
    ):
        part_iou(ok, ok, torch.tensor([0, 1]), TWO)
    with pytest.raises(ValueError, match=r"logits has 4 part scores, the categories use labels up to 4"):
        part_predictions(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), TWO)
