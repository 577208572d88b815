"""The bottleneck of the AdaptFormer-style adapter."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class AdaptFormerAdapter(nn.Module):
    """``s · (W_u Dropout(ReLU(W_d x + b_d)) + b_u)``: a bottleneck ``C → r → C`` with a fixed scale ``s``.

    No LayerNorm inside and no residual: the caller adds the output where it belongs. Initialised as
    AdaptFormer's ``"lora"`` option: ``W_d`` Kaiming-uniform (``a = sqrt(5)``, as ``nn.Linear``), ``b_d``,
    ``W_u`` and ``b_u`` zeros, so a fresh adapter outputs exactly zero.

    Args:
        dim: C, the token width.
        rank: r, the bottleneck width.
        scale: s, the constant the output is multiplied by (not learned).
        dropout: dropout probability on the bottleneck activations, in [0, 1).

    Shapes:
        forward: ``x (..., C)`` (``(B, L, C)`` or ``(L, B, C)``) → ``(..., C)``.
    """

    def __init__(self, dim: int, rank: int, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.scale = scale
        self.dropout = dropout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AdaptFormer's ``"lora"`` init: Kaiming-uniform down-projection weight, every other tensor zero."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(F.relu(self.down(x)), p=self.dropout, training=self.training)
        out: torch.Tensor = self.up(hidden) * self.scale
        return out

    def extra_repr(self) -> str:
        return f"rank={self.down.out_features}, scale={self.scale:g}, dropout={self.dropout:g}"
