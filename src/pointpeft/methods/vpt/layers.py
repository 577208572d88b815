"""The prompt tokens of VPT: one block's of VPT-Deep, and the sequence's of VPT-Shallow."""

from __future__ import annotations

import torch
from torch import nn


class DeepPrompts(nn.Module):
    """``n`` learnable prompt tokens with their own learnable positions, for one block: ``prompts + positions``.

    Both start truncated-normal with std 0.02 (as the point-cloud VPT-Deep code). The block sees them beside
    its tokens, and its outputs at their places are dropped after it.

    Args:
        num_prompts: n, the prompts of the block.
        dim: C, the token width.

    Shapes:
        forward: ``batch`` (an int B) → ``(B, n, C)``.
    """

    def __init__(self, num_prompts: int, dim: int) -> None:
        super().__init__()
        self.num_prompts = num_prompts
        self.prompts = nn.Parameter(torch.empty(1, num_prompts, dim))
        self.positions = nn.Parameter(torch.empty(1, num_prompts, dim))
        nn.init.trunc_normal_(self.prompts, std=0.02)
        nn.init.trunc_normal_(self.positions, std=0.02)

    def forward(self, batch: int) -> torch.Tensor:
        return (self.prompts + self.positions).expand(batch, -1, -1)

    def extra_repr(self) -> str:
        return f"num_prompts={self.num_prompts}, dim={self.prompts.shape[-1]}"


class ShallowPrompts(nn.Module):
    """VPT-Shallow's ``n`` learnable prompt tokens, without positions: they join the first block's input after
    the CLS token and are carried through every block.

    They start truncated-normal with std 0.02 (as the point-cloud VPT-Deep code). ``prompt_pos`` is None (the
    prompts carry no position, as in the original VPT code) and ``reads_patches`` False: the block wrapper
    passes its input only for the batch size.

    Args:
        num_prompts: n, the prompts.
        dim: C, the token width.

    Shapes:
        forward: ``tokens (B, L, C)`` → ``(B, n, C)``.
    """

    prompt_pos: None = None
    reads_patches: bool = False
    every_block: bool = False

    def __init__(self, num_prompts: int, dim: int) -> None:
        super().__init__()
        self.num_prompts = num_prompts
        self.prompts = nn.Parameter(torch.empty(1, num_prompts, dim))
        nn.init.trunc_normal_(self.prompts, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.prompts.expand(tokens.shape[0], -1, -1)

    def extra_repr(self) -> str:
        return f"num_prompts={self.num_prompts}, dim={self.prompts.shape[-1]}"
