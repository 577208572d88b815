"""Tests for ``pointpeft.ops``: brute-force twins, hypothesis properties, validation, gradients."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pointpeft import ops
from pointpeft.ops import GroupResult, KNNResult, farthest_point_sample, group, knn
from pointpeft.ops import _torch as torch_backend

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HYPOTHESIS = settings(max_examples=100, deadline=None)


# --------------------------------------------------------------------------------------------------
# Brute-force twins (plain numpy, one cloud at a time, following the definitions)
# --------------------------------------------------------------------------------------------------


def as_compute_np(t: torch.Tensor) -> np.ndarray:
    """The values of ``t`` upcast to the dtype distances are computed in (fp32, or fp64 for fp64)."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.detach().to(dtype).numpy()


def fps_twin(xyz: np.ndarray, m: int, start_idx: int) -> np.ndarray:
    """FPS on one cloud ``(N, 3)``: running min of dx*dx + dy*dy + dz*dz, argmax -> first index."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    min_d = np.full(xyz.shape[0], np.inf, dtype=xyz.dtype)
    picked = [start_idx]
    for _ in range(m - 1):
        last = picked[-1]
        dx = x - x[last]
        dy = y - y[last]
        dz = z - z[last]
        d = dx * dx + dy * dy + dz * dz
        min_d = np.minimum(min_d, d)
        picked.append(int(np.argmax(min_d)))
    return np.array(picked, dtype=np.int64)


def knn_twin(query: np.ndarray, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN on one cloud: full distance matrix (M, N) + stable argsort."""
    dx = points[None, :, 0] - query[:, None, 0]
    dy = points[None, :, 1] - query[:, None, 1]
    dz = points[None, :, 2] - query[:, None, 2]
    d = dx * dx + dy * dy + dz * dz
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def fps_twin_batch(xyz: torch.Tensor, m: int, start_idx: int) -> torch.Tensor:
    arr = as_compute_np(xyz)
    return torch.from_numpy(np.stack([fps_twin(c, m, start_idx) for c in arr]).reshape(len(arr), m))


