"""A small user model on ``torch.nn.TransformerEncoder`` (written by us), for tests of the module-tree walker.

:class:`TorchEncoderModel` is a point-cloud classifier that a user might write on torch's own transformer
(batch-first or sequence-first, pre- or post-norm, with or without a final norm), at a tiny size so that
tests run fast on the CPU. Every sub-module is called through its ``__call__``, so wrapping or hooking a
sub-module takes effect. The third-party backbones (ReCon, PointGPT, Point-BERT, ACT, openpoints' PointViT,
Point-MAE) are tested on the faithful doubles of their upstream fine-tuning models in ``tests/upstream``.
"""

from __future__ import annotations

import torch
from torch import nn

from pointpeft.backbones.point_mae import PatchEncoder
from pointpeft.ops import group


def _pos_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))


def _token(dim: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(1, 1, dim) * 0.02)


class TorchEncoderModel(nn.Module):
    """A user model on ``nn.TransformerEncoder`` (1 cls token); ``(B, N, 3)`` → ``(B, 1 + G, C)``."""

    def __init__(
        self,
        dim: int = 32,
        depth: int = 3,
        heads: int = 4,
        num_group: int = 16,
        group_size: int = 8,
        batch_first: bool = True,
        norm_first: bool = True,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size
        self.batch_first = batch_first
        self.patch_encoder = PatchEncoder(dim)
        self.cls_token = _token(dim)
        self.pos_embed = _pos_mlp(dim)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=batch_first,
            norm_first=norm_first,
        )
        self.transformer = nn.TransformerEncoder(
            layer,
            num_layers=depth,
            norm=nn.LayerNorm(dim) if final_norm else None,
            enable_nested_tensor=False,
        )

    def forward(self, points: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        neighborhood, centers = group(points, self.num_group, self.group_size)
        tokens = self.patch_encoder(neighborhood)  # (B, G, C)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([torch.zeros_like(tokens[:, :1]), self.pos_embed(centers)], dim=1)
        x = x + pos
        if not self.batch_first:
            x = x.transpose(0, 1)  # (T, B, C)
        x = self.transformer(x, src_key_padding_mask=key_padding_mask)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x
