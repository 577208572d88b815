"""Hostile inputs to the point-cloud ops (issue item 3 and its neighbours).

Coordinates at the edges of :func:`pointpeft.ops.safe_coordinate_range` must give the exact answer of the
numerical contract (squared distance ``dx*dx + dy*dy + dz*dz`` in float32, or float64 for float64 inputs,
ties to the lowest index), checked against a slow brute force written here in numpy; coordinates past them
must be refused with an error naming the argument and the bound; results that cannot be represented in
the input dtype (float16) must be refused rather than returned as inf. The same on the Triton backend, run
in Triton's CPU interpreter without a GPU (tiny inputs: the interpreter is slow).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from pointpeft import ops
from pointpeft.ops import (
    dispatch,
    farthest_point_sample,
    group,
    knn,
    safe_coordinate_range,
    torch_backend,
    triton_backend,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ON_GPU = torch.cuda.is_available()
TRITON_RUNS = importlib.util.find_spec("triton") is not None and (
    ON_GPU or os.environ.get("TRITON_INTERPRET") == "1"
)
DEVICE = "cuda" if ON_GPU else "cpu"
needs_triton = pytest.mark.skipif(not TRITON_RUNS, reason="needs triton on a GPU or TRITON_INTERPRET=1")
TRITON_DTYPES = [torch.float16, torch.bfloat16, torch.float32]

FAST = settings(max_examples=30, deadline=None)
# The interpreter is slow: few examples, no shrinking (a failing example is reported as drawn).
SLOW = settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])


# --------------------------------------------------------------------------------------------------
# Brute force: the contract, one cloud and one query at a time, in numpy
# --------------------------------------------------------------------------------------------------


def compute_np(t: torch.Tensor) -> np.ndarray:
    """Coordinates upcast to the compute dtype (float32, or float64 for float64), as numpy."""
    return t.detach().cpu().to(torch_backend.compute_dtype(t.dtype)).numpy()


def contract_sq_dist(points: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``dx*dx + dy*dy + dz*dz`` (left to right, each operation rounded) from ``q`` (3,) to ``points`` (N, 3)."""
    with np.errstate(under="ignore"):
        dx = points[:, 0] - q[0]
        dy = points[:, 1] - q[1]
        dz = points[:, 2] - q[2]
        return dx * dx + dy * dy + dz * dz


def brute_fps(cloud: np.ndarray, m: int, start: int) -> list[int]:
    running = np.full(cloud.shape[0], np.inf, dtype=cloud.dtype)
    picked = [start]
    while len(picked) < m:
        running = np.minimum(running, contract_sq_dist(cloud, cloud[picked[-1]]))
        picked.append(int(np.argmax(running)))  # the first maximum
    return picked


def brute_knn(points: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = contract_sq_dist(points, q)
    order = np.argsort(d, kind="stable")[:k]  # (distance, index) order
    return d[order], order


def expected_fps(xyz: torch.Tensor, m: int, start: int = 0) -> torch.Tensor:
    return torch.tensor([brute_fps(c, m, start) for c in compute_np(xyz)], dtype=torch.long)


def expected_knn(query: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sq_dist, idx)``; sq_dist rounded to the input dtype once, as the ops return it."""
    q, p = compute_np(query), compute_np(points)
    rows = [[brute_knn(p[b], q[b, i], k) for i in range(q.shape[1])] for b in range(q.shape[0])]
    d = np.array([[r[0] for r in row] for row in rows], dtype=q.dtype).reshape(*q.shape[:2], k)
    i = np.array([[r[1] for r in row] for row in rows], dtype=np.int64).reshape(*q.shape[:2], k)
    return torch.from_numpy(d).to(query.dtype), torch.from_numpy(i)


def expected_group(xyz: torch.Tensor, g: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neighborhood, centers)`` by the definition ``xyz[idx] - center`` (subtracted in the input dtype)."""
    cpu = xyz.detach().cpu()
    cloud = compute_np(cpu)
    hoods, centers = [], []
    for b in range(cpu.shape[0]):
        center_idx = brute_fps(cloud[b], g, 0)
        rows = [cpu[b, brute_knn(cloud[b], cloud[b, c], k)[1]] - cpu[b, c] for c in center_idx]
        hoods.append(torch.stack(rows))
        centers.append(cpu[b, center_idx])
    return torch.stack(hoods), torch.stack(centers)


def assert_same_values(got: torch.Tensor, want: torch.Tensor, backend: str) -> None:
    """Bit-equal, except bfloat16 from the Triton interpreter, whose float32 -> bfloat16 conversion is not
    round-to-nearest-even (one bfloat16 ulp allowed there, as in tests/test_ops_triton.py)."""
    got = got.detach().cpu()
    if backend == "triton" and got.dtype == torch.bfloat16 and not ON_GPU:
        torch.testing.assert_close(got, want, rtol=2**-7, atol=0)
    else:
        assert torch.equal(got, want)


# --------------------------------------------------------------------------------------------------
# Clouds at the edges of the safe range
# --------------------------------------------------------------------------------------------------


def step(value: float, dtype: torch.dtype, up: bool) -> float:
    """The next ``dtype`` value above (``up``) or below ``value`` (itself a ``dtype`` value)."""
    v = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(v, torch.tensor(math.inf if up else 0.0, dtype=dtype)))


