"""Tests for ``pointpeft.ops``: brute-force twins, hypothesis properties, validation, gradients."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pointpeft import ops
from pointpeft.ops import GroupResult, KNNResult, farthest_point_sample, group, knn, torch_backend

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HYPOTHESIS = settings(max_examples=100, deadline=None)
RAGGED = settings(max_examples=60, deadline=None)


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


@HYPOTHESIS
@given(case=fps_cases())
def test_fps_without_the_value_check_gives_the_same_indices(case: tuple[torch.Tensor, int, int]) -> None:
    xyz, m, start_idx = case
    checked = farthest_point_sample(xyz, m, start_idx=start_idx)
    assert torch.equal(farthest_point_sample(xyz, m, start_idx=start_idx, check_values=False), checked)


def test_fps_check_values_skips_only_the_value_check() -> None:
    xyz = torch.rand(2, 20, 3)
    xyz[1, 4, 0] = float("nan")
    with pytest.raises(ValueError, match="xyz must contain only finite coordinates"):
        farthest_point_sample(xyz, 5)
    assert farthest_point_sample(xyz, 5, check_values=False).shape == (2, 5)  # the caller's promise
    with pytest.raises(ValueError, match="num_samples"):  # the other checks still run
        farthest_point_sample(xyz, 21, check_values=False)
    with pytest.raises(TypeError, match="check_values must be a bool, got int 1"):
        farthest_point_sample(xyz, 5, check_values=1)


def test_fps_identical_points_tie_rule() -> None:
    xyz = torch.ones(2, 6, 3)
    idx = farthest_point_sample(xyz, 4, start_idx=2)
    assert idx.tolist() == [[2, 0, 0, 0]] * 2


def test_fps_simple_line() -> None:
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0], [4, 0, 0]]])
    assert farthest_point_sample(xyz, 5).tolist() == [[0, 3, 4, 2, 1]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_overflowing_and_tied_distances(dtype: torch.dtype) -> None:
    # Squared distances that overflow to +inf (ties among infinities), exact zeros and repeated
    # maxima: the first-maximum search must still return the lowest index, like numpy's argmax.
    big = 1e20 if dtype == torch.float32 else 1e160
    line = [0.0, big, -big, 2 * big, 5.0, 5.0, -big, 0.0, 3.0, -3.0]
    xyz = torch.tensor([[[v, 0.0, 0.0] for v in line], [[0.0, v, -v] for v in reversed(line)]], dtype=dtype)
    for start_idx in (0, 3, 7):
        with np.errstate(over="ignore", invalid="ignore"):
            want = fps_twin_batch(xyz, len(line), start_idx)
        # The public op refuses coordinates this large (tests/test_hostile_ops.py); the backend's
        # first-maximum search among infinities is what this test is about.
        assert torch.equal(torch_backend.farthest_point_sample(xyz, len(line), start_idx, None), want)


def test_fps_non_contiguous_input_and_no_grad() -> None:
    base = torch.randn(2, 3, 50, requires_grad=True)
    xyz = base.transpose(1, 2)  # (2, 50, 3), non-contiguous
    idx = farthest_point_sample(xyz, 10, start_idx=7)
    assert not idx.requires_grad
    assert torch.equal(idx, fps_twin_batch(xyz, 10, 7))


# --------------------------------------------------------------------------------------------------
# knn
# --------------------------------------------------------------------------------------------------


def knn_or_overflow(query: torch.Tensor, points: torch.Tensor, k: int, **lengths: object) -> KNNResult | None:
    """``knn(...)``, or None where float16 squared distances do not fit float16: the op must then refuse,
    and the same neighbours in float32 must indeed lie beyond float16's largest value."""
    try:
        return knn(query, points, k, **lengths)  # type: ignore[arg-type]
    except ValueError as error:
        if query.dtype != torch.float16 or "knn cannot return sq_dist" not in str(error):
            raise
    wide = knn(query.float(), points.float(), k, **lengths)  # type: ignore[arg-type]
    assert float(wide.sq_dist.max()) > torch.finfo(torch.float16).max
    return None


