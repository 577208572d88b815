"""Batch-level point sampling and augmentation, as the DAPT reference does them in its training loop.

The reference fine-tunes on batches ``(B, N, 3)`` straight from the data loader:

* training: farthest point sampling (FPS) down to ``point_all`` points (:func:`point_all_for`), then one
  random subset of ``npoints`` of them shared by the whole batch (:func:`sample_train_points`), then a
  random per-sample anisotropic scale and translation (:class:`ScaleAndTranslate`);
* testing: FPS down to ``npoints`` (:func:`sample_test_points`);
* voting: the logits of several random subsets, each scaled and translated, averaged
  (:func:`vote_logits`).

Randomness comes from the ``generator`` argument when given (a ``torch.Generator``, on any device; the
draws are moved to the points' device), else from torch's global random state (the reference used
numpy's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pointpeft.checks import check_callable, check_int, check_real, check_type
from pointpeft.ops import farthest_point_sample

__all__ = [
    "DEFAULT_VOTE_TRANSFORM",
    "RotateAboutY",
    "ScaleAndTranslate",
    "point_all_for",
    "sample_test_points",
    "sample_train_points",
    "vote_logits",
]

#: ``point_all`` of the reference for the ``npoints`` it supports (its other values raised an error).
_REFERENCE_POINT_ALL = {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _check_points(points: object, name: str = "points") -> torch.Tensor:
    """Check that ``points`` is a floating-point tensor of shape (B, N, 3)."""
    points = check_type(name, points, torch.Tensor, "a torch.Tensor of shape (B, N, 3)")
    if not points.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {points.dtype}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(points.shape)}")
    return points


def _check_generator(generator: object) -> torch.Generator | None:
    return check_type("generator", generator, (torch.Generator, type(None)), "None or a torch.Generator")


def _to_device(draws: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``draws`` on ``device``. Draws made on the CPU for a GPU go through pinned memory with a
    non-blocking copy, so the host does not wait for the GPU's queued work (a plain copy from pageable
    memory would); the values are the same."""
    if draws.device.type == "cpu" and device.type == "cuda":
        return draws.pin_memory().to(device, non_blocking=True)
    return draws.to(device)


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A random permutation of ``range(n)`` (LongTensor (n,) on ``device``) from ``generator``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return _to_device(torch.randperm(n, generator=generator, device=gen_device), device)


def _gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``points[b, idx[b]]``: (B, N, 3) and LongTensor (B, M) -> (B, M, 3)."""
    return torch.gather(points, 1, idx[..., None].expand(-1, -1, points.shape[-1]))


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------


class ScaleAndTranslate:
    """Random per-sample anisotropic scale and translation (the reference's
    ``PointcloudScaleAndTranslate``).

    Every cloud b of a batch gets its own scale ``s[b]`` with each axis uniform in
    ``[scale_low, scale_high)`` and translation ``t[b]`` with each axis uniform in
    ``[-translate, translate)``: ``out[b] = points[b] * s[b] + t[b]``.

    Args:
        scale_low: lower bound of the per-axis scale, > 0.
        scale_high: upper bound of the per-axis scale, >= ``scale_low``.
        translate: half-width of the per-axis translation range, >= 0.

    Raises:
        TypeError: if an argument is not a real number.
        ValueError: if an argument is not finite or out of range.
    """

    def __init__(self, scale_low: float = 2.0 / 3.0, scale_high: float = 3.0 / 2.0, translate: float = 0.2):
        self.scale_low = check_real("scale_low", scale_low, "a finite float > 0", lambda v: v > 0)
        self.scale_high = check_real(
            "scale_high",
            scale_high,
            f"a finite float >= scale_low = {self.scale_low!r}",
            lambda v: v >= self.scale_low,
        )
        self.translate = check_real("translate", translate, "a finite float >= 0", lambda v: v >= 0)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scale_low={self.scale_low!r}, scale_high={self.scale_high!r}, "
            f"translate={self.translate!r})"
        )

    def __call__(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scale and translate every cloud of a batch.

        Args:
            points: FloatTensor of shape (B, N, 3).
            generator: optional ``torch.Generator`` for the random draws (else torch's global state).

        Returns:
            A new tensor of shape (B, N, 3), dtype and device of ``points``; ``points`` is not modified.

        Raises:
            TypeError: if ``points`` is not a floating-point tensor or ``generator`` not a generator.
            ValueError: if ``points`` does not have shape (B, N, 3).
        """
        points = _check_points(points)
        generator = _check_generator(generator)
        batch = points.shape[0]
        gen_device = generator.device if generator is not None else torch.device("cpu")
        draws = torch.rand((2, batch, 1, 3), generator=generator, device=gen_device, dtype=torch.float64)
        scale = self.scale_low + (self.scale_high - self.scale_low) * draws[0]
        shift = self.translate * (2 * draws[1] - 1)
        # one (2, B, 1, 3) copy to the points' device, in their dtype (the same values as two casts)
        both = _to_device(torch.stack((scale, shift)).to(points.dtype), points.device)
        return points * both[0] + both[1]


