"""Internal prompts, and the wrappers that splice them into each block and through the final norm."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pointpeft.dapt.stash import PromptStash
from pointpeft.dapt.tfts import TFTS, _Wrapper


class InternalPrompt(nn.Module):
    """Turns a block's adapter output into one prompt token: ``TFTS(mean over tokens of GELU(A))``.

    The mean runs over every token of the block's sequence (global tokens, earlier prompts and patches),
    as in the reference. The prompt has no parameters besides its TFTS.

    Args:
        tfts: the prompt's TFTS, or None to use the pooled activation as is.

    Shapes:
        forward: adapter output ``A (B, L, C)`` → prompt ``(B, 1, C)``.
    """

    def __init__(self, tfts: TFTS | None) -> None:
        super().__init__()
        self.tfts = tfts

    def forward(self, adapter_out: torch.Tensor) -> torch.Tensor:
        prompt = F.gelu(adapter_out).mean(dim=1, keepdim=True)
        return prompt if self.tfts is None else self.tfts(prompt)


class DAPTBlock(_Wrapper):
    """Wraps one frozen transformer block; adds its internal prompt to the sequence.

    The backbone calls this module with the sequence it knows, ``x (B, T, C)`` (``T`` = global tokens +
    patches). The prompts made by earlier blocks are spliced in right after the ``num_global`` leading
    tokens, the block runs on ``(B, T + P, C)`` (its ``mlp`` is a
    :class:`~pointpeft.dapt.adapter.ParallelAdapter`), the new prompt is computed from the adapter output
    and put first among the prompts, and the prompts are taken out again, so the backbone gets back
    ``(B, T, C)``. The result equals the reference, where the sequence itself grows: ``[CLS, P_l, …, P_0,
    patches]``.

    Args:
        base_layer: the frozen block.
        prompt: the block's :class:`InternalPrompt`, or None when prompts are switched off.
        num_global: number of leading global tokens (CLS) before which no prompt goes.
        stash: the model's shared :class:`~pointpeft.dapt.stash.PromptStash`.
    """

    def __init__(
        self, base_layer: nn.Module, prompt: InternalPrompt | None, num_global: int, stash: PromptStash
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.prompt = prompt
        self.num_global = num_global
        self._stash = stash

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        stash, g = self._stash, self.num_global
        carried = stash.prompts
        n_carried = 0 if carried is None else carried.shape[1]
        if carried is not None:
            x = torch.cat((x[:, :g], carried, x[:, g:]), dim=1)
        out = self.base_layer(x, *args, **kwargs)
        adapter_out, stash.adapter_out = stash.adapter_out, None
        if self.prompt is not None:
            if adapter_out is None:
                raise RuntimeError(
                    "the block ran without calling its adapter: DAPT needs the block's forward to call its "
                    "MLP module, which pointpeft replaced"
                )
            new_prompt = self.prompt(adapter_out)
            stash.prompts = torch.cat((new_prompt, out[:, g : g + n_carried]), dim=1)
        if n_carried:
            out = torch.cat((out[:, :g], out[:, g + n_carried :]), dim=1)
        stash.block_out = out
        return out

    def extra_repr(self) -> str:
        return f"num_global={self.num_global}"


class FinalNorm(_Wrapper):
    """Wraps the backbone's final norm: applies it (then the output TFTS) to the tokens and the prompts.

    The normalised tokens are returned to the backbone; tokens and prompts are both left in the stash for
    the pooled head.

    Shapes:
        forward: ``x (B, T, C)`` → ``(B, T, C)``; stash prompts ``(B, P, C)`` → ``(B, P, C)``.
    """

    def __init__(self, base_layer: nn.Module, tfts: TFTS | None, stash: PromptStash) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.tfts = tfts
        self._stash = stash

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        x = self.base_layer(x)
        return x if self.tfts is None else self.tfts(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stash = self._stash
        out = self._transform(x)
        stash.final_tokens = out
        stash.final_prompts = None if stash.prompts is None else self._transform(stash.prompts)
        return out
