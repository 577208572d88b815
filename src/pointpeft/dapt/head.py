"""The pooled classification head of DAPT."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PooledHead(nn.Module):
    """Pools the final features and classifies them with the Point-MAE head.

    The features are concatenated in the order CLS, prompts, patches, each included if named in ``pool``:
    ``"cls"`` is the token at ``cls_index``, ``"prompt"`` the mean of the prompts, ``"patch"`` the max over the patch
    tokens (every token after the ``num_global`` global tokens). Then ``mlp``:
    ``Linear(D, H) → BN → ReLU → Dropout → Linear(H, H) → BN → ReLU → Dropout → Linear(H, K)`` with
    ``D = C · len(pool)``.

    Args:
        dim: token width C.
        num_classes: K.
        pool: subset of ``("cls", "prompt", "patch")``, in that order.
        num_global: number of leading global tokens in ``tokens``.
        hidden: H.
        dropout: dropout probability of the hidden layers.
        cls_index: position of the CLS token among the global tokens.

    Shapes:
        forward: ``tokens (B, T, C)``, ``prompts (B, P, C)`` or None → logits ``(B, K)``.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        pool: Sequence[str],
        num_global: int = 1,
        hidden: int = 256,
        dropout: float = 0.5,
        cls_index: int = 0,
    ) -> None:
        super().__init__()
        if "cls" in pool and num_global < 1:
            raise ValueError("pool contains 'cls' but the backbone has no global (CLS) token")
        self.pool = tuple(pool)
        self.num_global = num_global
        self.cls_index = cls_index
        self.mlp = nn.Sequential(
            nn.Linear(dim * len(self.pool), hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def pooled_features(self, tokens: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """The concatenated head input ``(B, C · len(pool))``."""
        parts = []
        if "cls" in self.pool:
            parts.append(tokens[:, self.cls_index])
        if "prompt" in self.pool:
            if prompts is None or prompts.shape[1] == 0:
                raise RuntimeError("pool contains 'prompt' but the forward pass produced no prompts")
            parts.append(prompts.mean(dim=1))
        if "patch" in self.pool:
            parts.append(tokens[:, self.num_global :].max(dim=1)[0])
        return torch.cat(parts, dim=-1)

    def forward(self, tokens: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and tokens.shape[0] < 2:
            raise ValueError(
                f"the head's BatchNorm needs a batch of at least 2 in train mode, got a batch of "
                f"{tokens.shape[0]}; call model.eval() to predict single clouds"
            )
        logits: torch.Tensor = self.mlp(self.pooled_features(tokens, prompts))
        return logits

    def extra_repr(self) -> str:
        return f"pool={self.pool}, num_global={self.num_global}, cls_index={self.cls_index}"
