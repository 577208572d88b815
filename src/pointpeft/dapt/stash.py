"""The side channel that carries internal prompts beside the token sequence the backbone sees."""

from __future__ import annotations

import copy
from typing import Any

import torch


class PromptStash:
    """Per-model scratch shared by the DAPT wrappers of one model.

    DAPT grows the token sequence by one prompt per block. Backbones that re-add a fixed-length
    positional embedding (or a fixed-size attention mask) before every block would break on a longer
    sequence, so the prompts travel here, beside the sequence: each
    :class:`~pointpeft.dapt.prompt.DAPTBlock` splices them in after the global tokens, runs its block, and
    takes them out again. Every tensor here is batch-first, whatever layout the backbone uses.

    Attributes:
        active: name of the adapter the wrappers run, or None to run the bare backbone. Kept across
            forwards (everything else is reset at the start and end of each).
        execution: how the wrappers compute (``"fused"``, ``"recompute"`` or ``"plain"``; see
            :attr:`pointpeft.DAPTModel.execution`). Kept across forwards.
        owned: the model's per-adapter copies of backbone tensors (CLS token, BatchNorm statistics), so
            that code holding only the backbone can reach them.
        prompts: ``(B, P, C)`` prompts made so far, newest first, or None.
        adapter_in: ``(B, L, C)`` or ``(L, B, C)`` input of the current block's FFN, when the adapter's
            output is added elsewhere than after the FFN.
        adapter_out: output of the current block's adapter, in the block's layout, or None.
        adapter_pooled: ``(B, 1, C)`` mean over tokens of GELU(adapter output), where the fused adapter
            computed it, or None.
        block_out: ``(B, T, C)`` token output of the last block that ran, or None.
        final_tokens: ``(B, T, C)`` tokens after the final norm (and TFTS), or None.
        final_prompts: ``(B, P, C)`` prompts after the final norm (and TFTS), or None.
    """

    def __init__(self, active: str | None = "default", execution: str = "fused") -> None:
        self.active = active
        self.execution = execution
        self.owned: Any = None
        self.reset()

    def reset(self) -> None:
        self.prompts: torch.Tensor | None = None
        self.adapter_in: torch.Tensor | None = None
        self.adapter_out: torch.Tensor | None = None
        self.adapter_pooled: torch.Tensor | None = None
        self.block_out: torch.Tensor | None = None
        self.final_tokens: torch.Tensor | None = None
        self.final_prompts: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> PromptStash:
        # A copy of a model gets its own, empty scratch with the same active adapter; ``owned`` maps to the
        # copy of the owning module (the memo makes both references land on one copy).
        new = PromptStash(self.active, self.execution)
        memo[id(self)] = new
        new.owned = copy.deepcopy(self.owned, memo)
        return new

    def __getstate__(self) -> dict[str, Any]:
        return {"active": self.active, "execution": self.execution, "owned": self.owned}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.active = state.get("active", "default")
        self.execution = state.get("execution", "fused")
        self.owned = state.get("owned")
        self.reset()

    def __repr__(self) -> str:
        return f"PromptStash(active={self.active!r}, execution={self.execution!r})"