class RotateAboutY:
    """A random rotation of each cloud about the vertical (y) axis (the ``PointcloudRotate`` training
    transform of the IDPT and Point-BERT code bases, which IDPT's and VPT's released recipes use on
    ScanObjectNN).

    Every cloud b gets its own angle ``θ[b]`` uniform in ``[0, 2π)`` and ``out[b] = points[b] @ R(θ[b])``
    with ``R(θ) = [[cos θ, 0, sin θ], [0, 1, 0], [−sin θ, 0, cos θ]]`` (points as rows, as the released code
    multiplies them). The angles and the matrices are computed in float64, then cast to the points' dtype.
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __call__(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rotate every cloud of a batch about the y axis.

        Args:
            points: FloatTensor of shape (B, N, 3).
            generator: optional ``torch.Generator`` for the angles (else torch's global state).

        Returns:
            A new tensor of shape (B, N, 3), dtype and device of ``points``; ``points`` is not modified.

        Raises:
            TypeError: if ``points`` is not a floating-point tensor or ``generator`` not a generator.
            ValueError: if ``points`` does not have shape (B, N, 3).
        """
        points = _check_points(points)
        generator = _check_generator(generator)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        angle = (
            2
            * torch.pi
            * torch.rand(points.shape[0], generator=generator, device=gen_device, dtype=torch.float64)
        )
        cos, sin = angle.cos(), angle.sin()
        zero, one = torch.zeros_like(angle), torch.ones_like(angle)
        rotation = torch.stack(
            (
                torch.stack((cos, zero, sin), -1),
                torch.stack((zero, one, zero), -1),
                torch.stack((-sin, zero, cos), -1),
            ),
            dim=-2,
        )  # (B, 3, 3)
        return torch.bmm(points, _to_device(rotation.to(points.dtype), points.device))


#: The transform :func:`vote_logits` applies to every view by default (the reference's
#: ``test_transforms``).
DEFAULT_VOTE_TRANSFORM = ScaleAndTranslate()


# --------------------------------------------------------------------------------------------------
# Point sampling
# --------------------------------------------------------------------------------------------------


def point_all_for(npoints: int, num_available: int) -> int:
    """The number of FPS points a random training subset of ``npoints`` is drawn from.

    The reference's table: 1200 for ``npoints`` 1024, 2400 for 2048, 4800 for 4096 and 8192 for 8192.
    Our extension: other values (which the reference rejects) get ``round(1.2 * npoints)``. The result
    is capped at ``num_available`` (the number of points of the clouds), as the reference does.

    Args:
        npoints: the number of points fed to the model, >= 1.
        num_available: N, the number of points per cloud in the batch, >= 1.

    Returns:
        ``min(point_all, num_available)``. It is < ``npoints`` only when ``num_available < npoints``.

    Raises:
        TypeError: if an argument is not an int.
        ValueError: if an argument is < 1.
    """
    npoints = check_int("npoints", npoints, 1)
    num_available = check_int("num_available", num_available, 1)
    point_all = _REFERENCE_POINT_ALL.get(npoints, round(1.2 * npoints))
    return min(point_all, num_available)


def _fps_pool(
    points: torch.Tensor, npoints: int, point_all: int, *, check_values: bool = True
) -> tuple[torch.Tensor, int]:
    """Validate and FPS ``points`` (B, N, 3) down to ``min(point_all, N)``: (LongTensor (B, P), P)."""
    npoints = check_int("npoints", npoints, 1)
    point_all = check_int("point_all", point_all, 1)
    pool = min(point_all, points.shape[1])
    if npoints > pool:
        raise ValueError(
            f"npoints must be <= min(point_all, N) = min({point_all}, {points.shape[1]}) = {pool}, got {npoints}"
        )
    return _fps(points, pool, check_values=check_values), pool


def _fps(points: torch.Tensor, num_samples: int, *, check_values: bool = True) -> torch.Tensor:
    """:func:`pointpeft.ops.farthest_point_sample` of ``points`` (B, N, 3) -> LongTensor (B, M), with a
    refusal of the coordinates (NaN, out of the safe range) reported against ``points``."""
    try:
        return farthest_point_sample(points, num_samples, check_values=check_values)
    except ValueError as exc:
        raise ValueError(f"points (B, N, 3) cannot be sampled by farthest point sampling: {exc}") from exc