def inside_upper(dtype: torch.dtype) -> float:
    """The largest finite ``dtype`` value <= max_abs (float16: its largest value, 65504)."""
    bound = safe_coordinate_range(dtype)[1]
    v = float(torch.tensor(bound, dtype=dtype))
    return step(v, dtype, up=False) if v > bound else v


def inside_lower(dtype: torch.dtype) -> float:
    """The smallest ``dtype`` value >= min_scale (at least its smallest normal number)."""
    bound = max(safe_coordinate_range(dtype)[0], torch.finfo(dtype).tiny)
    v = float(torch.tensor(bound, dtype=dtype))
    return step(v, dtype, up=True) if v < bound else v


def make_cloud(seed: int, b: int, n: int, mode: str, edge: float, dtype: torch.dtype) -> torch.Tensor:
    """(b, n, 3) cloud whose largest coordinate magnitude is exactly ``edge`` (a ``dtype`` value)."""
    rng = np.random.default_rng(seed)
    if mode == "grid":  # many exactly tied distances
        base = rng.integers(-2, 3, (b, n, 3)) / 2.0
    elif mode == "repeated":  # duplicated points
        base = rng.uniform(-1, 1, (b, max(1, n // 2), 3))[:, rng.integers(0, max(1, n // 2), n)]
    else:
        base = rng.uniform(-1, 1, (b, n, 3))
    base[:, 0, 0] = rng.choice([-1.0, 1.0])  # the largest magnitude, exactly
    return (torch.from_numpy(base) * edge).to(dtype)  # |base * edge| <= edge: rounds to at most edge


@st.composite
def edge_clouds(draw: st.DrawFn, dtypes: list[torch.dtype], max_n: int) -> torch.Tensor:
    dtype = draw(st.sampled_from(dtypes))
    where = draw(st.sampled_from(["upper", "lower", "unit"]))
    edge = {"upper": inside_upper, "lower": inside_lower, "unit": lambda _: 1.0}[where](dtype)
    mode = draw(st.sampled_from(["random", "grid", "repeated"]))
    b, n = draw(st.integers(1, 2)), draw(st.integers(1, max_n))
    return make_cloud(draw(st.integers(0, 2**32 - 1)), b, n, mode, edge, dtype).to(DEVICE)


# --------------------------------------------------------------------------------------------------
# The issue's case and the bounds themselves
# --------------------------------------------------------------------------------------------------

ISSUE_CLOUD = torch.randn(1, 12, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_issue_case_1e20_float32_is_refused_naming_the_argument_and_bound(backend: str) -> None:
    xyz = (ISSUE_CLOUD * 1e20).to(DEVICE)
    largest = re.escape(f"got a coordinate of magnitude {float(xyz.abs().max()):.3g}")
    message = rf"xyz must have coordinates of magnitude at most 1e\+18 for torch.float32 inputs.*{largest}"
    with pytest.raises(ValueError, match=message):
        farthest_point_sample(xyz, 6, backend=backend)
    with pytest.raises(ValueError, match=message):
        group(xyz, 6, 3, backend=backend)
    with pytest.raises(ValueError, match=r"points must have coordinates of magnitude at most 1e\+18"):
        knn(ISSUE_CLOUD.to(DEVICE), xyz, 3, backend=backend)
    with pytest.raises(ValueError, match=r"query must have coordinates of magnitude at most 1e\+18"):
        knn(xyz, ISSUE_CLOUD.to(DEVICE), 3, backend=backend)
    # In range (the same cloud, scaled down), the answer is the exact one.
    scaled = (ISSUE_CLOUD * 1e17).to(DEVICE)
    assert torch.equal(farthest_point_sample(scaled, 6, backend=backend).cpu(), expected_fps(scaled, 6))
    exact = expected_fps(ISSUE_CLOUD.double(), 6)  # float64 brute force: scaling by 1e17 changes no choice
    assert torch.equal(farthest_point_sample(scaled, 6, backend=backend).cpu(), exact)


def test_float64_and_bfloat16_bounds_are_enforced_too() -> None:
    with pytest.raises(ValueError, match=r"xyz must have coordinates of magnitude at most 1e\+153.*1e\+160"):
        farthest_point_sample(torch.tensor([[[0.0, 0.0, 1e160], [0.0, 0.0, 0.0]]], dtype=torch.float64), 2)
    with pytest.raises(ValueError, match=r"at most 1e\+18 for torch.bfloat16 inputs.*float64 coordinates"):
        group((ISSUE_CLOUD * 1e20).bfloat16(), 4, 2)


def test_safe_coordinate_range_is_what_no_squared_distance_can_overflow() -> None:
    assert safe_coordinate_range(torch.float32) == (1e-18, 1e18)
    assert safe_coordinate_range(torch.float16) == safe_coordinate_range(torch.bfloat16) == (1e-18, 1e18)
    assert safe_coordinate_range(torch.float64) == (1e-153, 1e153)
    for dtype in (torch.float32, torch.float64):
        low, high = safe_coordinate_range(dtype)
        info = torch.finfo(dtype)
        assert 3 * (2 * high) ** 2 <= info.max / 10  # far from overflow, roundings included
        assert 2 * 10 * high > math.sqrt(info.max / 3)  # the largest such power of ten
        assert low * low > info.tiny  # squared distances at the lower edge are still normal numbers
    with pytest.raises(TypeError, match="dtype must be float16, bfloat16, float32 or float64"):
        safe_coordinate_range(torch.int64)


def test_squared_distance_of_the_extreme_corners_is_finite_on_both_sides() -> None:
    """Opposite corners of the accepted cube, the largest squared distance there is: finite."""
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        c = inside_upper(dtype)
        xyz = torch.tensor([[[c, c, c], [-c, -c, -c], [0.0, 0.0, 0.0]]], dtype=dtype)
        res = knn(xyz, xyz, 3)
        assert torch.isfinite(res.sq_dist).all()
        assert res.idx[0, 0].tolist() == [0, 2, 1]
        assert torch.equal(farthest_point_sample(xyz, 3), torch.tensor([[0, 1, 2]]))


# --------------------------------------------------------------------------------------------------
# Exact answers inside the range, refusals outside (torch backend, every dtype)
# --------------------------------------------------------------------------------------------------


def check_all_ops(xyz: torch.Tensor, data: st.DataObject, backend: str) -> None:
    """FPS, KNN and group on ``xyz`` agree with the brute force (or refuse a float16 overflow)."""
    b, n, _ = xyz.shape
    m = data.draw(st.integers(1, n))
    start = data.draw(st.integers(0, n - 1))
    assert torch.equal(
        farthest_point_sample(xyz, m, start_idx=start, backend=backend).cpu(), expected_fps(xyz, m, start)
    )

    k = data.draw(st.integers(1, n))
    # Queries among the points (distance 0 to themselves) and off them (halfway to the origin, mirrored).
    picked = data.draw(st.lists(st.integers(0, n - 1), max_size=n))
    query = torch.cat([xyz[:, picked], -0.5 * xyz.flip(1)], dim=1)
    want_d, want_i = expected_knn(query, xyz, k)
    if bool(torch.isinf(want_d).any()):
        with pytest.raises(ValueError, match=r"knn cannot return sq_dist in torch.float16.*65504"):
            knn(query, xyz, k, backend=backend)
    else:
        res = knn(query, xyz, k, backend=backend)
        assert torch.equal(res.idx.cpu(), want_i)
        assert_same_values(res.sq_dist, want_d, backend)
        assert res.sq_dist.dtype == xyz.dtype

    g = data.draw(st.integers(1, n))
    want_hood, want_centers = expected_group(xyz, g, k)
    if bool(torch.isinf(want_hood).any()):
        with pytest.raises(ValueError, match=r"group cannot return neighborhood in torch.float16.*65504"):
            group(xyz, g, k, backend=backend)
    else:
        hood, centers = group(xyz, g, k, backend=backend)
        assert torch.equal(centers.cpu(), want_centers)
        assert_same_values(hood, want_hood, backend)


@FAST
@given(xyz=edge_clouds(DTYPES, max_n=16), data=st.data())
def test_clouds_at_the_edges_of_the_range_give_the_exact_answer(
    xyz: torch.Tensor, data: st.DataObject
) -> None:
    check_all_ops(xyz, data, "torch")


@needs_triton
@SLOW
@given(xyz=edge_clouds(TRITON_DTYPES, max_n=8), data=st.data())
def test_clouds_at_the_edges_of_the_range_give_the_exact_answer_on_triton(
    xyz: torch.Tensor, data: st.DataObject
) -> None:
    check_all_ops(xyz, data, "triton")


def nudged_out(xyz: torch.Tensor, where: str) -> torch.Tensor:
    """``xyz`` with its coordinate [0, 0, 0] moved just past the range: the next ``dtype`` value above
    max_abs, or (``where == "lower"``) the whole cloud scaled to the largest value below min_scale."""
    dtype = xyz.dtype
    low, high = safe_coordinate_range(dtype)
    out = xyz.clone()
    if where == "upper":
        out[0, 0, 0] = step(inside_upper(dtype), dtype, up=True) * (1 if float(xyz[0, 0, 0]) > 0 else -1)
    else:
        edge = step(inside_lower(dtype), dtype, up=False)
        assert 0 < edge < low
        out = (xyz.double() / xyz.double().abs().max() * edge).to(dtype)
        assert 0 < float(out.abs().max()) < low
    return out


@FAST
@given(
    dtype=st.sampled_from([torch.bfloat16, torch.float32, torch.float64]),
    where=st.sampled_from(["upper", "lower"]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 12),
)
def test_clouds_just_outside_the_range_are_refused(dtype: torch.dtype, where: str, seed: int, n: int) -> None:
    xyz = nudged_out(make_cloud(seed, 2, n, "random", 1.0, dtype), where)
    low, high = safe_coordinate_range(dtype)
    bound = re.escape(f"at most {high:.0e}" if where == "upper" else f"or at least {low:.0e}")
    with pytest.raises(ValueError, match=f"xyz must .*{bound}"):
        farthest_point_sample(xyz, 1)
    with pytest.raises(ValueError, match=f"xyz must .*{bound}"):
        group(xyz, 1, 1)
    names = "query" if where == "upper" else "query and points"  # the query is checked first
    with pytest.raises(ValueError, match=f"{names} must .*{bound}"):
        knn(xyz, xyz, 1)


def test_float16_has_no_coordinate_outside_the_range() -> None:
    """Every finite float16 lies within [-1e18, 1e18] and its smallest positive value above 1e-18."""
    info = torch.finfo(torch.float16)
    low, high = safe_coordinate_range(torch.float16)
    assert info.max < high and float(torch.tensor(2**-24, dtype=torch.float16)) > low
    xyz = torch.tensor([[[info.max, 0, 0], [-info.max, 0, 0], [2**-24, 0, 0]]], dtype=torch.float16)
    assert farthest_point_sample(xyz, 3).tolist() == [[0, 1, 2]]


# --------------------------------------------------------------------------------------------------
# The lower edge: tiny clouds are refused, all-zero ones and mixed scales are not
# --------------------------------------------------------------------------------------------------


def test_tiny_cloud_is_refused_instead_of_repeating_indices() -> None:
    xyz = ISSUE_CLOUD * 1e-30  # every squared distance underflows to 0 in float32
    with pytest.raises(
        ValueError, match=r"xyz must have a largest coordinate magnitude of 0 .* 1e-18 .*got 2.3e-30"
    ):
        farthest_point_sample(xyz, 4)
    with pytest.raises(ValueError, match=r"query and points must have a largest coordinate magnitude"):
        knn(xyz, xyz, 2)


def test_all_zero_cloud_and_tiny_query_near_normal_points_are_accepted() -> None:
    zeros = torch.zeros(1, 5, 3)
    assert farthest_point_sample(zeros, 3).tolist() == [[0, 0, 0]]  # all coincide: ties to index 0
    query = ISSUE_CLOUD[:, :2] * 1e-30  # distances to unit-scale points are normal numbers
    want_d, want_i = expected_knn(query, ISSUE_CLOUD, 3)
    res = knn(query, ISSUE_CLOUD, 3)
    assert torch.equal(res.idx, want_i) and torch.equal(res.sq_dist, want_d)


# --------------------------------------------------------------------------------------------------
# float16 results that do not fit float16
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_float16_knn_distance_above_65504_is_refused_naming_it(backend: str) -> None:
    points = torch.tensor([[[300.0, 0.0, 0.0], [0.0, 400.0, 0.0]]], dtype=torch.float16, device=DEVICE)
    query = torch.zeros(1, 1, 3, dtype=torch.float16, device=DEVICE)
    message = (
        r"knn cannot return sq_dist in torch.float16: .* is 9e\+04, above 65504.*query.to\(torch.float32\)"
    )
    with pytest.raises(ValueError, match=message):
        knn(query, points, 1, backend=backend)
    res = knn(query.float(), points.float(), 2, backend=backend)  # the advice works
    assert res.sq_dist.tolist() == [[[90000.0, 160000.0]]] and res.idx.tolist() == [[[0, 1]]]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_float16_knn_far_clusters_with_near_neighbours_are_answered(backend: str) -> None:
    """The extent allows an overflow, so the result is read back, but every returned distance fits."""
    cluster = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    points = torch.cat([cluster, cluster + 1000.0])[None].half().to(DEVICE)
    res = knn(points, points, 3, backend=backend)
    want_d, want_i = expected_knn(points, points, 3)
    assert torch.equal(res.idx.cpu(), want_i) and torch.equal(res.sq_dist.cpu(), want_d)
    assert torch.isfinite(res.sq_dist).all()


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_float16_group_offset_beyond_65504_is_refused(backend: str) -> None:
    xyz = torch.tensor([[[60000.0, 0, 0], [-60000.0, 0, 0], [0, 0, 0]]], dtype=torch.float16, device=DEVICE)
    with pytest.raises(
        ValueError, match=r"group cannot return neighborhood in torch.float16.*65504.*xyz.float"
    ):
        group(xyz, 2, 3, backend=backend)
    hood, centers = group(xyz, 2, 2, backend=backend)  # the nearest neighbours are 60000 away: they fit
    assert torch.isfinite(hood).all()
    assert hood.float().abs().max().item() == 60000.0


# --------------------------------------------------------------------------------------------------
# Ragged padding may hold anything, including values far outside the range
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("fill", [1e30, -3e38, math.nan, math.inf, 1e-30])
def test_padding_outside_the_range_is_ignored(backend: str, fill: float) -> None:
    xyz = ISSUE_CLOUD.repeat(2, 1, 1).clone()
    xyz[1, 5:] = fill
    xyz = xyz.to(DEVICE)
    lengths = torch.tensor([12, 5], device=DEVICE)
    idx = farthest_point_sample(xyz, 4, lengths=lengths, backend=backend).cpu()
    assert idx[1].tolist() == expected_fps(ISSUE_CLOUD[:, :5], 4)[0].tolist()
    res = knn(xyz, xyz, 3, query_lengths=lengths, point_lengths=lengths, backend=backend)
    assert torch.isfinite(res.sq_dist).all()
    assert torch.equal(res.idx[1, :5].cpu(), expected_knn(ISSUE_CLOUD[:, :5], ISSUE_CLOUD[:, :5], 3)[1][0])


def test_out_of_range_point_inside_lengths_is_refused() -> None:
    xyz = ISSUE_CLOUD.repeat(2, 1, 1).clone()
    xyz[1, 5] = 1e30
    farthest_point_sample(xyz, 4, lengths=torch.tensor([12, 5]))  # padding: ignored
    with pytest.raises(
        ValueError, match=r"xyz must have coordinates of magnitude at most 1e\+18 at its valid points"
    ):
        farthest_point_sample(xyz, 4, lengths=torch.tensor([12, 6]))
    with pytest.raises(ValueError, match=r"points must have coordinates .* at its valid points .*1e\+30"):
        knn(xyz, xyz, 2, point_lengths=torch.tensor([12, 6]), query_lengths=torch.tensor([12, 5]))


# --------------------------------------------------------------------------------------------------
# Other hostile inputs: layouts, devices, views, huge k, empty batches, gradients
# --------------------------------------------------------------------------------------------------


def test_sparse_and_nested_tensors_are_refused_by_type() -> None:
    with pytest.raises(TypeError, match=r"xyz must be a dense \(strided\) tensor .* got a torch.sparse_coo"):
        farthest_point_sample(ISSUE_CLOUD.to_sparse(), 2)
    nested = torch.nested.nested_tensor([torch.rand(4, 3), torch.rand(6, 3)])
    with pytest.raises(TypeError, match=r"points must be a dense \(strided\) tensor .* got a nested tensor"):
        knn(ISSUE_CLOUD, nested, 2)


def test_meta_tensors_are_refused_with_a_clear_error() -> None:
    meta = torch.empty(1, 5, 3, device="meta")
    with pytest.raises(
        ValueError, match=r"xyz must be on a device that holds values .* got a tensor on meta"
    ):
        farthest_point_sample(meta, 2)
    with pytest.raises(ValueError, match=r"query must be on a device that holds values"):
        knn(meta, meta, 2)
    with pytest.raises(ValueError, match=r"xyz must be on a device that holds values"):
        group(meta, 2, 2)


def test_lengths_on_another_device_says_how_to_move_them() -> None:
    with pytest.raises(
        ValueError, match=r"lengths and xyz must be on the same device.*lengths.to\(xyz.device\)"
    ):
        farthest_point_sample(ISSUE_CLOUD, 2, lengths=torch.tensor([5], device="meta"))
    with pytest.raises(ValueError, match=r"point_lengths.to\(points.device\)"):
        knn(ISSUE_CLOUD, ISSUE_CLOUD, 2, point_lengths=torch.tensor([5], device="meta"))


def views_of(cloud: torch.Tensor) -> dict[str, torch.Tensor]:
    """Non-contiguous views holding the values of ``cloud`` (B, N, 3)."""
    b, n, _ = cloud.shape
    wide = torch.zeros(b, n, 7, dtype=cloud.dtype, device=cloud.device)
    wide[..., 2:5] = cloud
    spaced = torch.zeros(b, 2 * n, 3, dtype=cloud.dtype, device=cloud.device)
    spaced[:, ::2] = cloud
    return {
        "transposed": cloud.transpose(1, 2).contiguous().transpose(1, 2),
        "feature slice": wide[..., 2:5],
        "every other point": spaced[:, ::2],
        "batch-major permuted": cloud.permute(1, 0, 2).contiguous().permute(1, 0, 2),
        "offset storage": torch.cat(
            [torch.zeros(5, dtype=cloud.dtype, device=cloud.device), cloud.flatten()]
        )[5:].view(b, n, 3),
    }


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [("torch", dtype) for dtype in TRITON_DTYPES]
    + [pytest.param("triton", torch.float32, marks=needs_triton)],
)
def test_non_contiguous_and_expanded_inputs_give_the_answer_of_their_values(
    backend: str, dtype: torch.dtype
) -> None:
    cloud = (ISSUE_CLOUD.repeat(2, 1, 1) * torch.tensor([1.0, -2.0])[:, None, None]).to(dtype).to(DEVICE)
    lengths = torch.tensor([12, 7], dtype=torch.int32, device=DEVICE)
    want = (
        expected_fps(cloud, 6).tolist(),
        expected_knn(cloud, cloud, 4)[1].tolist(),
        [t.tolist() for t in expected_group(cloud, 4, 3)],
    )
    want_ragged = farthest_point_sample(cloud, 6, lengths=lengths, backend="torch").tolist()
    views = views_of(cloud)
    if backend == "triton":  # the interpreter is slow: the three kinds of strides
        views = {name: views[name] for name in ("transposed", "feature slice", "offset storage")}
    for name, view in views.items():
        assert torch.equal(view, cloud) and (not view.is_contiguous() or view.storage_offset() > 0), name
        got = (
            farthest_point_sample(view, 6, backend=backend).tolist(),
            knn(view, view, 4, backend=backend).idx.tolist(),
            [t.tolist() for t in group(view, 4, 3, backend=backend)],
        )
        assert got == want, name
        assert farthest_point_sample(view, 6, lengths=lengths, backend=backend).tolist() == want_ragged, name
    one = cloud[:, :1].expand(2, 9, 3)  # stride 0 along the points: nine copies of one point
    assert farthest_point_sample(one, 3, backend=backend).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert knn(one, one, 2, backend=backend).idx.tolist() == [[[0, 1]] * 9] * 2
    batch = cloud[:1].expand(3, 12, 3)  # stride 0 along the batch
    assert farthest_point_sample(batch, 5, backend=backend).tolist() == [want[0][0][:5]] * 3


def test_huge_k_is_refused_or_sent_to_the_backend_that_can_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    points = torch.rand(1, 300, 3, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match=r"k must be in \[1, N\] = \[1, 300\], got 10000000000000000000000"):
        knn(points, points, 10**22)
    monkeypatch.setattr(triton_backend, "unavailable_reason", lambda tensor: None)  # as on a GPU
    with pytest.raises(RuntimeError, match=r"k = 257 is above the 256 neighbours per query.*backend='torch'"):
        knn(points[:, :2], points, 257, backend="triton")
    with pytest.raises(RuntimeError, match=r"group_size = 300 is above the 256"):
        group(points, 2, 300, backend="triton")
    fake_cuda = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    # auto: the torch backend, same answer
    assert dispatch.select_backend("auto", fake_cuda, k=257) is torch_backend
    assert dispatch.select_backend("auto", fake_cuda, k=256) is triton_backend
    res = knn(points[:, :2], points, 300)  # every point, in order, on the backend that runs it
    assert torch.equal(res.idx, expected_knn(points[:, :2], points, 300)[1])


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_empty_batches_and_empty_queries_give_empty_results(backend: str) -> None:
    empty = torch.empty(0, 5, 3, device=DEVICE)
    assert farthest_point_sample(empty, 2, backend=backend).shape == (0, 2)
    res = knn(empty, empty, 2, backend=backend)
    assert res.sq_dist.shape == res.idx.shape == (0, 5, 2)
    hood, centers = group(empty, 2, 3, backend=backend)
    assert hood.shape == (0, 2, 3, 3) and centers.shape == (0, 2, 3)
    no_query = torch.empty(2, 0, 3, device=DEVICE)
    res = knn(no_query, ISSUE_CLOUD.repeat(2, 1, 1).to(DEVICE), 3, backend=backend)
    assert res.idx.shape == (2, 0, 3)
    assert farthest_point_sample(empty, 2, lengths=torch.empty(0, dtype=torch.long, device=DEVICE)).shape == (
        0,
        2,
    )


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_requires_grad_inputs_near_the_bound_have_finite_exact_gradients(backend: str) -> None:
    c = inside_upper(torch.float32)
    base = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 1.0, 1.0]]])
    points = (base * c).to(DEVICE).requires_grad_()
    idx = farthest_point_sample(points, 4, backend=backend)
    assert not idx.requires_grad and idx.tolist() == [[0, 3, 2, 1]]
    res = knn(points, points, 2, backend=backend)
    res.sq_dist.sum().backward()
    assert torch.isfinite(points.grad).all()
    # d/dp of sum |p_i - p_j|^2 over the neighbour pairs, exact in float64
    p64 = (base * c).double().requires_grad_()
    nb = p64[0, res.idx[0].cpu()]
    ((nb - p64[0, :, None]) ** 2).sum().backward()
    torch.testing.assert_close(points.grad.cpu().double(), p64.grad, rtol=1e-6, atol=0)
    points.grad = None
    hood, centers = group(points, 2, 2, backend=backend)
    (hood.sum() + centers.sum()).backward()
    assert torch.isfinite(points.grad).all()


