"""The side channel that carries internal prompts beside the token sequence the backbone sees."""

from __future__ import annotations

from typing import Any

import torch


class PromptStash:
    """Per-forward scratch shared by the DAPT wrappers of one model.

    DAPT grows the token sequence by one prompt per block. Backbones that re-add a fixed-length
    positional embedding before every block would break on a longer sequence, so the prompts travel here,
    beside the sequence: each :class:`~pointpeft.dapt.prompt.DAPTBlock` splices them in after the global
    tokens, runs its block, and takes them out again.

    Attributes:
        prompts: ``(B, P, C)`` prompts made so far, newest first, or None.
        adapter_out: ``(B, L, C)`` output of the current block's adapter, or None.
        block_out: ``(B, T, C)`` token output of the last block that ran, or None.
        final_tokens: ``(B, T, C)`` tokens after the final norm (and TFTS), or None.
        final_prompts: ``(B, P, C)`` prompts after the final norm (and TFTS), or None.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prompts: torch.Tensor | None = None
        self.adapter_out: torch.Tensor | None = None
        self.block_out: torch.Tensor | None = None
        self.final_tokens: torch.Tensor | None = None
        self.final_prompts: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> PromptStash:
        # A copy of a model gets its own, empty scratch (a stash never holds state between forwards).
        return PromptStash()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.reset()

    def __repr__(self) -> str:
        return "PromptStash()"
