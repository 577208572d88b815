"""Feature propagation: knn(k=3) + inverse_distance_weights + three_interpolate against the computation
written out point by point (PointNet++'s propagation, as Point-MAE's segmentation model does it)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pointpeft.ops import inverse_distance_weights, knn, three_interpolate


def _propagate_by_loops(query, known, features):
    """For each query point: the 3 nearest known points by squared distance, weights 1/(d + 1e-8)
    normalised, the weighted sum of their features (float64, one point at a time)."""
    out = torch.zeros(query.shape[0], query.shape[1], features.shape[2], dtype=torch.float64)
    for b in range(query.shape[0]):
        for n in range(query.shape[1]):
            d = ((known[b] - query[b, n]) ** 2).sum(-1)
            order = sorted(range(known.shape[1]), key=lambda j: (d[j].item(), j))[:3]
            w = torch.stack([1.0 / (d[j] + 1e-8) for j in order])
            w = w / w.sum()
            out[b, n] = sum(w[i] * features[b, j] for i, j in enumerate(order))
    return out


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    queries=st.integers(1, 10),
    known=st.integers(3, 9),
    channels=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_feature_propagation_matches_the_loop(batch, queries, known, channels, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, queries, 3, generator=g, dtype=torch.float64)
    k = torch.randn(batch, known, 3, generator=g, dtype=torch.float64)
    f = torch.randn(batch, known, channels, generator=g, dtype=torch.float64)
    nearest = knn(q, k, 3)
    weights = inverse_distance_weights(nearest.sq_dist)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch, queries, dtype=torch.float64))
    got = three_interpolate(f, nearest.idx, weights)
    torch.testing.assert_close(got, _propagate_by_loops(q, k, f), rtol=1e-10, atol=1e-12)


def test_a_query_on_a_known_point_takes_its_features():
    known = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]])
    features = torch.arange(8.0).reshape(1, 4, 2)
    nearest = knn(known[:, 1:2], known, 3)
    got = three_interpolate(features, nearest.idx, inverse_distance_weights(nearest.sq_dist))
    torch.testing.assert_close(got, features[:, 1:2], rtol=0, atol=1e-6)


def test_gradients_reach_features_and_weights():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 5, (2, 4, 3), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: three_interpolate(a, idx, b), (f, w))


def test_bad_input_is_refused_naming_it():
    f, w = torch.zeros(1, 4, 2), torch.zeros(1, 3, 3)
    with pytest.raises(TypeError, match=r"idx must be an int64"):
        three_interpolate(f, torch.zeros(1, 3, 3, dtype=torch.int32), w)
    with pytest.raises(ValueError, match=r"idx must hold indices in \[0, 4\)"):
        three_interpolate(f, torch.full((1, 3, 3), 4), w)
    with pytest.raises(ValueError, match=r"idx \(1, 3, 2\) and weight \(1, 3, 3\)"):
        three_interpolate(f, torch.zeros(1, 3, 2, dtype=torch.long), w)
    with pytest.raises(ValueError, match=r"eps must be a number > 0"):
        inverse_distance_weights(w, eps=0)
