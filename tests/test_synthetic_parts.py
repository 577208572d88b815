"""Synthetic part-labelled shapes: items like ShapeNetPart's, labels among the category's parts, every part
present, deterministic, normalised, and the parts where their geometry puts them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pointpeft.data import SYNTHETIC_PART_CATEGORIES, SyntheticParts
from pointpeft.segmentation import part_iou


@settings(max_examples=20, deadline=None)
@given(index=st.integers(0, 50), points=st.integers(8, 300), seed=st.integers(0, 1000), pose=st.booleans())
def test_items_hold_every_part_of_their_category(index, points, seed, pose):
    data = SyntheticParts(60, points, seed=seed, random_pose=pose)
    cloud, category, parts = data[index]
    assert cloud.shape == (points, 3) and cloud.dtype == torch.float32 and parts.shape == (points,)
    assert category == index % 3
    assert set(parts.tolist()) == set(SYNTHETIC_PART_CATEGORIES[data.categories[category]])
    assert cloud.norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)
    assert cloud.mean(0).abs().max().item() < 1e-5
    again = data[index]
    assert torch.equal(again[0], cloud) and torch.equal(again[2], parts)
    assert not torch.equal(SyntheticParts(60, points, seed=seed + 1, random_pose=pose)[index][0], cloud)


def test_parts_sit_where_their_geometry_puts_them():
    data = SyntheticParts(30, 512, random_pose=False, noise=0.0)
    for i in range(30):
        cloud, category, parts = data[i]
        height = {p: cloud[parts == p, 1].mean().item() for p in parts.unique().tolist()}
        if category == 0:
            assert height[0] > height[1]  # the top above the legs
        elif category == 2:
            assert height[6] > height[5] > height[4]  # shade above the pole above the base
        else:
            assert cloud[parts == 3, 0].mean() > cloud[parts == 2, 0].mean()  # the handle beside the body
    # a rule on the height alone already separates the lamp's parts well: the labels carry the geometry
    clouds, categories, labels = zip(*(data[i] for i in range(2, 30, 3)), strict=True)
    cloud, label = torch.stack(clouds), torch.stack(labels)
    y = cloud[..., 1]
    guess = torch.where(
        y < y.amin(1, keepdim=True) + 0.05, 4, torch.where(y > y.quantile(0.55, dim=1, keepdim=True), 6, 5)
    )
    parts = {"A": (0, 1), "B": (2, 3), "Lamp": (4, 5, 6)}
    assert part_iou(guess, label, torch.full((len(clouds),), 2), parts).instance_miou > 0.6


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"num_points"):
        SyntheticParts(10, 4)
    with pytest.raises(ValueError, match=r"noise must be a float in \[0, 1\]"):
        SyntheticParts(10, 64, noise=2.0)
    with pytest.raises(IndexError, match=r"index 10 out of range for 10 shapes"):
        SyntheticParts(10, 64)[10]
