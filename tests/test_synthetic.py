"""Tests for ``pointpeft.data.synthetic.SyntheticShapes``: determinism, shapes, normalisation, labels,
options and argument validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pointpeft.data.synthetic import SHAPE_NAMES, SyntheticShapes

P = 128  # points per item in most tests: small, so the whole file runs in about a second


def items(ds: SyntheticShapes, indices: range | list[int]) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in indices])


def assert_normalised(points: torch.Tensor) -> None:
    """Centroid at the origin and largest norm 1, for a cloud (P, 3)."""
    assert torch.allclose(points.mean(dim=0), torch.zeros(3), atol=1e-5)
    assert math.isclose(float(points.norm(dim=1).max()), 1.0, abs_tol=1e-5)


# --------------------------------------------------------------------------------------------------
# Items, labels, classes
# --------------------------------------------------------------------------------------------------


def test_items_have_the_documented_shapes_and_types():
    ds = SyntheticShapes(30, P)
    assert len(ds) == 30 and ds.num_classes == 10 and len(ds.classes) == 10
    for i in (0, 7, 29):
        points, label = ds[i]
        assert isinstance(points, torch.Tensor) and points.dtype == torch.float32
        assert points.shape == (P, 3) and points.is_contiguous()
        assert type(label) is int and label == i % 10
        assert torch.isfinite(points).all()


def test_defaults():
    ds = SyntheticShapes()
    assert (len(ds), ds.num_points, ds.num_classes, ds.seed) == (1000, 1024, 10, 0)
    assert ds[0][0].shape == (1024, 3)


def test_every_generator_makes_a_finite_normalised_cloud_of_its_class():
    assert len(SHAPE_NAMES) >= 12 and len(set(SHAPE_NAMES)) == len(SHAPE_NAMES)
    k = len(SHAPE_NAMES)
    ds = SyntheticShapes(k, P, num_classes=k)
    assert ds.classes == SHAPE_NAMES
    for i in range(k):
        points, label = ds[i]
        assert label == i and torch.isfinite(points).all()
        assert_normalised(points)


@pytest.mark.parametrize("num_classes", [2, 5, 10, len(SHAPE_NAMES)])
def test_labels_are_balanced_and_classes_are_the_first_generators(num_classes):
    ds = SyntheticShapes(6 * num_classes, 8, num_classes=num_classes)
    assert ds.classes == SHAPE_NAMES[:num_classes]
    labels = [ds.label(i) for i in range(len(ds))]
    assert labels == [i % num_classes for i in range(len(ds))]
    assert np.bincount(labels).tolist() == [6] * num_classes
    assert [ds[i][1] for i in range(num_classes)] == list(range(num_classes))


def test_same_class_means_the_same_shape_whatever_num_classes():
    # Item i's class follows i % num_classes; item 3 is a cone in both datasets.
    a, b = SyntheticShapes(20, P, num_classes=10), SyntheticShapes(20, P, num_classes=14)
    assert a[3][1] == b[3][1] == SHAPE_NAMES.index("cone")
    assert torch.equal(a[3][0], b[3][0])


def test_points_are_normalised():
    ds = SyntheticShapes(20, P, partial=0.3, clutter=0.2)
    for i in range(20):
        assert_normalised(ds[i][0])


def test_indexing():
    ds = SyntheticShapes(5, 16)
    assert torch.equal(ds[-1][0], ds[4][0]) and ds[-1][1] == ds[4][1]
    assert torch.equal(ds[np.int64(2)][0], ds[2][0])
    assert torch.equal(ds[torch.tensor(2)][0], ds[2][0])
    for bad in (5, -6):
        with pytest.raises(IndexError, match=rf"index must be in \[-5, 5\).*got {bad}"):
            ds[bad]
    with pytest.raises(TypeError, match="index must be an int, got float"):
        ds[1.0]
    assert [label for _, label in ds] == [0, 1, 2, 3, 4]  # iteration stops at the IndexError
    assert "SyntheticShapes(num_samples=5" in repr(ds)


def test_default_collate_batches_items():
    loader = torch.utils.data.DataLoader(SyntheticShapes(8, 32), batch_size=4)
    points, labels = next(iter(loader))
    assert points.shape == (4, 32, 3) and points.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_items_in_any_order():
    a, b = SyntheticShapes(12, P, seed=3), SyntheticShapes(12, P, seed=3)
    forward = items(a, range(12))
    backward = items(b, list(reversed(range(12))))
    assert torch.equal(forward, backward.flip(0))
    assert torch.equal(forward, items(a, range(12)))  # and again, after other items were generated


def test_a_cached_set_generates_each_item_once_and_gives_the_same_items(monkeypatch):
    plain, cached = SyntheticShapes(12, P, seed=3), SyntheticShapes(12, P, seed=3, cache=True)
    made = []
    real = SyntheticShapes._points

    def counting(self, index, label):
        made.append(index)
        return real(self, index, label)

    monkeypatch.setattr(SyntheticShapes, "_points", counting)
    first = [cached[i] for i in (5, 0, -1, 5)]
    first[0][0].add_(100.0)  # a caller changing its item in place leaves the cache as made
    again = [cached[i] for i in range(12)]
    assert sorted(set(made)) == list(range(12)) and len(made) == 12  # 5, 0, 11 once each, then the rest
    for i in range(12):
        expected = plain[i]
        assert torch.equal(again[i][0], expected[0]) and again[i][1] == expected[1]
    assert "cache=True" in repr(cached) and "cache" not in repr(plain)
    with pytest.raises(TypeError, match="cache"):
        SyntheticShapes(4, P, cache="yes")


def test_item_depends_only_on_seed_and_index_not_on_num_samples():
    assert torch.equal(SyntheticShapes(12, P, seed=3)[5][0], SyntheticShapes(500, P, seed=3)[5][0])


def test_different_seeds_and_items_differ():
    a, b = items(SyntheticShapes(10, P, seed=0), range(10)), items(SyntheticShapes(10, P, seed=1), range(10))
    assert not torch.equal(a, b)
    assert all(not torch.allclose(a[i], b[i], atol=1e-3) for i in range(10))
    twins = items(SyntheticShapes(20, P, seed=0), [0, 10])  # same class, different items
    assert not torch.allclose(twins[0], twins[1], atol=1e-3)


def test_global_random_state_does_not_matter():
    ds = SyntheticShapes(4, P)
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002
    first = ds[2][0]
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    assert torch.equal(first, ds[2][0])


@example(  # one point repeated: a partial view of 1 kept point, without noise
    seed=0,
    index=0,
    num_points=3,
    num_classes=2,
    noise=0.0,
    random_pose=False,
    nonuniform_density=False,
    partial=0.9,
    clutter=0.0,
)
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    index=st.integers(0, 99),
    num_points=st.integers(1, 40),
    num_classes=st.integers(2, len(SHAPE_NAMES)),
    noise=st.sampled_from([0.0, 0.01, 0.1]),
    random_pose=st.booleans(),
    nonuniform_density=st.booleans(),
    partial=st.sampled_from([0.0, 0.25, 0.9]),
    clutter=st.sampled_from([0.0, 0.1, 0.9]),
)
def test_any_options_give_deterministic_finite_normalised_items(seed, index, num_points, **options):
    kwargs = dict(seed=seed, **options)
    points, label = SyntheticShapes(100, num_points, **kwargs)[index]
    again, _ = SyntheticShapes(100, num_points, **kwargs)[index]
    assert torch.equal(points, again) and label == index % options["num_classes"]
    assert points.shape == (num_points, 3) and torch.isfinite(points).all()
    if torch.unique(points, dim=0).shape[0] > 1:
        assert_normalised(points)
    else:  # a single point, or one point repeated (tiny partial view, no noise): at the origin
        assert torch.equal(points, torch.zeros(num_points, 3))


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------

BASE = dict(noise=0.01, random_pose=True, scale_range=(0.7, 1.3), nonuniform_density=True)


@pytest.mark.parametrize(
    "change",
    [
        dict(noise=0.0),
        dict(noise=0.05),
        dict(random_pose=False),
        dict(scale_range=(1.0, 1.0)),
        dict(nonuniform_density=False),
        dict(partial=0.3),
        dict(clutter=0.2),
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_option_changes_the_data(change):
    base = items(SyntheticShapes(6, P, **BASE), range(6))
    changed = items(SyntheticShapes(6, P, **{**BASE, **change}), range(6))
    assert all(not torch.allclose(base[i], changed[i], atol=1e-4) for i in range(6))


def test_noise_only_adds_noise():
    # Each step draws from its own random stream, so the noiseless and noisy items are the same cloud.
    clean = items(SyntheticShapes(6, P, noise=0.0), range(6))
    noisy = items(SyntheticShapes(6, P, noise=0.01), range(6))
    diff = noisy - clean
    assert 0.003 < float(diff.std()) < 0.03 and float(diff.abs().max()) < 0.15


def test_random_pose_false_keeps_the_canonical_pose():
    disc = SHAPE_NAMES.index("disc")
    options = dict(noise=0.0, nonuniform_density=False)
    flat = SyntheticShapes(20, P, random_pose=False, **options)[disc][0]
    assert float(flat[:, 2].abs().max()) < 1e-6  # the disc lies in the xy plane
    posed = SyntheticShapes(20, P, random_pose=True, **options)[disc][0]
    assert float(posed[:, 2].abs().max()) > 0.1
    # A rotation keeps the shape: the sorted distances to the centroid are unchanged.
    assert torch.allclose(flat.norm(dim=1).sort().values, posed.norm(dim=1).sort().values, atol=1e-5)


def test_nonuniform_density_concentrates_points():
    sphere = SHAPE_NAMES.index("sphere")
    # On a uniformly sampled sphere the centroid is near the centre: all norms are close to the max.
    uniform = SyntheticShapes(20, 512, noise=0.0, nonuniform_density=False)[sphere][0].norm(dim=1)
    dense = [SyntheticShapes(20 * 10, 512, noise=0.0)[sphere + 10 * k][0].norm(dim=1) for k in range(5)]
    spread = [float(d.max() - d.min()) for d in dense]
    assert float(uniform.max() - uniform.min()) < min(spread)


def test_partial_drops_a_side_and_repeats_kept_points():
    n = 200
    full = SyntheticShapes(4, n, noise=0.0)
    part = SyntheticShapes(4, n, noise=0.0, partial=0.5)
    for i in range(4):
        assert torch.unique(full[i][0], dim=0).shape[0] == n
        assert torch.unique(part[i][0], dim=0).shape[0] == n - math.floor(0.5 * n)


def test_clutter_replaces_points_by_background():
    sphere = SHAPE_NAMES.index("sphere")
    clean = SyntheticShapes(20, 512, noise=0.0, nonuniform_density=False)[sphere][0].norm(dim=1)
    cluttered = SyntheticShapes(20, 512, noise=0.0, nonuniform_density=False, clutter=0.3)[sphere][0]
    assert float(clean.min()) > 0.75  # only the mild anisotropy moves points off the unit sphere
    radial = cluttered.norm(dim=1)
    # The sphere is now a shell inside the cluttered bounding box, with background points around it.
    assert float(radial.min()) < 0.4
    assert_normalised(cluttered)


# --------------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(num_samples=0), ValueError, r"num_samples must be an int >= 1, got 0"),
        (dict(num_samples=2.0), TypeError, r"num_samples must be an int >= 1, got float 2\.0"),
        (dict(num_points=0), ValueError, r"num_points must be an int >= 1, got 0"),
        (dict(num_points="8"), TypeError, r"num_points must be an int >= 1, got str '8'"),
        (dict(num_classes=1), ValueError, r"num_classes must be an int in \[2, 14\], got 1"),
        (dict(num_classes=15), ValueError, r"num_classes must be an int in \[2, 14\], got 15"),
        (dict(num_classes=True), TypeError, r"num_classes must be an int in \[2, 14\], got bool True"),
        (dict(seed=-1), ValueError, r"seed must be an int >= 0, got -1"),
        (dict(seed=None), TypeError, r"seed must be an int >= 0, got NoneType None"),
        (dict(noise=-0.1), ValueError, r"noise must be a finite float >= 0, got -0\.1"),
        (dict(noise=float("nan")), ValueError, r"noise must be a finite float >= 0, got nan"),
        (dict(noise="0.1"), TypeError, r"noise must be a finite float >= 0, got str '0\.1'"),
        (dict(random_pose=1), TypeError, r"random_pose must be a bool, got int 1"),
        (dict(nonuniform_density="yes"), TypeError, r"nonuniform_density must be a bool, got str 'yes'"),
        (dict(scale_range=1.0), TypeError, r"scale_range must be a pair \(low, high\).*got float 1\.0"),
        (dict(scale_range=(1.0, 2.0, 3.0)), TypeError, r"scale_range must be a pair.*got tuple"),
        (dict(scale_range=(0.0, 1.0)), ValueError, r"scale_range must be .*0 < low <= high, got 0\.0"),
        (dict(scale_range=(1.3, 0.7)), ValueError, r"scale_range must be .*got \(1\.3, 0\.7\)"),
        (dict(scale_range=(1.0, float("inf"))), ValueError, r"scale_range must be .*got inf"),
        (dict(partial=1.0), ValueError, r"partial must be a float in \[0, 1\), got 1\.0"),
        (dict(partial=-0.1), ValueError, r"partial must be a float in \[0, 1\), got -0\.1"),
        (dict(clutter=1), ValueError, r"clutter must be a float in \[0, 1\), got 1\.0"),
        (dict(clutter=None), TypeError, r"clutter must be a float in \[0, 1\), got NoneType None"),
    ],
)
def test_invalid_arguments_are_rejected_with_a_clear_message(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        SyntheticShapes(**kwargs)


def test_numpy_scalars_are_accepted():
    ds = SyntheticShapes(
        np.int64(4), np.int32(16), seed=np.uint8(2), noise=np.float32(0.01), random_pose=np.bool_(True)
    )
    assert len(ds) == 4 and ds[0][0].shape == (16, 3)
