"""A test double of the official ACT fine-tuning model (``PointTransformer``, RunpeiDong/ACT).

Written by us from the structure of the upstream model file, not copied from it. ACT's fine-tuning model is
Point-MAE's (same Encoder, pre-norm blocks with the positional embedding re-added before each, called final
``norm``, CLS + max pooling, the 3-layer BatchNorm ``cls_head_finetune``) except that:

* the width is read from ``config.embed_dim`` (not ``trans_dim``) and the model keeps ``self.embed_dim``;
* a ``reduce_dim`` maps the patch features to the width: ``nn.Linear(encoder_dims, embed_dim)`` when they
  differ, else ``nn.Identity`` (no state-dict keys; the published configs use 384 for both);
* ``config.transfer_type``: ``'linear'`` gives a one-layer head ``Sequential(Linear(2C, cls_dim))``; any
  type other than ``'full'`` freezes parameters by name (``'mlp-3'``/``'linear'``: all without ``cls`` in
  the name; ``'bit-fit'``: all without ``bias`` or ``cls``); ``'side'`` (side-tuning) is not reproduced here.

So this double reuses :mod:`tests.upstream.point_mae_official`'s classes and subclasses its
``PointTransformer``. Its pre-training checkpoint prefix is ``ACT_encoder.`` (see ``checkpoints.py``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from tests.upstream import point_mae_official
from torch import nn


class PointTransformer(point_mae_official.PointTransformer):
    """The ACT fine-tuning classifier (``transfer_type`` ``'full'``, ``'linear'``, ``'mlp-3'`` or ``'bit-fit'``).

    Args:
        config: attributes ``embed_dim``, ``depth``, ``drop_path_rate``, ``cls_dim``, ``num_heads``,
            ``group_size``, ``num_group``, ``encoder_dims``, ``transfer_type``.

    Shapes:
        forward: ``pts (B, N, 3)`` → logits ``(B, cls_dim)``.
    """

    def __init__(self, config: Any, **kwargs: Any) -> None:
        if config.transfer_type not in ("full", "linear", "mlp-3", "bit-fit"):
            raise ValueError(
                f"config.transfer_type: expected 'full', 'linear', 'mlp-3' or 'bit-fit', got {config.transfer_type!r}"
            )
        mae_config = SimpleNamespace(**vars(config))
        mae_config.trans_dim = config.embed_dim
        super().__init__(mae_config, **kwargs)
        self.config = config
        self.embed_dim = config.embed_dim
        del self.trans_dim
        self.reduce_dim: nn.Module = (
            nn.Linear(self.encoder_dims, self.embed_dim)
            if self.encoder_dims != self.embed_dim
            else nn.Identity()
        )
        if config.transfer_type == "linear":
            self.cls_head_finetune = nn.Sequential(nn.Linear(2 * self.embed_dim, self.cls_dim))
        if config.transfer_type != "full":
            for name, param in self.named_parameters():
                keep = "cls" in name or (config.transfer_type == "bit-fit" and "bias" in name)
                if not keep:
                    param.requires_grad = False

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center = self.group_divider(pts)
        tokens = self.reduce_dim(self.encoder(neighborhood))
        batch = tokens.shape[0]
        x = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(batch, -1, -1), self.pos_embed(center)), dim=1)
        x = self.norm(self.blocks(x, pos))
        logits: torch.Tensor = self.cls_head_finetune(
            torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)
        )
        return logits


def tiny_act(cls_dim: int = 5, transfer_type: str = "full") -> PointTransformer:
    """A small ACT fine-tuning model: width 48 (``encoder_dims`` 48, so ``reduce_dim`` is the identity)."""
    config = SimpleNamespace(
        embed_dim=48,
        depth=2,
        drop_path_rate=0.1,
        cls_dim=cls_dim,
        num_heads=3,
        group_size=16,
        num_group=8,
        encoder_dims=48,
        transfer_type=transfer_type,
    )
    return PointTransformer(config)
