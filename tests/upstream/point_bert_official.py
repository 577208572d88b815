"""A test double of the official Point-BERT fine-tuning model (``PointTransformer``, lulutang0608/Point-BERT).

Written by us from the structure of the upstream model file, not copied from it. It reproduces the
module/parameter names (same state-dict keys): ``group_divider``, ``encoder`` (the dVAE's PointNet,
``encoder_dims`` 256 in the published configs), ``reduce_dim`` (``Linear(encoder_dims, trans_dim)``, applied
to the patch tokens before the CLS token is prepended), ``cls_token`` (zeros at construction), ``cls_pos``,
``pos_embed``, ``blocks.blocks.{i}`` (pre-norm blocks as Point-MAE's, positional embedding re-added before
every block), ``norm`` (called by the forward) and ``cls_head_finetune`` =
``Linear(2C, 256), ReLU, Dropout(0.5), Linear(256, cls_dim)`` (no BatchNorm, so keys ``.0`` and ``.3``). The
feature is ``cat(x[:, 0], max over x[:, 1:])``.

The pre-training checkpoint (a MoCo model with ``transformer_q`` and ``transformer_k``, a dVAE and a queue)
and the upstream loader, which reads ``transformer_q`` only, are emulated in ``tests/upstream/checkpoints.py``.
FPS/KNN call :func:`pointpeft.ops.group`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from tests.upstream.point_mae_official import Encoder, Group, TransformerEncoder
from torch import nn


class PointTransformer(nn.Module):
    """The Point-BERT fine-tuning classifier.

    Args:
        config: attributes ``trans_dim``, ``depth``, ``drop_path_rate``, ``cls_dim``, ``num_heads``,
            ``group_size``, ``num_group``, ``encoder_dims``.

    Shapes:
        forward: ``pts (B, N, 3)`` → logits ``(B, cls_dim)``.
    """

    def __init__(self, config: Any, **kwargs: Any) -> None:
        super().__init__()
        self.config = config
        self.trans_dim = config.trans_dim
        self.depth = config.depth
        self.drop_path_rate = config.drop_path_rate
        self.cls_dim = config.cls_dim
        self.num_heads = config.num_heads
        self.group_size = config.group_size
        self.num_group = config.num_group
        self.group_divider = Group(self.num_group, self.group_size)
        self.encoder_dims = config.encoder_dims
        self.encoder = Encoder(self.encoder_dims)
        self.reduce_dim = nn.Linear(self.encoder_dims, self.trans_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, self.trans_dim))
        rates = [float(r) for r in torch.linspace(0, self.drop_path_rate, self.depth)]
        self.blocks = TransformerEncoder(
            embed_dim=self.trans_dim, depth=self.depth, drop_path_rate=rates, num_heads=self.num_heads
        )
        self.norm = nn.LayerNorm(self.trans_dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(2 * self.trans_dim, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, self.cls_dim),
        )
        self.loss_ce = nn.CrossEntropyLoss()

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center = self.group_divider(pts)
        tokens = self.reduce_dim(self.encoder(neighborhood))  # (B, G, trans_dim)
        batch = tokens.shape[0]
        x = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(batch, -1, -1), self.pos_embed(center)), dim=1)
        x = self.norm(self.blocks(x, pos))
        feature = torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)
        logits: torch.Tensor = self.cls_head_finetune(feature)
        return logits


def tiny_point_bert(cls_dim: int = 5) -> PointTransformer:
    """A small Point-BERT fine-tuning model: width 48, patch features 32 (so ``reduce_dim`` maps 32 → 48)."""
    config = SimpleNamespace(
        trans_dim=48,
        depth=2,
        drop_path_rate=0.1,
        cls_dim=cls_dim,
        num_heads=3,
        group_size=16,
        num_group=8,
        encoder_dims=32,
    )
    return PointTransformer(config)
