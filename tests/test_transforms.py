"""Tests for ``pointpeft.data.transforms``: the reference's batch sampling, augmentation and voting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pointpeft.data.transforms import (
    DEFAULT_VOTE_TRANSFORM,
    RotateAboutY,
    ScaleAndTranslate,
    point_all_for,
    sample_test_points,
    sample_train_points,
    vote_logits,
)
from pointpeft.ops import farthest_point_sample


def cloud(batch: int = 3, n: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, 3, generator=gen, dtype=dtype) * 2 - 1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def positions_in(sub: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """For (B, M, 3) points ``sub`` that are points of ``pool`` (B, P, 3), their positions (B, M) in it."""
    match = (sub[:, :, None, :] == pool[:, None, :, :]).all(dim=-1)  # (B, M, P)
    assert bool((match.sum(dim=-1) == 1).all()), "every point must be exactly one point of the pool"
    return match.int().argmax(dim=-1)


# --------------------------------------------------------------------------------------------------
# RotateAboutY
# --------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(0, 5), n=st.integers(1, 20), seed=st.integers(0, 2**32), double=st.booleans())
def test_rotate_about_y_is_the_released_matrix_per_cloud(batch, n, seed, double):
    """Each cloud b is ``points[b] @ [[c, 0, s], [0, 1, 0], [-s, 0, c]]`` for its own angle, written out
    with Python's math per point: y is kept, distances to the y axis are kept, the input is not changed."""
    import math

    dtype = torch.float64 if double else torch.float32
    points = cloud(batch, n, seed, dtype)
    before = points.clone()
    out = RotateAboutY()(points, generator=gen(seed))
    assert out.shape == points.shape and out.dtype == dtype and torch.equal(points, before)
    angles = (2 * math.pi * torch.rand(batch, generator=gen(seed), dtype=torch.float64)).tolist()
    for b, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        for i in range(n):
            x, y, z = points[b, i].tolist()
            expected = [x * c - z * s, y, x * s + z * c]
            assert out[b, i].tolist() == pytest.approx(expected, abs=1e-6 if not double else 1e-12)


def test_rotate_about_y_draws_per_cloud_and_is_seeded():
    points = torch.tensor([[[1.0, 0.5, 0.0]]]).expand(16, 1, 3).contiguous()
    out = RotateAboutY()(points, generator=gen(3))
    assert torch.equal(out, RotateAboutY()(points, generator=gen(3)))
    assert len({round(v, 6) for v in out[:, 0, 0].tolist()}) == 16  # every cloud its own angle
    assert torch.equal(out[:, 0, 1], points[:, 0, 1])
    assert repr(RotateAboutY()) == "RotateAboutY()"
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        RotateAboutY()(torch.zeros(2, 3))


# --------------------------------------------------------------------------------------------------
# ScaleAndTranslate
# --------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(0, 5),
    n=st.integers(2, 20),
    low=st.floats(0.1, 2.0),
    width=st.floats(0.0, 2.0),
    translate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_scale_and_translate_is_a_per_sample_affine_map_in_range(batch, n, low, width, translate, seed):
    transform = ScaleAndTranslate(low, low + width, translate)
    points = cloud(batch, n, seed)
    points[:, 0] = 0.0  # the image of the origin is the translation
    points[:, 1] = 1.0  # the image of (1, 1, 1) minus the translation is the scale
    out = transform(points, generator=gen(seed))
    assert out.shape == points.shape and out.dtype == points.dtype
    shift = out[:, 0]  # (B, 3)
    scale = out[:, 1] - shift
    eps = 1e-5
    assert bool((scale >= low - eps).all() and (scale <= low + width + eps).all())
    assert bool((shift.abs() <= translate + eps).all())
    assert torch.allclose(out, points * scale[:, None] + shift[:, None], atol=1e-5)


