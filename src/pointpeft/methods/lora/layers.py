"""The low-rank update of LoRA (Hu et al., ICLR 2022) beside a frozen linear layer."""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRA(nn.Module):
    """``(alpha / rank) · B A Dropout(x)``: the low-rank update that LoRA adds to a frozen ``nn.Linear``.

    Initialised as the LoRA reference (``loralib``): ``A`` Kaiming-uniform (``a = sqrt(5)``, as
    ``nn.Linear``), ``B`` zeros, so the update starts at zero and the wrapped layer at its frozen output.

    Args:
        in_features: the linear layer's input width.
        out_features: its output width (for a packed qkv projection, all ``3C`` outputs: one update).
        rank: r, the width of the update.
        alpha: the scale numerator; the update is scaled by ``alpha / rank``.
        dropout: dropout on the input of the update, in [0, 1).

    Shapes:
        forward: ``x (..., in_features)`` → ``(..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down: torch.Tensor = self.dropout(x) @ self.lora_A.transpose(0, 1).to(x.dtype)
        up: torch.Tensor = down @ self.lora_B.transpose(0, 1).to(x.dtype)
        return up * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.lora_A.shape[1]}, out={self.lora_B.shape[0]}, rank={self.rank}, scaling={self.scaling:g}"
