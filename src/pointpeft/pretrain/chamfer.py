"""The Chamfer-L2 distance of Point-MAE's pre-training loss, exact in pure torch."""

from __future__ import annotations

import torch

from pointpeft.ops import check_cloud


def chamfer_l2(predicted: torch.Tensor, target: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
    """``mean_i min_j |p_i - t_j|² + mean_j min_i |p_i - t_j|²`` over every point of every set: the
    ``ChamferDistanceL2`` that Point-MAE's pre-training minimises (the squared distances, each direction
    averaged over all points of all sets, the two averages added).

    The squared distances are summed from the coordinate differences, not expanded as
    ``|p|² + |t|² - 2 p·t`` (which loses digits to cancellation when the sets are far from the origin), so
    the result is exact to the dtype's rounding. Sets are processed ``chunk`` at a time to bound memory at
    ``chunk · N · M · 3`` elements.

    Args:
        predicted: ``(S, N, 3)`` floating-point sets (S sets of N points).
        target: ``(S, M, 3)``, same dtype and device.
        chunk: sets per piece, >= 1.

    Returns:
        a scalar tensor, differentiable in both arguments.

    Raises:
        TypeError / ValueError: if an argument is not an ``(S, *, 3)`` floating tensor, the set counts,
            dtypes or devices differ, or ``chunk`` is not an int >= 1.
    """
    predicted = check_cloud(predicted, "predicted")
    target = check_cloud(target, "target")
    if predicted.shape[0] != target.shape[0]:
        raise ValueError(
            f"predicted and target must hold the same number of sets, got {tuple(predicted.shape)} and "
            f"{tuple(target.shape)}"
        )
    if predicted.dtype != target.dtype or predicted.device != target.device:
        raise TypeError(
            f"predicted and target must share dtype and device, got {predicted.dtype} on {predicted.device} "
            f"and {target.dtype} on {target.device}"
        )
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    forward, backward = [], []
    for start in range(0, predicted.shape[0], chunk):
        p, t = predicted[start : start + chunk], target[start : start + chunk]
        squared = (p.unsqueeze(2) - t.unsqueeze(1)).square().sum(-1)  # (s, N, M)
        forward.append(squared.min(dim=2).values)  # (s, N): each predicted point to its nearest target
        backward.append(squared.min(dim=1).values)  # (s, M)
    return torch.cat(forward).mean() + torch.cat(backward).mean()