def test_scale_and_translate_defaults_are_the_reference_ones():
    transform = ScaleAndTranslate()
    assert (transform.scale_low, transform.scale_high, transform.translate) == (2 / 3, 3 / 2, 0.2)
    assert "ScaleAndTranslate(scale_low=0.666" in repr(transform)
    assert isinstance(DEFAULT_VOTE_TRANSFORM, ScaleAndTranslate)
    assert repr(DEFAULT_VOTE_TRANSFORM) == repr(transform)


def test_scale_and_translate_draws_differ_per_sample_and_axis_and_are_seeded():
    transform = ScaleAndTranslate()
    points = torch.ones(8, 5, 3)
    out = transform(points, generator=gen(1))
    assert torch.equal(out, transform(points, generator=gen(1)))
    assert not torch.equal(out, transform(points, generator=gen(2)))
    per_sample = out[:, 0]  # (B, 3): scale + shift of every sample
    assert len(set(per_sample[:, 0].tolist())) == 8  # every sample its own draw
    assert all(len(set(row.tolist())) == 3 for row in per_sample)  # anisotropic
    torch.manual_seed(0)
    a = transform(points)
    torch.manual_seed(0)
    assert torch.equal(a, transform(points))  # without a generator: torch's global random state


def test_scale_and_translate_keeps_dtype_and_input():
    points = cloud(2, 10, dtype=torch.float64)
    before = points.clone()
    out = ScaleAndTranslate()(points, generator=gen())
    assert out.dtype == torch.float64 and torch.equal(points, before)
    identity = ScaleAndTranslate(1.0, 1.0, 0.0)
    assert torch.equal(identity(points, generator=gen()), points)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(scale_low=0.0), ValueError, r"scale_low must be a finite float > 0, got 0\.0"),
        (dict(scale_low="1"), TypeError, r"scale_low must be a finite float > 0, got str '1'"),
        (dict(scale_low=1.0, scale_high=0.5), ValueError, r"scale_high must be a finite float >= scale_low"),
        (dict(scale_high=float("inf")), ValueError, r"scale_high must be .*got inf"),
        (dict(translate=-0.1), ValueError, r"translate must be a finite float >= 0, got -0\.1"),
        (dict(translate=None), TypeError, r"translate must be a finite float >= 0, got NoneType"),
    ],
)
def test_scale_and_translate_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ScaleAndTranslate(**kwargs)


@pytest.mark.parametrize(
    "points, kwargs, error, pattern",
    [
        ([[[0.0, 0.0, 0.0]]], {}, TypeError, r"points must be a torch.Tensor of shape \(B, N, 3\), got list"),
        (torch.zeros(2, 4, 3, dtype=torch.int64), {}, TypeError, r"points must have a floating-point dtype"),
        (torch.zeros(4, 3), {}, ValueError, r"points must have shape \(B, N, 3\), got \(4, 3\)"),
        (torch.zeros(2, 4, 2), {}, ValueError, r"points must have shape \(B, N, 3\), got \(2, 4, 2\)"),
        (torch.zeros(2, 4, 3), dict(generator=0), TypeError, r"generator must be None or a torch.Generator"),
    ],
)
def test_scale_and_translate_rejects_bad_inputs(points, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ScaleAndTranslate()(points, **kwargs)


# --------------------------------------------------------------------------------------------------
# point_all_for
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "npoints, available, expected",
    [
        (1024, 8192, 1200),
        (2048, 8192, 2400),
        (4096, 10000, 4800),
        (8192, 10000, 8192),
        (256, 8192, 307),  # extension: round(1.2 * npoints)
        (100, 8192, 120),
        (1, 8192, 1),
        (1024, 1100, 1100),  # capped at the points available
        (1024, 1000, 1000),
    ],
)
def test_point_all_for(npoints, available, expected):
    assert point_all_for(npoints, available) == expected


@pytest.mark.parametrize(
    "args, error, pattern",
    [
        ((0, 10), ValueError, r"npoints must be an int >= 1, got 0"),
        ((10, 0), ValueError, r"num_available must be an int >= 1, got 0"),
        ((10.0, 10), TypeError, r"npoints must be an int >= 1, got float 10\.0"),
        ((10, True), TypeError, r"num_available must be an int >= 1, got bool True"),
    ],
)
def test_point_all_for_rejects_bad_arguments(args, error, pattern):
    with pytest.raises(error, match=pattern):
        point_all_for(*args)


