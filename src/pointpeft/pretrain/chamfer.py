"""The Chamfer-L2 distance of Point-MAE's pre-training loss: exact, on the KNN op (Triton on a GPU, pure
torch elsewhere)."""

from __future__ import annotations

import torch

from pointpeft.ops import Backend, check_cloud, check_coordinates, knn


def chamfer_l2(
    predicted: torch.Tensor, target: torch.Tensor, *, backend: Backend | None = None
) -> torch.Tensor:
    """``mean_i min_j |p_i - t_j|² + mean_j min_i |p_i - t_j|²`` over every point of every set: the
    ``ChamferDistanceL2`` that Point-MAE's pre-training minimises (the squared distances, each direction
    averaged over all points of all sets, the two averages added).

    Each nearest point comes from :func:`pointpeft.ops.knn` with ``k = 1`` (the Triton kernel for CUDA
    tensors, the chunked pure-torch search elsewhere; both exact, ties to the lowest index), and its squared
    distance is summed from the coordinate differences, not expanded as ``|p|² + |t|² - 2 p·t`` (which loses
    digits to cancellation when the sets are far from the origin), so the result is exact to the dtype's
    rounding. The gradient flows through the distances to the chosen points, as through ``min``.

    Args:
        predicted: ``(S, N, 3)`` floating-point sets (S sets of N points).
        target: ``(S, M, 3)``, same dtype and device.
        backend: the nearest-point search's backend: None, ``"auto"``, ``"torch"`` or ``"triton"`` (see
            :mod:`pointpeft.ops`).

    Returns:
        a scalar tensor, differentiable in both arguments.

    Raises:
        TypeError / ValueError: if an argument is not an ``(S, *, 3)`` floating tensor, the set counts,
            dtypes or devices differ, or a coordinate is not finite or outside
            :func:`pointpeft.ops.safe_coordinate_range`.
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
    check_coordinates(predicted, "predicted")  # named here (knn would call them query and points)
    check_coordinates(target, "target")
    forward = knn(predicted, target, 1, backend=backend).sq_dist  # (S, N, 1): each predicted point's nearest
    backward = knn(target, predicted, 1, backend=backend).sq_dist  # (S, M, 1)
    return forward.mean() + backward.mean()