@HYPOTHESIS
@given(case=knn_cases())
@example(case=(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), 4))  # all identical, M == N == k
def test_knn_matches_twin(case: tuple[torch.Tensor, torch.Tensor, int]) -> None:
    query, points, k = case
    res = knn_or_overflow(query, points, k)
    if res is None:
        return
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
    res = knn_or_overflow(points, points, points.shape[1])
    if res is None:
        return
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
    monkeypatch.setattr(torch_backend, "MAX_CHUNK_ELEMENTS", budget)
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
# Ragged batches (lengths): each cloud must come out as if run alone, truncated to its length
# --------------------------------------------------------------------------------------------------

PAD_FILLS = ("nan", "inf", "huge", "random")


def fill_padding(xyz: torch.Tensor, lengths: list[int], fill: str, seed: int = 0) -> torch.Tensor:
    """A copy of ``xyz`` whose padding points (index >= lengths[b]) hold garbage of kind ``fill``."""
    xyz = xyz.clone()
    gen = torch.Generator().manual_seed(seed)
    for b, length in enumerate(lengths):
        pad = xyz[b, length:]
        if fill == "nan":
            pad.fill_(float("nan"))
        elif fill == "inf":
            pad.copy_(torch.where(torch.rand(pad.shape, generator=gen) < 0.5, float("inf"), float("-inf")))
        elif fill == "huge":
            pad.fill_(-torch.finfo(xyz.dtype).max)  # finite, but any distance to it overflows
        else:  # plausible points: would be picked if the padding leaked
            pad.copy_(torch.randn(pad.shape, generator=gen) * 1e3)
    return xyz


@st.composite
def ragged_clouds(draw: st.DrawFn, min_length: int = 0) -> tuple[torch.Tensor, list[int]]:
    xyz = draw(clouds(max_n=30))
    b, n, _ = xyz.shape
    low = min(min_length, n)
    lengths = draw(st.lists(st.one_of(st.just(n), st.integers(low, n)), min_size=b, max_size=b))
    fill = draw(st.sampled_from(PAD_FILLS))
    return fill_padding(xyz, lengths, fill, draw(st.integers(0, 1000))), lengths


def as_lengths(lengths: list[int], draw: st.DrawFn) -> torch.Tensor:
    return torch.tensor(lengths, dtype=draw(st.sampled_from([torch.int64, torch.int32])))


@RAGGED
@given(case=ragged_clouds(), data=st.data())
def test_fps_ragged_matches_each_cloud_alone(
    case: tuple[torch.Tensor, list[int]], data: st.DataObject
) -> None:
    xyz, lengths = case
    b, n, _ = xyz.shape
    m = data.draw(st.one_of(st.just(n), st.integers(1, n)))
    bound = min([length for length in lengths if length > 0], default=n)
    start_idx = data.draw(st.integers(0, bound - 1))
    idx = farthest_point_sample(xyz, m, start_idx=start_idx, lengths=as_lengths(lengths, data.draw))
    assert idx.shape == (b, m)
    assert idx.dtype == torch.int64
    for cloud, length, row in zip(xyz, lengths, idx, strict=True):
        want = torch.full((m,), -1, dtype=torch.long)
        if length > 0:
            count = min(m, length)
            want[:count] = farthest_point_sample(cloud[None, :length], count, start_idx=start_idx)[0]
        assert torch.equal(row, want)


@RAGGED
@given(case=ragged_clouds(), data=st.data())
def test_knn_ragged_matches_each_cloud_alone(
    case: tuple[torch.Tensor, list[int]], data: st.DataObject
) -> None:
    points, point_lengths = case
    b, n, _ = points.shape
    k = data.draw(st.one_of(st.just(n), st.integers(1, n)))
    if data.draw(st.booleans()):  # query == points, same lengths
        query, query_lengths = points, list(point_lengths)
    else:
        m = data.draw(st.integers(0, 12))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        query = torch.from_numpy(rng.standard_normal((b, m, 3))).to(points.dtype)
        query_lengths = data.draw(st.lists(st.integers(0, m), min_size=b, max_size=b))
        query = fill_padding(query, query_lengths, data.draw(st.sampled_from(PAD_FILLS)))
    m = query.shape[1]
    pass_query_lengths = data.draw(st.booleans()) or any(length < m for length in query_lengths)
    res = knn_or_overflow(
        query,
        points,
        k,
        query_lengths=as_lengths(query_lengths, data.draw) if pass_query_lengths else None,
        point_lengths=as_lengths(point_lengths, data.draw),
    )
    if res is None:
        return
    assert res.idx.shape == res.sq_dist.shape == (b, m, k)
    assert res.idx.dtype == torch.int64
    assert res.sq_dist.dtype == points.dtype
    for i in range(b):
        want_idx = torch.full((m, k), -1, dtype=torch.long)
        want_d = torch.zeros((m, k), dtype=points.dtype)
        q_len, p_len = query_lengths[i], point_lengths[i]
        if q_len > 0 and p_len > 0:
            count = min(k, p_len)
            alone = knn(query[i : i + 1, :q_len], points[i : i + 1, :p_len], count)
            want_idx[:q_len, :count] = alone.idx[0]
            want_d[:q_len, :count] = alone.sq_dist[0]
        assert torch.equal(res.idx[i], want_idx)
        assert torch.equal(res.sq_dist[i], want_d)