# --------------------------------------------------------------------------------------------------
# sample_train_points / sample_test_points
# --------------------------------------------------------------------------------------------------


def test_sample_train_points_is_a_shared_random_subset_of_the_fps_points():
    points = cloud(4, 80)
    out = sample_train_points(points, 20, 50, generator=gen(3))
    assert out.shape == (4, 20, 3) and out.dtype == points.dtype
    fps_points = torch.gather(points, 1, farthest_point_sample(points, 50)[..., None].expand(-1, -1, 3))
    pos = positions_in(out, fps_points)  # (B, M) positions in each cloud's FPS ordering
    assert all(torch.equal(pos[b], pos[0]) for b in range(4))  # one subset for the whole batch
    assert pos[0].unique().numel() == 20  # without replacement
    # The subset is torch.randperm(P)[:npoints] from the generator (the reference's np.random.choice).
    assert torch.equal(pos[0], torch.randperm(50, generator=gen(3))[:20])


def test_sample_train_points_is_seeded_and_random():
    points = cloud(2, 100)
    a = sample_train_points(points, 32, 64, generator=gen(0))
    assert torch.equal(a, sample_train_points(points, 32, 64, generator=gen(0)))
    assert not torch.equal(a, sample_train_points(points, 32, 64, generator=gen(1)))


def test_sample_train_points_caps_point_all_at_n():
    points = cloud(2, 30)
    out = sample_train_points(points, 30, 1200, generator=gen())
    # P = min(1200, 30) = 30 = npoints: a permutation of the cloud (FPS of all its points).
    assert sorted(positions_in(out, points)[0].tolist()) == list(range(30))


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 3), n=st.integers(1, 40), data=st.data())
def test_sample_train_points_shapes(batch, n, data):
    point_all = data.draw(st.integers(1, 60))
    npoints = data.draw(st.integers(1, min(point_all, n)))
    out = sample_train_points(cloud(batch, n), npoints, point_all, generator=gen())
    assert out.shape == (batch, npoints, 3)


def test_sample_test_points_is_fps():
    points = cloud(3, 70)
    out = sample_test_points(points, 25)
    idx = farthest_point_sample(points, 25)
    expected = torch.stack([points[b, idx[b]] for b in range(3)])
    assert torch.equal(out, expected)
    assert torch.equal(sample_test_points(points.double(), 25), expected.double())


@pytest.mark.parametrize(
    "npoints, point_all, pattern",
    [
        (51, 50, r"npoints must be <= min\(point_all, N\) = min\(50, 64\) = 50, got 51"),
        (65, 100, r"npoints must be <= min\(point_all, N\) = min\(100, 64\) = 64, got 65"),
        (0, 50, r"npoints must be an int >= 1, got 0"),
        (10, 0, r"point_all must be an int >= 1, got 0"),
    ],
)
def test_sample_train_points_rejects_bad_counts(npoints, point_all, pattern):
    with pytest.raises(ValueError, match=pattern):
        sample_train_points(cloud(2, 64), npoints, point_all)


def test_sampling_rejects_bad_inputs():
    with pytest.raises(TypeError, match=r"npoints must be an int >= 1, got float"):
        sample_train_points(cloud(), 8.0, 16)
    with pytest.raises(TypeError, match=r"generator must be None or a torch.Generator, got int"):
        sample_train_points(cloud(), 8, 16, generator=0)
    with pytest.raises(ValueError, match=r"points must have shape \(B, N, 3\)"):
        sample_train_points(torch.zeros(2, 10), 8, 16)
    with pytest.raises(ValueError, match=r"npoints must be <= N = 64 \(points per cloud\), got 65"):
        sample_test_points(cloud(), 65)
    with pytest.raises(TypeError, match=r"points must be a torch.Tensor"):
        sample_test_points([[0.0, 0.0, 0.0]], 1)
    with pytest.raises(ValueError, match="finite"):
        sample_test_points(torch.full((1, 4, 3), float("nan")), 2)