def knn_twin_batch(query: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, p = as_compute_np(query), as_compute_np(points)
    b, m = q.shape[:2]
    results = [knn_twin(qi, pi, k) for qi, pi in zip(q, p, strict=True)]
    d = np.stack([r[0] for r in results]).reshape(b, m, k)
    i = np.stack([r[1] for r in results]).reshape(b, m, k)
    return torch.from_numpy(d).to(query.dtype), torch.from_numpy(i)


def num_distinct(cloud: torch.Tensor) -> int:
    return len(np.unique(as_compute_np(cloud), axis=0))


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------


def make_cloud(rng: np.random.Generator, b: int, n: int, mode: str, scale: float) -> np.ndarray:
    if mode == "random":
        pts = rng.standard_normal((b, n, 3))
    elif mode == "repeated":  # every point repeated a few times, in shuffled order
        base = rng.standard_normal((b, max(1, n // 3), 3))
        pts = base[:, rng.integers(0, base.shape[1], n)]
    elif mode == "identical":
        pts = np.repeat(rng.standard_normal((b, 1, 3)), n, axis=1)
    else:  # "grid": small integer lattice -> many exactly tied distances
        pts = rng.integers(-2, 3, (b, n, 3)).astype(np.float64)
    return pts * scale


@st.composite
def clouds(draw: st.DrawFn, max_b: int = 3, max_n: int = 40) -> torch.Tensor:
    b = draw(st.integers(1, max_b))
    n = draw(st.integers(1, max_n))
    mode = draw(st.sampled_from(["random", "repeated", "identical", "grid"]))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return torch.from_numpy(make_cloud(rng, b, n, mode, scale)).to(dtype)


@st.composite
def fps_cases(draw: st.DrawFn) -> tuple[torch.Tensor, int, int]:
    xyz = draw(clouds())
    n = xyz.shape[1]
    m = draw(st.one_of(st.just(n), st.integers(1, n)))
    start_idx = draw(st.integers(0, n - 1))
    return xyz, m, start_idx


@st.composite
def knn_cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    points = draw(clouds())
    b, n, _ = points.shape
    k = draw(st.one_of(st.just(n), st.integers(1, n)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(["self", "subset", "random"]))
    if mode == "self":  # M == N, query == points
        query = points.clone()
    elif mode == "subset":
        m = draw(st.integers(1, n))
        query = points[:, torch.from_numpy(rng.permutation(n)[:m])]
    else:
        m = draw(st.integers(1, 30))
        scale = float(points.abs().max()) or 1.0
        query = torch.from_numpy(rng.standard_normal((b, m, 3)) * scale).to(points.dtype)
    return query, points, k


# --------------------------------------------------------------------------------------------------
# farthest_point_sample
# --------------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(case=fps_cases())
@example(case=(torch.zeros(1, 5, 3), 5, 3))  # all-identical cloud, M == N, B == 1
@example(case=(torch.arange(12.0).view(1, 4, 3), 4, 0))
def test_fps_matches_twin(case: tuple[torch.Tensor, int, int]) -> None:
    xyz, m, start_idx = case
    idx = farthest_point_sample(xyz, m, start_idx=start_idx)
    assert idx.shape == (xyz.shape[0], m)
    assert idx.dtype == torch.int64
    assert idx.device == xyz.device
    assert torch.equal(idx, fps_twin_batch(xyz, m, start_idx))
    assert bool((idx[:, 0] == start_idx).all())
    assert bool(((idx >= 0) & (idx < xyz.shape[1])).all())
    for cloud, cloud_idx in zip(xyz, idx, strict=True):
        if num_distinct(cloud) >= m:
            assert len(set(cloud_idx.tolist())) == m


def test_fps_identical_points_tie_rule() -> None:
    xyz = torch.ones(2, 6, 3)
    idx = farthest_point_sample(xyz, 4, start_idx=2)
    assert idx.tolist() == [[2, 0, 0, 0]] * 2


def test_fps_simple_line() -> None:
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0], [4, 0, 0]]])
    assert farthest_point_sample(xyz, 5).tolist() == [[0, 3, 4, 2, 1]]


def test_fps_non_contiguous_input_and_no_grad() -> None:
    base = torch.randn(2, 3, 50, requires_grad=True)
    xyz = base.transpose(1, 2)  # (2, 50, 3), non-contiguous
    idx = farthest_point_sample(xyz, 10, start_idx=7)
    assert not idx.requires_grad
    assert torch.equal(idx, fps_twin_batch(xyz, 10, 7))


# --------------------------------------------------------------------------------------------------
# knn
# --------------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(case=knn_cases())
@example(case=(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), 4))  # all identical, M == N == k
def test_knn_matches_twin(case: tuple[torch.Tensor, torch.Tensor, int]) -> None:
    query, points, k = case
    res = knn(query, points, k)
    assert isinstance(res, KNNResult)
    b, m = query.shape[:2]
    assert res.sq_dist.shape == res.idx.shape == (b, m, k)
    assert res.idx.dtype == torch.int64
    assert res.sq_dist.dtype == query.dtype
    assert res.idx.device == res.sq_dist.device == query.device
    want_d, want_i = knn_twin_batch(query, points, k)
    assert torch.equal(res.idx, want_i)
    assert torch.equal(res.sq_dist, want_d)
    assert bool((res.sq_dist[..., 1:] >= res.sq_dist[..., :-1]).all())  # ascending


@HYPOTHESIS
@given(points=clouds())
def test_knn_query_in_points_comes_first(points: torch.Tensor) -> None:
    res = knn(points, points, points.shape[1])
    first = torch.gather(points, 1, res.idx[..., 0, None].expand(-1, -1, 3))
    assert torch.equal(first, points)  # the nearest point coincides with the query ...
    assert bool((res.sq_dist[..., 0] == 0).all())  # ... at distance exactly 0
    for cloud, cloud_idx in zip(points, res.idx, strict=True):
        if num_distinct(cloud) == cloud.shape[0]:
            assert torch.equal(cloud_idx[:, 0], torch.arange(cloud.shape[0]))


def test_knn_ties_go_to_lowest_index() -> None:
    points = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [0, 0, 0], [2, 0, 0]]])
    query = torch.zeros(1, 1, 3)
    res = knn(query, points, 3)
    assert res.idx.tolist() == [[[4, 0, 1]]]
    assert res.sq_dist.tolist() == [[[0.0, 1.0, 1.0]]]


def test_knn_large_ties_are_exact() -> None:
    # Far more tied candidates than k, so topk alone would be ambiguous on many rows.
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.integers(-1, 2, (2, 500, 3)).astype(np.float32))
    query = torch.from_numpy(rng.integers(-1, 2, (2, 40, 3)).astype(np.float32))
    res = knn(query, points, 17)
    want_d, want_i = knn_twin_batch(query, points, 17)
    assert torch.equal(res.idx, want_i)
    assert torch.equal(res.sq_dist, want_d)