def test_inference_mode_tensors_are_accepted() -> None:
    with torch.inference_mode():
        xyz = ISSUE_CLOUD.clone()
    hood, centers = group(xyz, 4, 3)
    assert torch.equal(centers, expected_group(ISSUE_CLOUD, 4, 3)[1])
    with torch.inference_mode():
        assert torch.equal(farthest_point_sample(ISSUE_CLOUD, 4), expected_fps(ISSUE_CLOUD, 4))


class _GridSpy:
    """Stands in for a Triton kernel: records the launch grid, then launches the real kernel."""

    def __init__(self, kernel: object) -> None:
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid: tuple[int, ...]) -> object:
        self.grids.append(grid)
        return self.kernel[grid]  # type: ignore[index]


@needs_triton
def test_many_query_blocks_and_clouds_on_a_one_dimensional_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA limits a grid's second axis to 65535 programs, i.e. 1,048,560 queries in blocks of 16 in the
    former (cloud, block) grid: the kernels now take one axis. Several clouds times several blocks of
    queries (the mapping from the program id) give the brute-force answer."""
    from pointpeft.ops import triton_kernels

    spies = {name: _GridSpy(getattr(triton_kernels, name)) for name in ("knn_kernel", "group_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(triton_kernels, name, spy)
    # several blocks from few queries (the interpreter is slow)
    monkeypatch.setattr(triton_backend, "BLOCK_Q", 4)
    gen = torch.Generator().manual_seed(5)
    points = torch.rand(2, 10, 3, generator=gen).to(DEVICE)
    query = torch.rand(2, 9, 3, generator=gen).to(DEVICE)  # 3 blocks of 4 queries per cloud
    res = knn(query, points, 3, backend="triton")
    want_d, want_i = expected_knn(query, points, 3)
    assert torch.equal(res.idx.cpu(), want_i) and torch.equal(res.sq_dist.cpu(), want_d)
    hood, centers = group(points, 9, 2, backend="triton")  # 3 blocks of 4 centers per cloud
    want_hood, want_centers = expected_group(points, 9, 2)
    assert torch.equal(centers.cpu(), want_centers) and torch.equal(hood.cpu(), want_hood)
    assert spies["knn_kernel"].grids == [(2 * 3,)] and spies["group_kernel"].grids == [(2 * 3,)]


def test_public_checks_name_the_callers_argument() -> None:
    """check_cloud and check_coordinates give the ops' errors under the caller's name."""
    with pytest.raises(TypeError, match=r"points must be a torch.Tensor of shape \(B, N, 3\), got list"):
        ops.check_cloud([[0.0, 0.0, 0.0]], "points")
    with pytest.raises(
        ValueError, match=r"points must have coordinates of magnitude at most 1e\+18.*2.3e\+20"
    ):
        ops.check_coordinates(ISSUE_CLOUD * 1e20, "points")
    with pytest.raises(ValueError, match=r"points must have a largest coordinate magnitude of 0 .*1e-18"):
        ops.check_coordinates(ISSUE_CLOUD * 1e-30, "points")
    with pytest.raises(ValueError, match=r"points must contain only finite coordinates at its valid points"):
        ops.check_coordinates(torch.full((1, 3, 3), math.nan), "points", torch.tensor([1]))
    with pytest.raises(ValueError, match=r"lengths must have values in \[0, N\] = \[0, 12\]"):
        ops.check_coordinates(ISSUE_CLOUD, "points", torch.tensor([13]))
    padded = ISSUE_CLOUD.clone()
    padded[0, 4:] = 1e30
    ops.check_coordinates(padded, "points", torch.tensor([4]))  # padding is not checked
    ops.check_coordinates(torch.zeros(1, 0, 3), "points")  # nothing to check