@RAGGED
@given(case=ragged_clouds(min_length=1), data=st.data())
def test_group_ragged_matches_each_cloud_alone(
    case: tuple[torch.Tensor, list[int]], data: st.DataObject
) -> None:
    xyz, lengths = case
    shortest = min(lengths)
    g = data.draw(st.one_of(st.just(shortest), st.integers(1, shortest)))
    k = data.draw(st.one_of(st.just(shortest), st.integers(1, shortest)))
    start_idx = data.draw(st.integers(0, shortest - 1))
    res = group(xyz, g, k, start_idx=start_idx, lengths=as_lengths(lengths, data.draw))
    assert res.neighborhood.shape == (xyz.shape[0], g, k, 3)
    assert res.centers.shape == (xyz.shape[0], g, 3)
    for i, length in enumerate(lengths):
        alone = group(xyz[i : i + 1, :length], g, k, start_idx=start_idx)
        assert torch.equal(res.centers[i], alone.centers[0])
        assert torch.equal(res.neighborhood[i], alone.neighborhood[0])


def test_fps_ragged_simple() -> None:
    nan = float("nan")
    xyz = torch.tensor(
        [
            [[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0], [4, 0, 0]],
            [[0.0, 0, 0], [1, 0, 0], [nan, nan, nan], [100, 0, 0], [4, 0, 0]],
            [[nan, 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0], [4, 0, 0]],
        ]
    )
    idx = farthest_point_sample(xyz, 4, lengths=torch.tensor([5, 2, 0]))
    assert idx.tolist() == [[0, 3, 4, 2], [0, 1, -1, -1], [-1, -1, -1, -1]]


def test_knn_ragged_simple() -> None:
    points = torch.tensor([[[0.0, 0, 0], [3, 0, 0], [1, 0, 0], [float("nan"), 0, 0]]])
    query = torch.tensor([[[2.9, 0, 0], [float("inf"), 0, 0]]])
    res = knn(query, points, 4, query_lengths=torch.tensor([1]), point_lengths=torch.tensor([3]))
    assert res.idx.tolist() == [[[1, 2, 0, -1], [-1, -1, -1, -1]]]
    want = torch.tensor([[[0.1, 1.9, 2.9, 0.0], [0.0] * 4]]) ** 2
    torch.testing.assert_close(res.sq_dist, want)
    assert res.sq_dist[0, 0, 3] == 0 and bool((res.sq_dist[0, 1] == 0).all())


def test_full_lengths_equal_no_lengths() -> None:
    gen = torch.Generator().manual_seed(7)
    xyz = torch.randn(3, 40, 3, generator=gen)
    full = torch.full((3,), 40)
    assert torch.equal(farthest_point_sample(xyz, 9, lengths=full), farthest_point_sample(xyz, 9))
    a, b = knn(xyz, xyz, 5, query_lengths=full, point_lengths=full.int()), knn(xyz, xyz, 5)
    assert torch.equal(a.idx, b.idx) and torch.equal(a.sq_dist, b.sq_dist)
    a, b = group(xyz, 8, 6, lengths=full), group(xyz, 8, 6)
    assert torch.equal(a.neighborhood, b.neighborhood) and torch.equal(a.centers, b.centers)


def test_start_idx_may_exceed_empty_lengths() -> None:
    xyz = torch.randn(3, 8, 3)
    idx = farthest_point_sample(xyz, 3, start_idx=4, lengths=torch.tensor([0, 5, 8]))
    assert idx[0].tolist() == [-1, -1, -1]
    assert idx[1:, 0].tolist() == [4, 4]