def test_knn_empty_queries() -> None:
    res = knn(torch.zeros(2, 0, 3), torch.randn(2, 5, 3), 3)
    assert res.sq_dist.shape == res.idx.shape == (2, 0, 3)


def test_empty_batch() -> None:
    xyz = torch.zeros(0, 5, 3)
    assert farthest_point_sample(xyz, 3).shape == (0, 3)
    assert knn(xyz, xyz, 2).idx.shape == (0, 5, 2)
    neighborhood, centers = group(xyz, 2, 4)
    assert neighborhood.shape == (0, 2, 4, 3)
    assert centers.shape == (0, 2, 3)


# --------------------------------------------------------------------------------------------------
# group
# --------------------------------------------------------------------------------------------------


@st.composite
def group_cases(draw: st.DrawFn) -> tuple[torch.Tensor, int, int, int]:
    xyz = draw(clouds())
    n = xyz.shape[1]
    g = draw(st.one_of(st.just(n), st.integers(1, n)))
    k = draw(st.one_of(st.just(n), st.integers(1, n)))
    return xyz, g, k, draw(st.integers(0, n - 1))


@HYPOTHESIS
@given(case=group_cases())
def test_group_matches_twin(case: tuple[torch.Tensor, int, int, int]) -> None:
    xyz, g, k, start_idx = case
    res = group(xyz, g, k, start_idx=start_idx)
    assert isinstance(res, GroupResult)
    b = xyz.shape[0]
    assert res.neighborhood.shape == (b, g, k, 3)
    assert res.centers.shape == (b, g, 3)
    assert res.neighborhood.dtype == res.centers.dtype == xyz.dtype
    assert res.neighborhood.device == res.centers.device == xyz.device

    center_idx = fps_twin_batch(xyz, g, start_idx)
    centers = torch.stack([cloud[ci] for cloud, ci in zip(xyz, center_idx, strict=True)])
    _, nb_idx = knn_twin_batch(centers, xyz, k)
    neighbours = torch.stack([cloud[ni] for cloud, ni in zip(xyz, nb_idx, strict=True)])
    assert torch.equal(res.centers, centers)
    assert torch.equal(res.neighborhood, neighbours - centers[:, :, None, :])
    assert bool((res.neighborhood[:, :, 0] == 0).all())  # each center is in its own group


def test_group_point_mae_shapes() -> None:
    xyz = torch.randn(4, 1024, 3)
    neighborhood, centers = group(xyz, 64, 32)
    assert neighborhood.shape == (4, 64, 32, 3)
    assert centers.shape == (4, 64, 3)


# --------------------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1, 7, 100, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_chunking_is_invisible(monkeypatch: pytest.MonkeyPatch, budget: int, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(1)
    points = torch.from_numpy(rng.integers(-2, 3, (3, 60, 3)).astype(np.float64)).to(dtype)
    query = torch.cat([points[:, :20], torch.randn(3, 13, 3, dtype=dtype)], dim=1)
    ref_knn = knn(query, points, 9)
    ref_group = group(points, 20, 8, start_idx=5)
    monkeypatch.setattr(torch_backend, "_MAX_CHUNK_ELEMENTS", budget)
    small_knn = knn(query, points, 9)
    small_group = group(points, 20, 8, start_idx=5)
    assert torch.equal(small_knn.idx, ref_knn.idx)
    assert torch.equal(small_knn.sq_dist, ref_knn.sq_dist)
    assert torch.equal(small_group.neighborhood, ref_group.neighborhood)
    assert torch.equal(small_group.centers, ref_group.centers)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run with one intra-op thread.

    The FPS loop issues thousands of small elementwise kernels; with OpenMP intra-op parallelism on
    an oversubscribed CPU (other processes busy on the same cores) every kernel waits at a barrier
    for a descheduled worker, which was measured to slow this test down by ~50x. One thread costs
    little here and keeps the runtime predictable.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.mark.usefixtures("single_thread")
