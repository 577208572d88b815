"""The Triton kernels against the pure-torch backend, bit for bit.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py before
triton is first imported), which is slow: sizes stay tiny. On a CUDA machine the same tests run the compiled
kernels on the GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")
ON_GPU = torch.cuda.is_available()
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from pointpeft.ops import torch_backend, triton_backend  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The interpreter is slow: few examples, and no shrinking (a failing example is reported as drawn).
SLOW = settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])


def assert_same_values(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-equal, except bfloat16 under the interpreter: its float32 -> bfloat16 conversion is not
    round-to-nearest-even as on the GPU, so allow one bfloat16 ulp there."""
    if got.dtype == torch.bfloat16 and not ON_GPU:
        torch.testing.assert_close(got, expected, rtol=2**-7, atol=0)
    else:
        assert torch.equal(got, expected)


def _cloud(seed: int, b: int, n: int, dtype: torch.dtype, duplicates: bool = False, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(b, n, 3, generator=gen) * 2 - 1) * scale
    if duplicates:  # many exact ties
        xyz = xyz[:, torch.randint(0, max(1, n // 3), (n,), generator=gen)]
    return xyz.to(dtype).to(DEVICE)


cloud_args = st.tuples(
    st.integers(0, 10_000),
    st.integers(1, 2),
    st.integers(1, 40),
    st.sampled_from(DTYPES),
    st.booleans(),
    st.sampled_from([1e-2, 1.0, 1e2]),
)


@SLOW
@given(args=cloud_args, data=st.data())
def test_fps_kernel_matches_torch(args, data):
    xyz = _cloud(*args)
    n = xyz.shape[1]
    m = data.draw(st.integers(1, n))
    start = data.draw(st.integers(0, n - 1))
    assert torch.equal(
        triton_backend.farthest_point_sample(xyz, m, start, None),
        torch_backend.farthest_point_sample(xyz, m, start, None),
    )


@SLOW
@given(args=cloud_args, data=st.data())
def test_streaming_fps_kernel_matches_torch(args, data):
    """Clouds too large for registers take the streaming kernel; force it on small clouds."""
    xyz = _cloud(*args)
    n = xyz.shape[1]
    m = data.draw(st.integers(1, n))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_backend, "MAX_REGISTER_POINTS", 8)
        # more programs than may run at once: the streaming kernel
        patch.setattr(triton_backend, "MULTI_CHUNK", 8)
        patch.setattr(triton_backend, "STREAM_BLOCK", 16)
        got = triton_backend.farthest_point_sample(xyz, m, 0, None)
    assert torch.equal(got, torch_backend.farthest_point_sample(xyz, m, 0, None))


@SLOW
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40), dtype=st.sampled_from(DTYPES), data=st.data())
def test_multi_program_fps_kernel_matches_torch(seed, n, dtype, data):
    """The kernel that splits large clouds over several programs, forced on a small cloud. (The
    interpreter runs one program at a time, so only the single-program grid can be run here; the GPU
    tests run it with many programs.)"""
    xyz = _cloud(seed, 1, n, dtype)
    m = data.draw(st.integers(1, n))
    start = data.draw(st.integers(0, n - 1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_backend, "MAX_REGISTER_POINTS", 0)
        patch.setattr(triton_backend, "MULTI_CHUNK", 64 if not ON_GPU else 16)
        got = triton_backend.farthest_point_sample(xyz, m, start, None)
    assert torch.equal(got, torch_backend.farthest_point_sample(xyz, m, start, None))


@SLOW
@given(args=cloud_args, data=st.data())
def test_knn_kernel_matches_torch(args, data):
    points = _cloud(*args)
    b, n, _ = points.shape
    k = data.draw(st.integers(1, min(n, 20)))
    m = data.draw(st.integers(1, 6))
    query = torch.cat([points[:, : min(m, n)], _cloud(args[0] + 1, b, m, points.dtype)], dim=1)[:, :m]
    sq_dist, idx = triton_backend.knn(query, points, k, None, None)
    expected_dist, expected_idx = torch_backend.knn(query, points, k, None, None)
    assert torch.equal(idx, expected_idx)
    assert_same_values(sq_dist, expected_dist)
    assert sq_dist.dtype == query.dtype and idx.dtype == torch.int64 and idx.device == query.device


@SLOW
@given(args=cloud_args, data=st.data())
def test_fused_group_kernel_matches_torch(args, data):
    xyz = _cloud(*args)
    n = xyz.shape[1]
    g = data.draw(st.integers(1, min(n, 6)))
    k = data.draw(st.integers(1, min(n, 20)))
    neighborhood, centers = triton_backend.group(xyz, g, k, 0, None)
    expected_neighborhood, expected_centers = torch_backend.group(xyz, g, k, 0, None)
    assert torch.equal(centers, expected_centers)
    assert_same_values(neighborhood, expected_neighborhood)


@SLOW
@given(args=cloud_args, n=st.integers(1, 120), data=st.data())
def test_kernels_skipping_tiles_match_torch(args, n, data):
    """Large clouds skip the tiles of points that cannot change a block's neighbours; forced on small
    clouds (many tiles of 16 for few neighbours, exact ties, ragged lengths), the same answer."""
    seed, b, _, dtype, duplicates, scale = args
    points = _cloud(seed, b, n, dtype, duplicates, scale)
    k = data.draw(st.integers(1, min(n, 6)))
    m = data.draw(st.integers(1, 6))
    query = torch.cat([points[:, : min(m, n)], _cloud(seed + 1, b, m, dtype, False, scale)], dim=1)[:, :m]
    lengths = torch.tensor([data.draw(st.integers(k, n)) for _ in range(b)], device=DEVICE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_backend, "SKIP_MIN_POINTS", 0)
        assert triton_backend.top_k_constants(k, n)["SKIP"]
        got = [
            triton_backend.knn(query, points, k, None, None),
            triton_backend.knn(query, points, k, None, lengths),
            triton_backend.group(points, min(m, n), k, 0, None),
        ]
    want = [
        torch_backend.knn(query, points, k, None, None),
        torch_backend.knn(query, points, k, None, lengths),
        torch_backend.group(points, min(m, n), k, 0, None),
    ]
    for (got_dist, got_idx), (want_dist, want_idx) in zip(got[:2], want[:2], strict=True):
        assert torch.equal(got_idx, want_idx)
        assert_same_values(got_dist, want_dist)
    assert torch.equal(got[2][1], want[2][1])
    assert_same_values(got[2][0], want[2][0])


def test_skipping_tiles_keeps_a_single_late_neighbour():
    """A tile with one point nearer than a query's k-th neighbour so far is merged: points 0-15 at
    distance 1, 16-47 at distance 2 (tiles that change nothing), point 48 alone in the last tile at
    distance 0.1. The query sits away from the origin, where the block's unused query slots are, so that
    no other query of the block finds a nearer point in the last tile."""
    gen = torch.Generator().manual_seed(3)
    direction = torch.nn.functional.normalize(torch.randn(1, 49, 3, generator=gen), dim=-1)
    radius = torch.cat([torch.ones(16), torch.full((32,), 2.0), torch.tensor([0.1])])
    query = torch.full((1, 1, 3), 5.0)
    points = (query + direction * radius[None, :, None]).to(DEVICE)
    query = query.to(DEVICE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triton_backend, "SKIP_MIN_POINTS", 0)
        sq_dist, idx = triton_backend.knn(query, points, 3, None, None)
    expected_dist, expected_idx = torch_backend.knn(query, points, 3, None, None)
    assert int(idx[0, 0, 0]) == 48
    assert torch.equal(idx, expected_idx) and torch.equal(sq_dist, expected_dist)


def test_knn_and_group_keep_gradients():
    gen = torch.Generator().manual_seed(0)
    points = (torch.rand(1, 20, 3, generator=gen, dtype=torch.float32)).to(DEVICE).requires_grad_()
    query = points[:, :3].detach().clone().requires_grad_()
    sq_dist, _ = triton_backend.knn(query, points, 4, None, None)
    sq_dist.sum().backward()
    assert points.grad is not None and query.grad is not None
    neighborhood, centers = triton_backend.group(points, 3, 4, 0, None)
    (neighborhood.sum() + centers.sum()).backward()


def test_unavailable_reason_names_the_problem():
    assert triton_backend.unavailable_reason(torch.zeros(1, 2, 3, device=DEVICE)) is None
    assert "float64" in triton_backend.unavailable_reason(
        torch.zeros(1, 2, 3, dtype=torch.float64, device=DEVICE)
    )


@SLOW
@given(seed=st.integers(0, 10_000), n=st.integers(2, 30), dtype=st.sampled_from(DTYPES), data=st.data())
def test_kernels_with_ragged_lengths_match_torch(seed, n, dtype, data):
    """Points past a cloud's length are never picked or returned, even when they hold NaN."""
    xyz = _cloud(seed, 2, n, dtype).clone()
    lengths = torch.tensor([data.draw(st.integers(1, n)), data.draw(st.integers(0, n))], device=DEVICE)
    for b in range(2):
        xyz[b, int(lengths[b]) :] = float("nan")
    m = data.draw(st.integers(1, n))
    assert torch.equal(
        triton_backend.farthest_point_sample(xyz, m, 0, lengths),
        torch_backend.farthest_point_sample(xyz, m, 0, lengths),
    )
    k = data.draw(st.integers(1, min(n, 8)))
    query = _cloud(seed + 1, 2, 4, dtype)
    query_lengths = torch.tensor([4, data.draw(st.integers(0, 4))], device=DEVICE)
    sq_dist, idx = triton_backend.knn(query, xyz, k, query_lengths, lengths)
    expected_dist, expected_idx = torch_backend.knn(query, xyz, k, query_lengths, lengths)
    assert torch.equal(idx, expected_idx)
    assert_same_values(sq_dist, expected_dist)
    group_lengths = torch.tensor([int(lengths[0]), n], device=DEVICE)  # group needs G, K <= every length
    grouped = xyz.clone()
    grouped[1] = _cloud(seed + 2, 1, n, dtype)[0]
    g = data.draw(st.integers(1, int(lengths[0])))
    kg = min(k, int(lengths[0]))
    neighborhood, centers = triton_backend.group(grouped, g, kg, 0, group_lengths)
    expected_neighborhood, expected_centers = torch_backend.group(grouped, g, kg, 0, group_lengths)
    assert torch.equal(centers, expected_centers)
    assert_same_values(neighborhood, expected_neighborhood)


def test_ragged_knn_gradients_stay_finite_with_nan_padding():
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(2, 12, 3, generator=gen)
    points[1, 5:] = float("nan")
    query = torch.rand(2, 3, 3, generator=gen)
    query[1, 2:] = float("nan")
    points, query = points.to(DEVICE).requires_grad_(), query.to(DEVICE).requires_grad_()
    lengths = torch.tensor([12, 5], device=DEVICE)
    sq_dist, idx = triton_backend.knn(query, points, 8, torch.tensor([3, 2], device=DEVICE), lengths)
    assert bool((idx[1, :, 5:] == -1).all()) and bool((sq_dist[1, :, 5:] == 0).all())
    sq_dist.sum().backward()
    assert torch.isfinite(points.grad).all() and torch.isfinite(query.grad).all()