def sample_train_points(
    points: torch.Tensor,
    npoints: int,
    point_all: int,
    generator: torch.Generator | None = None,
    *,
    check_values: bool = True,
) -> torch.Tensor:
    """The reference's training resampling: FPS to ``point_all`` points, then a random subset.

    ``P = min(point_all, N)`` points are picked by farthest point sampling
    (:func:`pointpeft.ops.farthest_point_sample`, starting at index 0), then ``npoints`` of those P
    positions are drawn at random without replacement, in random order, ONCE for the whole batch
    (the reference's ``np.random.choice(point_all, npoints, False)``; every cloud uses the same
    positions of its own FPS ordering).

    Args:
        points: FloatTensor of shape (B, N, 3), finite.
        npoints: M, the number of points returned per cloud, 1 <= M <= min(point_all, N).
        point_all: the FPS pool size (see :func:`point_all_for`), >= 1; capped at N.
        generator: optional ``torch.Generator`` for the subset (else torch's global random state).
        check_values: check that ``points`` is finite and within the ops' safe range (the default; on a GPU
            this reads a value back, so the host waits for the queued work). False skips it, for a caller
            that checked the same values already (:func:`pointpeft.ops.check_coordinates` on the batch's
            CPU copy, say).

    Returns:
        Tensor of shape (B, M, 3), dtype and device of ``points``: points of ``points``.

    Raises:
        TypeError: if ``points`` is not a floating-point tensor, a count is not an int, or
            ``generator`` is not a generator.
        ValueError: if ``points`` does not have shape (B, N, 3) or is not finite, or a count is out
            of range.
    """
    points = _check_points(points)
    generator = _check_generator(generator)
    fps_idx, pool = _fps_pool(points, npoints, point_all, check_values=check_values)
    choice = _randperm(pool, generator, points.device)[:npoints]
    return _gather(points, fps_idx[:, choice])


def sample_test_points(points: torch.Tensor, npoints: int) -> torch.Tensor:
    """The reference's test resampling: farthest point sampling to ``npoints`` points.

    Args:
        points: FloatTensor of shape (B, N, 3), finite.
        npoints: M, the number of points returned per cloud, 1 <= M <= N.

    Returns:
        Tensor of shape (B, M, 3), dtype and device of ``points``:
        ``points[b, farthest_point_sample(points, M)[b]]`` (deterministic).

    Raises:
        TypeError: if ``points`` is not a floating-point tensor or ``npoints`` not an int.
        ValueError: if ``points`` does not have shape (B, N, 3) or is not finite, or ``npoints`` is
            out of range.
    """
    points = _check_points(points)
    npoints = check_int("npoints", npoints, 1)
    if npoints > points.shape[1]:
        raise ValueError(f"npoints must be <= N = {points.shape[1]} (points per cloud), got {npoints}")
    return _gather(points, _fps(points, npoints))


# --------------------------------------------------------------------------------------------------
# Voting
# --------------------------------------------------------------------------------------------------


def vote_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    points: torch.Tensor,
    npoints: int,
    point_all: int,
    *,
    views: int = 10,
    transform: Callable[..., torch.Tensor] | None = DEFAULT_VOTE_TRANSFORM,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reference's voting: logits averaged over ``views`` random, augmented views of every cloud.

    ``points`` is reduced once by FPS to ``P = min(point_all, N)`` points; then for each view a random
    subset of ``npoints`` of the P positions (shared by the batch, as in :func:`sample_train_points`) is
    taken, ``transform`` is applied and ``model`` is run; the logits are averaged over the views. Runs
    under ``torch.no_grad()``; put the model in eval mode first (this function does not change it).

    Args:
        model: callable mapping a FloatTensor (B, npoints, 3) to logits (B, K).
        points: FloatTensor of shape (B, N, 3), finite.
        npoints: points per view, 1 <= npoints <= min(point_all, N).
        point_all: the FPS pool size (see :func:`point_all_for`), >= 1; capped at N.
        views: number of views averaged, >= 1 (the reference uses 10).
        transform: applied to every view as ``transform(view, generator=generator)``, view of shape
            (B, npoints, 3); the default :data:`DEFAULT_VOTE_TRANSFORM` is ``ScaleAndTranslate()``.
            None applies no augmentation.
        generator: optional ``torch.Generator`` for the subsets and the transform (else torch's global
            random state).

    Returns:
        Tensor of shape (B, K): the mean of the ``views`` logits (in the model's output dtype).

    Raises:
        TypeError: if ``model`` or ``transform`` is not callable, ``points`` is not a floating-point
            tensor, a count is not an int, ``generator`` is not a generator, or the model does not
            return a tensor.
        ValueError: if a shape or count is out of range, ``points`` is not finite, or the model's
            output does not have shape (B, K).
    """
    check_callable("model", model, "callable (points (B, npoints, 3) -> logits (B, K))")
    if transform is not None:
        check_callable("transform", transform, "None or callable")
    points = _check_points(points)
    views = check_int("views", views, 1)
    generator = _check_generator(generator)
    batch = points.shape[0]
    with torch.no_grad():
        fps_idx, pool = _fps_pool(points, npoints, point_all)
        pool_points = _gather(points, fps_idx)
        all_logits = []
        for _ in range(views):
            view = pool_points[:, _randperm(pool, generator, points.device)[:npoints]]
            if transform is not None:
                view = transform(view, generator=generator)
            logits = model(view)
            if not isinstance(logits, torch.Tensor):
                raise TypeError(
                    f"model must return a torch.Tensor of logits (B, K), got {type(logits).__name__}"
                )
            if logits.dim() != 2 or logits.shape[0] != batch:
                raise ValueError(
                    f"model must return logits of shape (B, K) = ({batch}, K), got {tuple(logits.shape)}"
                )
            # A copy: a model compiled with CUDA graphs (mode "reduce-overhead") overwrites its output at
            # the next call.
            all_logits.append(logits.clone())
        return torch.stack(all_logits).mean(dim=0)
