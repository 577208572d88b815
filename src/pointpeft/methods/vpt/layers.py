"""The prompt tokens of one block of VPT-Deep."""

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
