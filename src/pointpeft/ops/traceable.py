"""The index computations of the ops as custom operators, for ``torch.compile`` and ``torch.export``.

Farthest point sampling and the k-nearest-neighbour selection are loops, data-dependent choices and kernel
launches that a compiler should not trace; under compilation (:func:`tracing`) the public ops call them
through two custom operators, ``pointpeft::farthest_point_sample_idx`` and ``pointpeft::knn_idx``, that the
compilers see as single opaque ops with known output shapes. Inside, they run the same backend code as
eager calls, so the indices are the same bit for bit; the differentiable parts (gathers, squared distances)
stay in plain torch around them.
"""

from __future__ import annotations

import torch

from pointpeft.ops import _torch


def tracing() -> bool:
    """Whether the code runs under ``torch.compile`` or ``torch.export`` tracing."""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


def _backend(name: str):  # type: ignore[no-untyped-def]
    if name == "triton":
        from pointpeft.ops import _triton

        return _triton
    return _torch


def _fps_impl(
    xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None, backend: str
) -> torch.Tensor:
    with torch.no_grad():
        return _backend(backend).farthest_point_sample(xyz.detach(), num_samples, start_idx, lengths)


def _knn_impl(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor | None,
    point_lengths: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    with torch.no_grad():
        if backend == "triton":
            return _backend(backend).knn(query.detach(), points.detach(), k, query_lengths, point_lengths)[1]
        return _torch.knn_idx(query.detach(), points.detach(), k, query_lengths, point_lengths)


if hasattr(torch.library, "custom_op"):

    @torch.library.custom_op("pointpeft::farthest_point_sample_idx", mutates_args=())
    def farthest_point_sample_idx(
        xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None, backend: str
    ) -> torch.Tensor:
        """FPS indices ``(B, M)`` of ``xyz (B, N, 3)`` (see :func:`pointpeft.ops.farthest_point_sample`)."""
        return _fps_impl(xyz, num_samples, start_idx, lengths, backend)

    @farthest_point_sample_idx.register_fake
    def _(
        xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None, backend: str
    ) -> torch.Tensor:
        return xyz.new_empty((xyz.shape[0], num_samples), dtype=torch.long)

    @torch.library.custom_op("pointpeft::knn_idx", mutates_args=())
    def knn_idx(
        query: torch.Tensor,
        points: torch.Tensor,
        k: int,
        query_lengths: torch.Tensor | None,
        point_lengths: torch.Tensor | None,
        backend: str,
    ) -> torch.Tensor:
        """Neighbour indices ``(B, M, k)`` (see :func:`pointpeft.ops.knn`)."""
        return _knn_impl(query, points, k, query_lengths, point_lengths, backend)

    @knn_idx.register_fake
    def _(
        query: torch.Tensor,
        points: torch.Tensor,
        k: int,
        query_lengths: torch.Tensor | None,
        point_lengths: torch.Tensor | None,
        backend: str,
    ) -> torch.Tensor:
        return query.new_empty((query.shape[0], query.shape[1], k), dtype=torch.long)

else:  # torch < 2.4: no custom operators; the compilers trace (or break at) the backends themselves
    farthest_point_sample_idx = _fps_impl  # type: ignore[assignment]
    knn_idx = _knn_impl  # type: ignore[assignment]