def test_large_cloud_is_memory_bounded() -> None:
    # N = 100k, M = 4096: a dense (M, N) distance matrix would be 1.6 GB; chunking keeps it small.
    n, m, k = 100_000, 4_096, 32
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(1, n, 3, generator=gen)
    query_idx = torch.randperm(n, generator=gen)[:m]
    query = points[:, query_idx]

    res = knn(query, points, k)
    assert res.idx.shape == res.sq_dist.shape == (1, m, k)
    assert bool(((res.idx >= 0) & (res.idx < n)).all())
    assert bool((res.sq_dist[..., 1:] >= res.sq_dist[..., :-1]).all())
    assert torch.equal(res.idx[0, :, 0], query_idx)
    assert bool((res.sq_dist[..., 0] == 0).all())
    rows = [0, 1234, m - 1]
    want_d, want_i = knn_twin(query[0, rows].numpy(), points[0].numpy(), k)
    assert torch.equal(res.idx[0, rows], torch.from_numpy(want_i))
    assert torch.equal(res.sq_dist[0, rows], torch.from_numpy(want_d))

    neighborhood, centers = group(points, m, k)
    assert neighborhood.shape == (1, m, k, 3)
    assert centers.shape == (1, m, 3)
    assert bool((neighborhood[:, :, 0] == 0).all())
    assert torch.isfinite(neighborhood).all()


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

P = torch.randn(2, 10, 3)
Q = torch.randn(2, 4, 3)


def _with(value: float, where: str = "points") -> torch.Tensor:
    t = (P if where == "points" else Q).clone()
    t[1, 2, 1] = value
    return t


