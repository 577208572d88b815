"""Selective activation checkpointing of a DAPT block: the block's own forward, keeping for backward only
the outputs of its matrix products (``torch.utils.checkpoint`` with a selective policy).

With the backbone frozen, backward needs the frozen products' outputs (for the TFTS gradients and the GELU)
and nothing else that cannot be recomputed cheaply; this policy saves exactly those and recomputes the rest
(norms, TFTS, activations, the attention) in backward. It runs the block's modules as they are, so it serves
every block, and ``torch.compile`` takes it whole (the compiled graph fuses the recomputed elementwise steps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import checkpoint

_aten = torch.ops.aten
_SAVED_OPS = {_aten.mm.default, _aten.addmm.default}


def compiling() -> bool:
    """Whether the code runs under ``torch.compile`` or ``torch.export`` tracing."""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


# How the fast execution runs a block in eager mode: "functions" (the fused autograd functions) or
# "checkpoint" (the block's own forward under selective checkpointing). Under torch.compile/export it is
# always "checkpoint" (the compilers take it whole). Being measured; one of the two will go.
FAST_PATH = "functions"


def use_checkpointing() -> bool:
    """Whether the fast execution runs blocks under selective checkpointing now (else: the fused functions)."""
    return FAST_PATH == "checkpoint" or compiling()


def _save_products(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    if op in _SAVED_OPS:
        return checkpoint.CheckpointPolicy.MUST_SAVE
    return checkpoint.CheckpointPolicy.PREFER_RECOMPUTE


def selective_supported() -> bool:
    """Whether this torch has selective checkpointing (torch >= 2.4)."""
    return hasattr(checkpoint, "create_selective_checkpoint_contexts")


def run_checkpointed(fn: Callable[..., Any], *args: Any, save_products: bool) -> Any:
    """``fn(*args)`` under activation checkpointing: keeping the matrix products' outputs
    (``save_products``) or nothing but the inputs (plain activation checkpointing)."""
    if save_products:
        context = functools.partial(checkpoint.create_selective_checkpoint_contexts, _save_products)
        return checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=context)
    return checkpoint.checkpoint(fn, *args, use_reentrant=False)
