"""How a DAPT model computes its blocks: the execution modes, and selective activation checkpointing.

* ``"fused"`` (default): under ``torch.compile``, each block runs its own forward under selective activation
  checkpointing, keeping for backward only the outputs of its matrix products (``aten.mm``/``aten.addmm``)
  and recomputing the rest (norms, TFTS, activations, attention) in backward, which the compiler fuses into
  few kernels: that is the fast path (measured in docs/benchmarks.md against hand-written fused autograd
  functions, which it replaced). Run eagerly, a block keeps only its input (as ``"recompute"``): there the
  selective policy, applied per operation in Python, made the step 1.2-1.6x slower than plain
  checkpointing and kept as much memory or more (H200, batches 32 and 128, fp32 and bf16).
* ``"recompute"``: plain activation checkpointing: each block keeps only its input.
* ``"plain"``: the blocks run as they are, keeping every intermediate (the reference computation).

All three compute the same function. The fast path runs the block's own modules, so it serves every block,
whatever its class or forward. Without gradients (inference) every mode runs the blocks as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import checkpoint

EXECUTIONS = ("fused", "recompute", "plain")

_aten = torch.ops.aten
_SAVED_OPS = {_aten.mm.default, _aten.addmm.default}


def allow_checkpointed_side_effects() -> None:
    """Let ``torch.compile`` trace a checkpointed block whole.

    A checkpointed block hands its adapter's output to the block wrapper through the call context
    (:mod:`pointpeft.dapt.call_context`), a side effect that torch.compile accepts inside a checkpointed
    region only with ``torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint`` (the side effects
    of the forward are then not replayed when it is recomputed in backward); without it the compiler breaks
    the graph there. Called when a DAPT model is built (not at import: importing torch._dynamo imports
    triton, which the CPU-only ops never need).
    """
    import torch._dynamo.config as dynamo_config

    if hasattr(dynamo_config, "skip_fwd_side_effects_in_bwd_under_checkpoint"):
        dynamo_config.skip_fwd_side_effects_in_bwd_under_checkpoint = True


def check_execution(value: Any) -> str:
    """``value`` if it names an execution mode (:data:`EXECUTIONS`), else a ValueError."""
    if value not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {value!r}")
    return str(value)


def compiling() -> bool:
    """Whether the code runs under ``torch.compile`` or ``torch.export`` tracing."""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


def _save_products(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    if op in _SAVED_OPS:
        return checkpoint.CheckpointPolicy.MUST_SAVE
    return checkpoint.CheckpointPolicy.PREFER_RECOMPUTE


def run_checkpointed(fn: Callable[..., Any], *args: Any, save_products: bool) -> Any:
    """``fn(*args)`` under activation checkpointing, keeping the matrix products' outputs
    (``save_products``, selective checkpointing; torch >= 2.4) or only the inputs."""
    if save_products and hasattr(checkpoint, "create_selective_checkpoint_contexts"):
        context = functools.partial(checkpoint.create_selective_checkpoint_contexts, _save_products)
        return checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=context)
    return checkpoint.checkpoint(fn, *args, use_reentrant=False)
