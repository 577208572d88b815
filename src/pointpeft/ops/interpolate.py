"""Feature propagation (PointNet++'s ``three_nn`` + ``three_interpolate``, as Point-MAE's segmentation model
uses it): features of a few points carried to many by inverse-distance weights over the nearest ones."""

from __future__ import annotations

import torch


def inverse_distance_weights(sq_dist: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``w_k = (1 / (d_k + eps)) / sum_j (1 / (d_j + eps))`` over the last dimension: the weights of
    Point-MAE's feature propagation, from squared distances ``d`` (not their roots).

    Args:
        sq_dist: ``(B, N, k)`` floating squared distances (>= 0).
        eps: added to each distance, > 0.

    Returns:
        ``(B, N, k)`` weights, each row summing to 1; differentiable in ``sq_dist``.
    """
    if not isinstance(sq_dist, torch.Tensor) or not sq_dist.is_floating_point() or sq_dist.dim() != 3:
        raise ValueError(
            f"sq_dist must be a floating (B, N, k) tensor, got {getattr(sq_dist, 'shape', sq_dist)!r}"
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    reciprocal = 1.0 / (sq_dist + eps)
    return reciprocal / reciprocal.sum(dim=2, keepdim=True)


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[b, n] = sum_k weight[b, n, k] * features[b, idx[b, n, k]]``.

    Args:
        features: ``(B, M, C)`` floating features of M known points.
        idx: ``(B, N, k)`` int64 indices into dimension 1 of ``features`` (e.g. :func:`pointpeft.ops.knn`'s
            ``idx`` with ``k = 3``), all in ``[0, M)``.
        weight: ``(B, N, k)`` weights, the dtype of ``features`` (e.g. :func:`inverse_distance_weights`).

    Returns:
        ``(B, N, C)`` features of the N query points; differentiable in ``features`` and ``weight``.
    """
    for name, t in (("features", features), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 3:
            raise ValueError(f"{name} must be a floating 3-D tensor, got {getattr(t, 'shape', t)!r}")
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 3:
        raise TypeError(
            f"idx must be an int64 (B, N, k) tensor, got {getattr(idx, 'dtype', type(idx).__name__)}"
        )
    if idx.shape != weight.shape or idx.shape[0] != features.shape[0]:
        raise ValueError(
            f"idx {tuple(idx.shape)} and weight {tuple(weight.shape)} must be (B, N, k) with the B of features "
            f"{tuple(features.shape)}"
        )
    if weight.dtype != features.dtype or weight.device != features.device or idx.device != features.device:
        raise TypeError("features, idx and weight must share a device, and weight the dtype of features")
    if (
        idx.numel()
        and not torch.compiler.is_compiling()
        and (idx.min() < 0 or idx.max() >= features.shape[1])
    ):
        raise ValueError(f"idx must hold indices in [0, {features.shape[1]}) (the M of features)")
    batch, count, k = idx.shape
    gathered = features.gather(1, idx.reshape(batch, count * k, 1).expand(-1, -1, features.shape[2]))
    return (gathered.reshape(batch, count, k, -1) * weight.unsqueeze(-1)).sum(dim=2)