BAD_INPUTS = [
    # farthest_point_sample
    (lambda: farthest_point_sample([[0.0, 0.0, 0.0]], 1), TypeError, r"xyz must be a torch\.Tensor"),
    (lambda: farthest_point_sample(P.long(), 1), TypeError, r"xyz must have a floating-point dtype.*int64"),
    (lambda: farthest_point_sample(P > 0, 1), TypeError, r"xyz must have a floating-point dtype.*bool"),
    (
        lambda: farthest_point_sample(torch.zeros(4, 100, 2), 1),
        ValueError,
        r"xyz must have shape \(B, N, 3\), got \(4, 100, 2\)",
    ),
    (
        lambda: farthest_point_sample(torch.zeros(10, 3), 1),
        ValueError,
        r"xyz must have shape \(B, N, 3\), got \(10, 3\)",
    ),
    (
        lambda: farthest_point_sample(torch.zeros(2, 0, 3), 1),
        ValueError,
        r"xyz must contain at least one point",
    ),
    (lambda: farthest_point_sample(P, 0), ValueError, r"num_samples must be in \[1, N\] = \[1, 10\], got 0"),
    (
        lambda: farthest_point_sample(P, 11),
        ValueError,
        r"num_samples must be in \[1, N\] = \[1, 10\], got 11",
    ),
    (lambda: farthest_point_sample(P, True), TypeError, r"num_samples must be an int, got bool"),
    (lambda: farthest_point_sample(P, 2.0), TypeError, r"num_samples must be an int, got float"),
    (
        lambda: farthest_point_sample(P, 2, start_idx=-1),
        ValueError,
        r"start_idx must be in \[0, N - 1\].*got -1",
    ),
    (
        lambda: farthest_point_sample(P, 2, start_idx=10),
        ValueError,
        r"start_idx must be in \[0, N - 1\].*got 10",
    ),
    (lambda: farthest_point_sample(P, 2, start_idx=False), TypeError, r"start_idx must be an int, got bool"),
    (lambda: farthest_point_sample(_with(float("nan")), 2), ValueError, r"xyz must contain only finite"),
    (lambda: farthest_point_sample(_with(float("inf")), 2), ValueError, r"xyz must contain only finite"),
    # knn
    (lambda: knn(Q.numpy(), P, 1), TypeError, r"query must be a torch\.Tensor.*ndarray"),
    (lambda: knn(Q, P.int(), 1), TypeError, r"points must have a floating-point dtype.*int32"),
    (lambda: knn(Q, P.double(), 1), TypeError, r"query and points must have the same dtype"),
    (lambda: knn(Q[:1], P, 1), ValueError, r"query and points must have the same batch size B, got 1 and 2"),
    (lambda: knn(Q, P.to("meta"), 1), ValueError, r"query and points must be on the same device"),
    (lambda: knn(Q[..., :2], P, 1), ValueError, r"query must have shape \(B, N, 3\), got \(2, 4, 2\)"),
    (lambda: knn(Q, P[None], 1), ValueError, r"points must have shape \(B, N, 3\), got \(1, 2, 10, 3\)"),
    (lambda: knn(Q, P[:, :0], 1), ValueError, r"points must contain at least one point"),
    (lambda: knn(Q, P, 0), ValueError, r"k must be in \[1, N\] = \[1, 10\], got 0"),
    (lambda: knn(Q, P, 11), ValueError, r"k must be in \[1, N\] = \[1, 10\], got 11"),
    (lambda: knn(Q, P, True), TypeError, r"k must be an int, got bool"),
    (lambda: knn(Q, P, None), TypeError, r"k must be an int, got NoneType"),
    (lambda: knn(_with(float("nan"), "query"), P, 1), ValueError, r"query must contain only finite"),
    (lambda: knn(Q, _with(float("-inf")), 1), ValueError, r"points must contain only finite"),
    # group
    (lambda: group("xyz", 1, 1), TypeError, r"xyz must be a torch\.Tensor.*str"),
    (lambda: group(P.to(torch.int8), 1, 1), TypeError, r"xyz must have a floating-point dtype"),
    (lambda: group(P[0], 1, 1), ValueError, r"xyz must have shape \(B, N, 3\), got \(10, 3\)"),
    (lambda: group(P[:, :0], 1, 1), ValueError, r"xyz must contain at least one point"),
    (lambda: group(P, 0, 1), ValueError, r"num_group must be in \[1, N\] = \[1, 10\], got 0"),
    (lambda: group(P, 11, 1), ValueError, r"num_group must be in \[1, N\] = \[1, 10\], got 11"),
    (lambda: group(P, True, 1), TypeError, r"num_group must be an int, got bool"),
    (lambda: group(P, 2, 0), ValueError, r"group_size must be in \[1, N\] = \[1, 10\], got 0"),
    (lambda: group(P, 2, 11), ValueError, r"group_size must be in \[1, N\] = \[1, 10\], got 11"),
    (lambda: group(P, 2, 3.5), TypeError, r"group_size must be an int, got float"),
    (lambda: group(P, 2, 3, start_idx=10), ValueError, r"start_idx must be in \[0, N - 1\].*got 10"),
    (lambda: group(_with(float("nan")), 2, 3), ValueError, r"xyz must contain only finite"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_INPUTS)
def test_bad_inputs_raise(call, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_numpy_integers_are_accepted() -> None:
    assert farthest_point_sample(P, np.int64(3), start_idx=np.int32(1)).shape == (2, 3)


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------


def test_knn_gradcheck() -> None:
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    points = torch.randn(2, 7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, p: knn(q, p, 3).sq_dist, (query, points))
    res = knn(query, points, 3)
    assert res.sq_dist.requires_grad
    assert not res.idx.requires_grad


def test_group_gradcheck() -> None:
    gen = torch.Generator().manual_seed(4)
    xyz = torch.randn(2, 9, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: tuple(group(x, 3, 4, start_idx=2)), (xyz,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_knn_grad_matches_twin_autograd(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    query = torch.randn(2, 5, 3, generator=gen).to(dtype).requires_grad_()
    points = torch.randn(2, 11, 3, generator=gen).to(dtype).requires_grad_()
    res = knn(query, points, 4)
    weights = torch.randn(res.sq_dist.shape, generator=gen)
    gq, gp = torch.autograd.grad((res.sq_dist.float() * weights).sum(), (query, points))

    # Twin: the same selection, distances written out with plain float64 autograd.
    q64 = query.detach().double().requires_grad_()
    p64 = points.detach().double().requires_grad_()
    nb = torch.stack([p64[i, res.idx[i]] for i in range(2)])  # (B, M, k, 3)
    d64 = ((nb - q64[:, :, None]) ** 2).sum(-1)
    wq, wp = torch.autograd.grad((d64 * weights.double()).sum(), (q64, p64))
    tol = (
        {"atol": 1e-5, "rtol": 1e-5}
        if dtype in (torch.float32, torch.float64)
        else {"atol": 0.05, "rtol": 0.02}
    )
    assert gq.dtype == query.dtype and gp.dtype == points.dtype
    torch.testing.assert_close(gq.double(), wq, **tol)
    torch.testing.assert_close(gp.double(), wp, **tol)


def test_public_names() -> None:
    assert sorted(ops.__all__) == ["GroupResult", "KNNResult", "farthest_point_sample", "group", "knn"]
