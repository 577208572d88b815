"""The ops' index computations as custom operators, for ``torch.compile`` and ``torch.export`` (internal).

Farthest point sampling, the k-nearest-neighbour selection and the grouping are loops, data-dependent
choices, host reads and kernel launches that a compiler should not trace. Under compilation
(:func:`tracing`) the public ops of :mod:`pointpeft.ops` therefore call them through three custom
operators, which the compilers see as single opaque ops with known output shapes and dtypes (their fake
implementations):

* ``pointpeft::farthest_point_sample(Tensor xyz, SymInt num_samples, SymInt start_idx, Tensor? lengths,
  str backend) -> Tensor`` (B, M);
* ``pointpeft::knn(Tensor query, Tensor points, SymInt k, Tensor? query_lengths, Tensor? point_lengths,
  str backend) -> (Tensor sq_dist, Tensor idx)``, both (B, M, k);
* ``pointpeft::group(Tensor xyz, SymInt num_group, SymInt group_size, SymInt start_idx, Tensor? lengths,
  str backend) -> (Tensor neighborhood, Tensor centers)``, (B, G, K, 3) and (B, G, 3).

``backend`` is the name of the backend module that :func:`pointpeft.ops.dispatch.select_backend` chose
(``"torch"`` or ``"triton"``): the choice stays in Python, outside the operators. Inside, they call that
backend's function without gradients, as an eager call does, so their outputs are the eager outputs bit
for bit. The operators have no autograd formula: where a gradient is needed, :mod:`pointpeft.ops` takes
only their indices and computes the gathers and squared distances in plain torch around them, as the
eager backends do then.

On a torch without ``torch.library.custom_op`` (before 2.4) the functions here call the backends
directly (the compilers then trace, or break at, the backends themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pointpeft.ops import dispatch

FPS_SCHEMA = "(Tensor xyz, SymInt num_samples, SymInt start_idx, Tensor? lengths, str backend) -> Tensor"
KNN_SCHEMA = (
    "(Tensor query, Tensor points, SymInt k, Tensor? query_lengths, Tensor? point_lengths, str backend)"
    " -> (Tensor, Tensor)"
)
GROUP_SCHEMA = (
    "(Tensor xyz, SymInt num_group, SymInt group_size, SymInt start_idx, Tensor? lengths, str backend)"
    " -> (Tensor, Tensor)"
)


def tracing() -> bool:
    """Whether the code runs under ``torch.compile`` (dynamo) or ``torch.export`` tracing.

    ``torch.compiler.is_compiling()`` is True in both (export sets it too); ``is_exporting`` is checked
    as well where it exists. On a torch without them: False.
    """
    for name in ("is_compiling", "is_exporting"):
        check = getattr(torch.compiler, name, None)
        if check is not None and check():
            return True
    return False


def _constant(t: torch.Tensor) -> torch.Tensor:
    """``t`` without its graph: the operators are not differentiated through (``detach`` only where
    ``t`` requires grad, so inference graphs hold no detach nodes)."""
    return t.detach() if t.requires_grad else t


def _fps_impl(
    xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None, backend: str
) -> torch.Tensor:
    with torch.no_grad():
        return dispatch.backend_module(backend).farthest_point_sample(
            xyz.detach(), num_samples, start_idx, lengths
        )


def _knn_impl(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor | None,
    point_lengths: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        module = dispatch.backend_module(backend)
        return module.knn(query.detach(), points.detach(), k, query_lengths, point_lengths)


def _group_impl(
    xyz: torch.Tensor,
    num_group: int,
    group_size: int,
    start_idx: int,
    lengths: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        module = dispatch.backend_module(backend)
        return module.group(xyz.detach(), num_group, group_size, start_idx, lengths)


def _fps_fake(
    xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None, backend: str
) -> torch.Tensor:
    return xyz.new_empty((xyz.shape[0], num_samples), dtype=torch.long)


def _knn_fake(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor | None,
    point_lengths: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (query.shape[0], query.shape[1], k)
    return query.new_empty(shape), query.new_empty(shape, dtype=torch.long)


def _group_fake(
    xyz: torch.Tensor,
    num_group: int,
    group_size: int,
    start_idx: int,
    lengths: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = xyz.shape[0]
    return xyz.new_empty((batch, num_group, group_size, 3)), xyz.new_empty((batch, num_group, 3))


def register(
    name: str, impl: Callable[..., Any], fake: Callable[..., Any], schema: str
) -> Callable[..., Any]:
    """``impl`` as the custom operator ``pointpeft::name`` with the fake implementation ``fake``; ``impl``
    itself on a torch without custom operators."""
    if not hasattr(torch.library, "custom_op"):
        return impl
    op = torch.library.custom_op(f"pointpeft::{name}", impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    return op


_FPS_OP = register("farthest_point_sample", _fps_impl, _fps_fake, FPS_SCHEMA)
_KNN_OP = register("knn", _knn_impl, _knn_fake, KNN_SCHEMA)
_GROUP_OP = register("group", _group_impl, _group_fake, GROUP_SCHEMA)


def farthest_point_sample(
    xyz: torch.Tensor, num_samples: int, start_idx: int, lengths: torch.Tensor | None, backend: str
) -> torch.Tensor:
    """LongTensor (B, M): ``pointpeft::farthest_point_sample``, the FPS indices of ``xyz`` (B, N, 3) from
    the backend named ``backend`` (see :func:`pointpeft.ops.farthest_point_sample`)."""
    idx: torch.Tensor = _FPS_OP(_constant(xyz), num_samples, start_idx, lengths, backend)
    return idx


def knn(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    query_lengths: torch.Tensor | None,
    point_lengths: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sq_dist, idx)``, both (B, M, k): ``pointpeft::knn``, the k nearest ``points`` (B, N, 3) of every
    ``query`` (B, M, 3) from the backend named ``backend`` (see :func:`pointpeft.ops.knn`). Not
    differentiable."""
    sq_dist, idx = _KNN_OP(_constant(query), _constant(points), k, query_lengths, point_lengths, backend)
    return sq_dist, idx


def group(
    xyz: torch.Tensor,
    num_group: int,
    group_size: int,
    start_idx: int,
    lengths: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neighborhood, centers)``, (B, G, K, 3) and (B, G, 3): ``pointpeft::group`` of ``xyz`` (B, N, 3)
    from the backend named ``backend`` (see :func:`pointpeft.ops.group`). Not differentiable."""
    neighborhood, centers = _GROUP_OP(_constant(xyz), num_group, group_size, start_idx, lengths, backend)
    return neighborhood, centers
