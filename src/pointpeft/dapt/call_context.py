"""The per-call context: the tensors one forward of a DAPT model carries beside the token sequence.

DAPT grows the token sequence by one prompt per block. Backbones that re-add a fixed-length positional
embedding (or a fixed-size attention mask) before every block would break on a longer sequence, so the
prompts travel beside the sequence: each :class:`~pointpeft.dapt.prompt.DAPTBlock` splices them in after
the global tokens, runs its block, and takes them out again. They, and the other tensors one forward hands
from wrapper to wrapper, live in a :class:`CallContext` that :meth:`pointpeft.DAPTModel.forward_features`
opens for that call only. Contexts are kept per thread (a stack, so calls may nest), so replicas of a model
running in threads at once (``nn.DataParallel``) never see each other's tensors, and no module holds
per-forward state. ``torch.compile`` and ``torch.export`` trace through it.
"""

from __future__ import annotations

import threading
from typing import Any

import torch


class _PerThread(threading.local):
    """Each thread's stack of open calls, made when the thread first touches it."""

    def __init__(self) -> None:
        self.stack: list[CallContext] = []


_LOCAL = _PerThread()


class CallContext:
    """What one forward hands from wrapper to wrapper. Every tensor is batch-first.

    Attributes:
        prompts: ``(B, P, C)`` prompts made so far, newest first, or None.
        prompt_positions: ``(1, P, C)`` (or ``(B, P, C)``) positions added to the carried prompts at the
            input of each block (IDPT's prompt on a backbone that re-adds positions before every block), or
            None for none.
        patch_tokens: ``(B, G, C)`` output of the patch encoder (after the active adapter's TFTS, if any),
            or None.
        graph_bases: the tensors a method computes once per forward from the patch centres and hands to every
            block's residual-stream adapter (PointGST's :class:`~pointpeft.methods.pointgst.GraphBases`), or
            None.
        adapter_in: ``(B, L, C)`` or ``(L, B, C)`` input of the current block's FFN, when the adapter's
            output is added elsewhere than after the FFN.
        adapter_out: output of the current block's adapter, in the block's layout, or None.
        block_addend: what the current block's residual-stream adapter (AdaptFormer's) adds to the block's
            output, in the block's layout, or None.
        block_out: ``(B, T, C)`` token output of the last block that ran, or None.
        final_tokens: ``(B, T, C)`` tokens after the final norm (and TFTS), or None.
        final_prompts: ``(B, P, C)`` prompts after the final norm (and TFTS), or None.
        points: ``(B, N, 3)`` the points the model's forward got, or None.
        appended: ``(B, K, C)`` tokens carried after the patch tokens through the blocks (PointLoRA's
            selected tokens), or None.
        appended_positions: ``(B, K, C)`` their positions, added at the input of every block, or None
            (added once already).
        selection: the module that made the appended tokens, whose ``patch_mlp`` and ``selected_mlp`` every
            block adds to its patch and appended tokens (PointLoRA's), or None.
        auxiliary_loss: a scalar loss the active adapter made in this call (PointLoRA's weighted mask loss),
            or None.
    """

    def __init__(self) -> None:
        self.prompts: torch.Tensor | None = None
        self.prompt_positions: torch.Tensor | None = None
        self.patch_tokens: torch.Tensor | None = None
        self.graph_bases: tuple[torch.Tensor, ...] | None = None
        self.adapter_in: torch.Tensor | None = None
        self.adapter_out: torch.Tensor | None = None
        self.block_addend: torch.Tensor | None = None
        self.block_out: torch.Tensor | None = None
        self.final_tokens: torch.Tensor | None = None
        self.final_prompts: torch.Tensor | None = None
        self.points: torch.Tensor | None = None
        self.appended: torch.Tensor | None = None
        self.appended_positions: torch.Tensor | None = None
        self.selection: Any = None
        self.auxiliary_loss: torch.Tensor | None = None


def open_call() -> CallContext:
    """Start a call on this thread and return its new context (close it with :func:`close_call`)."""
    context = CallContext()
    _LOCAL.stack.append(context)
    return context


def close_call(context: CallContext) -> None:
    """End the call of ``context`` (the innermost open one on this thread)."""
    stack = _LOCAL.stack
    if stack and stack[-1] is context:
        stack.pop()


def current_call() -> CallContext | None:
    """The context of the innermost DAPT call running on this thread, or None when none is open (a wrapper
    called on its own, outside a DAPT model's forward)."""
    stack = _LOCAL.stack
    return stack[-1] if stack else None