# --------------------------------------------------------------------------------------------------
# vote_logits
# --------------------------------------------------------------------------------------------------


def mean_point(points: torch.Tensor) -> torch.Tensor:
    """A "model" whose logits (B, 3) are the mean point of every cloud."""
    return points.mean(dim=1)


def fps_pool(points: torch.Tensor, size: int) -> torch.Tensor:
    return torch.gather(points, 1, farthest_point_sample(points, size)[..., None].expand(-1, -1, 3))


def test_vote_logits_one_view_without_transform_is_the_model_on_one_subset():
    points = cloud(3, 60)
    got = vote_logits(mean_point, points, 16, 40, views=1, transform=None, generator=gen(5))
    subset = fps_pool(points, 40)[:, torch.randperm(40, generator=gen(5))[:16]]
    assert got.shape == (3, 3)
    assert torch.equal(got, subset.mean(dim=1))


def test_vote_logits_averages_transformed_views():
    points = cloud(2, 60)
    transform = ScaleAndTranslate()
    got = vote_logits(mean_point, points, 16, 40, views=4, transform=transform, generator=gen(7))
    g, pool, logits = gen(7), fps_pool(points, 40), []
    for _ in range(4):
        view = pool[:, torch.randperm(40, generator=g)[:16]]
        logits.append(mean_point(transform(view, generator=g)))
    assert torch.allclose(got, torch.stack(logits).mean(dim=0), atol=1e-6)
    # The views differ, so the average is not any single one of them.
    assert not any(torch.allclose(got, one) for one in logits)
    default = vote_logits(mean_point, points, 16, 40, views=4, generator=gen(7))  # DEFAULT_VOTE_TRANSFORM
    assert torch.allclose(default, got, atol=1e-6)


def test_vote_logits_averages_views_of_a_model_that_reuses_its_output_buffer():
    """A model compiled with CUDA graphs returns the same output tensor at every call, overwritten: the
    average is still over every view's logits, not the last view's alone."""
    points = cloud(2, 60)
    buffer = torch.empty(2, 3)

    def reusing(view: torch.Tensor) -> torch.Tensor:
        return buffer.copy_(mean_point(view))

    got = vote_logits(reusing, points, 16, 40, views=4, generator=gen(7))
    expected = vote_logits(mean_point, points, 16, 40, views=4, generator=gen(7))
    assert torch.equal(got, expected)
    assert not torch.equal(got, buffer)


def test_vote_logits_runs_views_without_grad_and_leaves_the_model_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 3, 5)).train()
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    got = vote_logits(model, cloud(2, 30), 16, 24, views=3, generator=gen())
    assert got.shape == (2, 5) and not got.requires_grad
    assert calls == [torch.Size([2, 16, 3])] * 3 and model.training


@pytest.mark.parametrize(
    "model, kwargs, error, pattern",
    [
        ("model", {}, TypeError, r"model must be callable"),
        (mean_point, dict(views=0), ValueError, r"views must be an int >= 1, got 0"),
        (mean_point, dict(transform=3), TypeError, r"transform must be None or callable, got int"),
        (mean_point, dict(npoints=41), ValueError, r"npoints must be <= min\(point_all, N\)"),
        (
            lambda p: (p.mean(1),),
            {},
            TypeError,
            r"model must return a torch.Tensor of logits \(B, K\), got tuple",
        ),
        (
            lambda p: p.mean((1, 2)),
            {},
            ValueError,
            r"model must return logits of shape \(B, K\) = \(2, K\), got \(2,\)",
        ),
    ],
)
def test_vote_logits_rejects_bad_arguments(model, kwargs, error, pattern):
    args = dict(npoints=16, point_all=40)
    args.update(kwargs)
    npoints, point_all = args.pop("npoints"), args.pop("point_all")
    with pytest.raises(error, match=pattern):
        vote_logits(model, cloud(2, 60), npoints, point_all, **args)