@pytest.mark.parametrize("budget", [1, 7, 1000])
def test_ragged_chunking_is_invisible(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    rng = np.random.default_rng(2)
    points = torch.from_numpy(rng.integers(-2, 3, (3, 50, 3)).astype(np.float32))
    lengths = torch.tensor([50, 17, 3])
    points = fill_padding(points, lengths.tolist(), "nan")
    query = torch.cat([points[:, :10], torch.randn(3, 6, 3)], dim=1)
    query_lengths = torch.tensor([16, 0, 3])
    ref = knn(query, points, 8, query_lengths=query_lengths, point_lengths=lengths)
    ref_group = group(points, 3, 3, lengths=lengths)
    monkeypatch.setattr(torch_backend, "MAX_CHUNK_ELEMENTS", budget)
    small = knn(query, points, 8, query_lengths=query_lengths, point_lengths=lengths)
    small_group = group(points, 3, 3, lengths=lengths)
    assert torch.equal(small.idx, ref.idx)
    assert torch.equal(small.sq_dist, ref.sq_dist)
    assert torch.equal(small_group.neighborhood, ref_group.neighborhood)
    assert torch.equal(small_group.centers, ref_group.centers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ragged_gradients_ignore_nan_padding(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    lengths = torch.tensor([7, 2])
    query_lengths = torch.tensor([3, 1])
    points = fill_padding(torch.randn(2, 9, 3, generator=gen, dtype=dtype), lengths.tolist(), "nan")
    query = fill_padding(torch.randn(2, 4, 3, generator=gen, dtype=dtype), query_lengths.tolist(), "nan")
    points.requires_grad_()
    query.requires_grad_()
    res = knn(query, points, 4, query_lengths=query_lengths, point_lengths=lengths)
    assert bool(torch.isfinite(res.sq_dist).all())
    gq, gp = torch.autograd.grad(res.sq_dist.sum(), (query, points))
    assert bool(torch.isfinite(gq).all()) and bool(torch.isfinite(gp).all())
    for i in range(2):
        assert bool((gq[i, query_lengths[i] :] == 0).all())
        assert bool((gp[i, lengths[i] :] == 0).all())
    # Valid slots have the same gradient as the unragged computation on the truncated clouds.
    q0 = query.detach()[:1, :3].requires_grad_()
    p0 = points.detach()[:1, :7].requires_grad_()
    alone = knn(q0, p0, 4)
    wq, wp = torch.autograd.grad(alone.sq_dist.sum(), (q0, p0))
    torch.testing.assert_close(gq[:1, :3], wq)
    torch.testing.assert_close(gp[:1, :7], wp)

    xyz = fill_padding(torch.randn(2, 9, 3, generator=gen, dtype=dtype), [9, 5], "nan").requires_grad_()
    neighborhood, centers = group(xyz, 3, 4, lengths=torch.tensor([9, 5]))
    (gx,) = torch.autograd.grad(neighborhood.sum() + centers.sum(), (xyz,))
    assert bool(torch.isfinite(gx).all())
    assert bool((gx[1, 5:] == 0).all())


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
    # lengths
    (
        lambda: farthest_point_sample(P, 2, lengths=[10, 10]),
        TypeError,
        r"lengths must be None or an int64 torch\.Tensor of shape \(B,\), got list",
    ),
    (
        lambda: farthest_point_sample(P, 2, lengths=torch.tensor([10.0, 10.0])),
        TypeError,
        r"lengths must have dtype int64 or int32, got torch\.float32",
    ),
    (
        lambda: farthest_point_sample(P, 2, lengths=torch.tensor([True, True])),
        TypeError,
        r"lengths must have dtype int64 or int32, got torch\.bool",
    ),
    (
        lambda: farthest_point_sample(P, 2, lengths=torch.tensor([[10], [10]])),
        ValueError,
        r"lengths must have shape \(B,\) = \(2,\) to match xyz, got \(2, 1\)",
    ),
    (
        lambda: farthest_point_sample(P, 2, lengths=torch.tensor([10, 10, 10])),
        ValueError,
        r"lengths must have shape \(B,\) = \(2,\) to match xyz, got \(3,\)",
    ),
    (
        lambda: farthest_point_sample(P, 2, lengths=torch.tensor(10)),
        ValueError,
        r"lengths must have shape \(B,\) = \(2,\) to match xyz, got \(\)",
    ),
    (
        lambda: farthest_point_sample(P, 2, lengths=torch.tensor([10, 11])),
        ValueError,
        r"lengths must have values in \[0, N\] = \[0, 10\], got values in \[10, 11\]",
    ),
    (
        lambda: farthest_point_sample(P, 2, lengths=torch.tensor([-1, 3], dtype=torch.int32)),
        ValueError,
        r"lengths must have values in \[0, N\] = \[0, 10\], got values in \[-1, 3\]",
    ),
    (
        lambda: farthest_point_sample(P, 2, lengths=torch.tensor([10, 10], device="meta")),
        ValueError,
        r"lengths and xyz must be on the same device, got meta and cpu",
    ),
    (
        lambda: farthest_point_sample(P, 2, start_idx=5, lengths=torch.tensor([10, 5])),
        ValueError,
        r"start_idx must be < lengths\[b\] for every cloud b with lengths\[b\] > 0, "
        r"got start_idx = 5 and lengths\[1\] = 5",
    ),
    (
        lambda: farthest_point_sample(_with(float("nan")), 2, lengths=torch.tensor([10, 3])),
        ValueError,
        r"xyz must contain only finite coordinates at its valid points",
    ),
    (
        lambda: knn(Q, P, 1, query_lengths=torch.tensor([4, 5])),
        ValueError,
        r"query_lengths must have values in \[0, M\] = \[0, 4\], got values in \[4, 5\]",
    ),
    (
        lambda: knn(Q, P, 1, query_lengths=torch.tensor([4])),
        ValueError,
        r"query_lengths must have shape \(B,\) = \(2,\) to match query, got \(1,\)",
    ),
    (
        lambda: knn(Q, P, 1, point_lengths=torch.tensor([1.0, 2.0], dtype=torch.float64)),
        TypeError,
        r"point_lengths must have dtype int64 or int32, got torch\.float64",
    ),
    (
        lambda: knn(Q, P, 1, point_lengths=torch.tensor([0, 11])),
        ValueError,
        r"point_lengths must have values in \[0, N\] = \[0, 10\], got values in \[0, 11\]",
    ),
    (
        lambda: knn(Q, P, 1, point_lengths=torch.tensor([10, 10], device="meta")),
        ValueError,
        r"point_lengths and points must be on the same device",
    ),
    (
        lambda: knn(_with(float("inf"), "query"), P, 1, query_lengths=torch.tensor([4, 3])),
        ValueError,
        r"query must contain only finite coordinates at its valid points",
    ),
    (
        lambda: knn(Q, _with(float("nan")), 1, point_lengths=torch.tensor([10, 3])),
        ValueError,
        r"points must contain only finite coordinates at its valid points",
    ),
    (lambda: knn(Q, P, 11, point_lengths=torch.tensor([10, 3])), ValueError, r"k must be in \[1, N\]"),
    (
        lambda: group(P, 6, 2, lengths=torch.tensor([10, 5])),
        ValueError,
        r"num_group must be <= min\(lengths\) = 5 .*got 6",
    ),
    (
        lambda: group(P, 2, 6, lengths=torch.tensor([5, 10], dtype=torch.int32)),
        ValueError,
        r"group_size must be <= min\(lengths\) = 5 .*got 6",
    ),
    (
        lambda: group(P, 1, 1, lengths=torch.tensor([0, 10])),
        ValueError,
        r"num_group must be <= min\(lengths\) = 0",
    ),
    (
        lambda: group(P, 2, 2, start_idx=4, lengths=torch.tensor([10, 4])),
        ValueError,
        r"start_idx must be < lengths\[b\].*lengths\[1\] = 4",
    ),
    (lambda: group(P, 2, 2, lengths=torch.tensor([10, 12])), ValueError, r"lengths must have values in"),
    (lambda: group(P, 2, 2, lengths=(10, 10)), TypeError, r"lengths must be None or an int64 torch\.Tensor"),
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
    assert sorted(ops.__all__) == [
        "GroupResult",
        "KNNResult",
        "available_backends",
        "farthest_point_sample",
        "group",
        "inverse_distance_weights",
        "knn",
        "three_interpolate",
    ]
