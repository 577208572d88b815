"""PointLoRA's modules: the LoRA update with a shared prompt MLP, the mask predictor, and the shared part
(the prompt MLPs, the predictor, the multi-scale token selection) that one adapter holds once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pointpeft.methods.lora import LoRA
from pointpeft.ops import group

#: The eps inside the logs of the mask loss (the released code's).
MASK_LOSS_EPS = 1e-6


def prompt_mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """``Linear(in, hidden) → GELU → Linear(hidden, out)``, weights truncated normal (std 0.02), zero biases."""
    first, last = nn.Linear(in_features, hidden), nn.Linear(hidden, out_features)
    for layer in (first, last):
        nn.init.trunc_normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(first, nn.GELU(), last)


class MaskPredictor(nn.Module):
    """``p = sigmoid(fc2(ReLU(fc1(T))))`` per token, ``fc1: C → C//2``, ``fc2: C//2 → 1`` (PyTorch's default
    Linear init, as released). Shapes: ``tokens (B, S, C)`` → ``(B, S)``.

    Computed in float32 at least, with autocast off: the scores pick the top-K tokens, and near their init
    (all close to 0.5) bfloat16 would round many of them to one value, so that ties, broken by position,
    would pick the tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 2)
        self.fc2 = nn.Linear(dim // 2, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(tokens.dtype, torch.float32)
        with torch.autocast(tokens.device.type, enabled=False):
            fc1, fc2 = self.fc1, self.fc2
            hidden = torch.relu(F.linear(tokens.to(dtype), fc1.weight.to(dtype), fc1.bias.to(dtype)))
            logits = F.linear(hidden, fc2.weight.to(dtype), fc2.bias.to(dtype))
        return torch.sigmoid(logits.squeeze(-1))


def mask_loss(probabilities: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``Σ_s weights[s] · mean(p_s log(p_s + eps) + (1 − p_s) log(1 − p_s + eps))``, eps = 1e-6, in float32
    at least: the negative binary entropy of the predictor's scores (minimising it pushes p toward 0.5)."""
    total: torch.Tensor | None = None
    for p, weight in zip(probabilities, weights, strict=True):
        p = p.float() if p.dtype in (torch.float16, torch.bfloat16) else p
        term = weight * torch.mean(
            p * torch.log(p + MASK_LOSS_EPS) + (1 - p) * torch.log(1 - p + MASK_LOSS_EPS)
        )
        total = term if total is None else total + term
    assert total is not None
    return total


class PointLoRAUpdate(nn.Module):
    """Beside one frozen linear layer: ``B A x`` (its own :class:`~pointpeft.methods.lora.LoRA`) plus the
    adapter's prompt MLP of this layer's role, ``M(x)``, which every block shares.

    The shared MLP is registered once, in the adapter's :class:`PointLoRAShared`; this module only refers
    to it (it is not a submodule here, so the adapter's files and parameter counts hold it once).

    Shapes:
        forward: ``x (..., in_features)`` → ``(..., out_features)``.
    """

    shared_mlp: nn.Module

    def __init__(self, lora: LoRA, shared_mlp: nn.Module) -> None:
        super().__init__()
        self.lora = lora
        object.__setattr__(self, "shared_mlp", shared_mlp)  # not registered: PointLoRAShared holds it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared: torch.Tensor = self.shared_mlp(x)
        out: torch.Tensor = self.lora(x) + shared.to(x.dtype)
        return out


class PointLoRAShared(nn.Module):
    """What one PointLoRA adapter holds once (at the first block): the shared prompt MLPs of the adapted
    linear layers (``linear_mlps[role]``), the MLPs on the patch tokens (``patch_mlp``) and on the selected
    tokens (``selected_mlp``), and the mask predictor; and the multi-scale token selection.

    Args:
        dim: C, the token width.
        hidden: the prompt MLPs' hidden width.
        scales: ``(groups, group_size, selected)`` per extra grouping.
        mask_weights: each scale's weight in the mask loss.
        aux_weight: the mask loss's weight in the training loss.
        every_block: the selected tokens' positions are re-added at every block's input (the backbone
            re-adds its positions before every block); False: added once, before the first block.
        encoder: the backbone's patch encoder (``(B, S, K, 3)`` → ``(B, S, C)``; on Point-BERT its
            ``encoder`` then its ``reduce_dim``); referred to, not registered (it is the backbone's).
        pos_embed: the backbone's position MLP (``(B, S, 3)`` → ``(B, S, C)``); referred to likewise.
    """

    encoder: nn.Module
    pos_embed: nn.Module

    def __init__(
        self,
        dim: int,
        hidden: int,
        scales: Sequence[tuple[int, int, int]],
        mask_weights: Sequence[float],
        aux_weight: float,
        every_block: bool,
        encoder: nn.Module,
        pos_embed: nn.Module,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.hidden = hidden
        self.scales = tuple(tuple(s) for s in scales)
        self.mask_weights = tuple(mask_weights)
        self.aux_weight = aux_weight
        self.every_block = every_block
        self.linear_mlps = nn.ModuleDict()
        self.patch_mlp = prompt_mlp(dim, hidden, dim)
        self.selected_mlp = prompt_mlp(dim, hidden, dim)
        self.predictor = MaskPredictor(dim)
        object.__setattr__(self, "encoder", encoder)
        object.__setattr__(self, "pos_embed", pos_embed)

    def update_for(
        self, in_features: int, out_features: int, role: str, rank: int, alpha: float
    ) -> PointLoRAUpdate:
        """The module beside a linear projection ``in_features → out_features`` (its role ``role`` in the
        block): a new LoRA update and the shared MLP of that role, made at its first use."""
        if role not in self.linear_mlps:
            self.linear_mlps[role] = prompt_mlp(in_features, self.hidden, out_features)
        return PointLoRAUpdate(LoRA(in_features, out_features, rank, alpha, 0.0), self.linear_mlps[role])

    def select(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(tokens (B, K, C), their positions (B, K, C), the predictor's scores per scale (B, S_s))`` of
        ``points (B, N, 3)``, ``K = Σ selected``: per scale, the FPS + kNN groups through the patch encoder
        and their centres through the position MLP, the ``selected`` tokens of highest score, in the order of
        their scores (as ``torch.topk`` returns them)."""
        tokens, positions, scores = [], [], []
        for index, (groups, size, selected) in enumerate(self.scales):
            needed = max(groups, size)
            if points.shape[1] < needed:
                raise ValueError(
                    f"PointLoRAConfig.scales[{index}] = {(groups, size, selected)} groups each cloud into "
                    f"{groups} groups of {size} points, which needs at least {needed} points per cloud, got "
                    f"points of shape {tuple(points.shape)}; give each cloud more points or use smaller scales"
                )
            neighborhood, centers = group(points, groups, size)
            encoded: torch.Tensor = self.encoder(neighborhood)  # (B, S, C)
            if encoded.shape[-1] != self.dim:
                raise RuntimeError(
                    f"the patch encoder gives tokens of width {encoded.shape[-1]}, but the blocks' width is "
                    f"{self.dim}; PointLoRA's token selection feeds the encoder's tokens to the blocks"
                )
            place: torch.Tensor = self.pos_embed(centers)  # (B, S, C)
            p = self.predictor(encoded)  # (B, S)
            top = p.topk(selected, dim=1).indices  # (B, K_s)
            gather = top.unsqueeze(-1).expand(-1, -1, encoded.shape[-1])
            tokens.append(encoded.gather(1, gather))
            positions.append(place.gather(1, gather.expand(-1, -1, place.shape[-1])))
            scores.append(p)
        return torch.cat(tokens, dim=1), torch.cat(positions, dim=1), scores

    def auxiliary_loss(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        """``aux_weight · mask_loss(scores, mask_weights)``: what the training loss adds."""
        return self.aux_weight * mask_loss(scores, self.mask_weights)

    def extra_repr(self) -> str:
        return (
            f"scales={self.scales}, mask_weights={self.mask_weights}, aux_weight={self.aux_weight}, "
            f"every_block={self.every_block}"
        )
