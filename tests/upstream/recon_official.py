"""A test double of the official ReCon fine-tuning model (``PointTransformer``, qizekun/ReCon).

Written by us from the structure of the upstream fine-tuning model, not copied from it. It reproduces:

* the class names ``PointTransformer``, ``TransformerEncoder``, ``Block``, ``CrossAttention`` and the
  module/parameter names, so a state dict of the upstream fine-tuning model has the same keys:
  ``group_divider``, ``encoder.{first_conv,second_conv}``, ``cls_token``, ``cls_pos``, ``img_token``,
  ``text_token``, ``img_pos``, ``text_pos``, ``pos_embed``, ``blocks.blocks.{i}`` (each with ``norm1``,
  ``norm2``, ``mlp``, ``attn`` and the contrast stream ``norm1_contrast``, ``norm2_contrast``,
  ``mlp_contrast``, ``attn_contrast.{q,kv,proj}``), ``norm`` and ``cls_head_finetune``;
* three global tokens (CLS, image, text) before the patch tokens, each with its own positional embedding,
  and the positional embedding re-added before every block (``x = block(x + pos)``);
* the ReCon block: the 3 global tokens and the patch tokens are normalised separately (``norm1_contrast``
  / ``norm1``), the residual stream is REPLACED by its normalised value (``x = norm(x); x = x + f(x)``,
  not pre-norm), the patch tokens self-attend among themselves only, and the global tokens cross-attend
  (queries from them, keys and values from the patch tokens) without attending to each other; the same
  for the MLP half with ``norm2_contrast`` / ``norm2``. In pre-training the patch tokens are detached in
  the cross-attention (``finetune=False``); the fine-tuning model builds its blocks with ``finetune=True``;
* the final ``norm``, which the forward calls, and the feature ``cat(cls, img, text, max over patches)``
  of width ``4 * trans_dim`` fed to ``cls_head_finetune`` (three BatchNorm layers, or one Linear when
  ``config.type == 'linear'``);
* ``cls_token`` left at zeros at construction (upstream initialises only the other five tokens).

The grouping calls :func:`pointpeft.ops.group` instead of the upstream CUDA extensions. Left out: the
upstream checkpoint loader (emulated in ``tests/upstream/checkpoints.py``) and the from-scratch weight
initialisation.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from tests.upstream.point_mae_official import Attention, DropPath, Encoder, Group, Mlp
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` over keys/values ``y`` (``q`` and packed ``kv`` projections).

    Shapes:
        forward: ``x (B, Tq, dim)``, ``y (B, Tk, dim)`` → ``(B, Tq, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch, keys, width = y.shape
        heads = self.num_heads
        packed = self.kv(y).reshape(batch, keys, 2, heads, width // heads).permute(2, 0, 3, 1, 4)
        key, value = packed[0], packed[1]
        queries = x.shape[1]
        query = self.q(x).reshape(batch, queries, heads, width // heads).transpose(1, 2)
        weights = self.attn_drop((query @ key.transpose(-2, -1) * self.scale).softmax(dim=-1))
        mixed = (weights @ value).transpose(1, 2).reshape(batch, queries, width)
        out: torch.Tensor = self.proj_drop(self.proj(mixed))
        return out


class Block(nn.Module):
    """The ReCon block; with ``with_contrast`` the first 3 tokens run the contrast stream (see the module doc).

    Shapes:
        forward: ``x (B, 3 + G, dim)`` → same.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        with_contrast: bool = False,
        finetune: bool = False,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, drop=drop)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop=drop)
        self.with_contrast = with_contrast
        self.finetune = finetune
        if with_contrast:
            self.norm1_contrast = nn.LayerNorm(dim)
            self.norm2_contrast = nn.LayerNorm(dim)
            self.mlp_contrast = Mlp(dim, hidden, drop=drop)
            self.attn_contrast = CrossAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_contrast:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            out: torch.Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
            return out
        glob = self.norm1_contrast(x[:, :3])
        vis = self.norm1(x[:, 3:])
        context = vis if self.finetune else vis.detach()
        glob = glob + self.drop_path(self.attn_contrast(glob, context))
        vis = vis + self.drop_path(self.attn(vis))
        glob = self.norm2_contrast(glob)
        vis = self.norm2(vis)
        glob = glob + self.drop_path(self.mlp_contrast(glob))
        vis = vis + self.drop_path(self.mlp(vis))
        return torch.cat((glob, vis), dim=1)


class TransformerEncoder(nn.Module):
    """``depth`` contrast blocks; the positional embedding is re-added before every block.

    Shapes:
        forward: ``x (B, 3 + G, embed_dim)``, ``pos`` same → same.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float | list[float] = 0.0,
        finetune: bool = False,
    ) -> None:
        super().__init__()
        rates = drop_path_rate if isinstance(drop_path_rate, list) else [drop_path_rate] * depth
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop_rate,
                attn_drop_rate,
                rates[i],
                with_contrast=True,
                finetune=finetune,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return x


class PointTransformer(nn.Module):
    """The ReCon fine-tuning classifier.

    Args:
        config: attributes ``trans_dim``, ``depth``, ``drop_path_rate``, ``cls_dim``, ``num_heads``,
            ``group_size``, ``num_group``, ``encoder_dims`` and ``type`` (``'linear'`` for a linear head).

    Shapes:
        forward: ``pts (B, N, 3)`` → logits ``(B, cls_dim)``.
    """

    def __init__(self, config: Any, **kwargs: Any) -> None:
        super().__init__()
        self.config = config
        self.type = config.type  # type: ignore[method-assign]  # upstream shadows nn.Module.type
        self.trans_dim = config.trans_dim
        self.depth = config.depth
        self.drop_path_rate = config.drop_path_rate
        self.cls_dim = config.cls_dim
        self.num_heads = config.num_heads
        self.group_size = config.group_size
        self.num_group = config.num_group
        self.encoder_dims = config.encoder_dims
        width = self.trans_dim

        self.group_divider = Group(self.num_group, self.group_size)
        self.encoder = Encoder(self.encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, width))
        self.img_token = nn.Parameter(torch.zeros(1, 1, width))
        self.text_token = nn.Parameter(torch.zeros(1, 1, width))
        self.img_pos = nn.Parameter(torch.zeros(1, 1, width))
        self.text_pos = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        rates = [float(r) for r in torch.linspace(0, self.drop_path_rate, self.depth)]
        self.blocks = TransformerEncoder(
            embed_dim=width, depth=self.depth, drop_path_rate=rates, num_heads=self.num_heads, finetune=True
        )
        self.norm = nn.LayerNorm(width)
        self.cls_head_finetune: nn.Sequential
        if self.type == "linear":
            self.cls_head_finetune = nn.Sequential(nn.Linear(4 * width, self.cls_dim))
        else:
            self.cls_head_finetune = nn.Sequential(
                nn.Linear(4 * width, 256),
                nn.BatchNorm1d(256),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(256, 256),
                nn.BatchNorm1d(256),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(256, self.cls_dim),
            )
        self.loss_ce = nn.CrossEntropyLoss()
        for token in (self.img_token, self.text_token, self.cls_pos, self.img_pos, self.text_pos):
            nn.init.trunc_normal_(token, std=0.02)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center = self.group_divider(pts)
        tokens = self.encoder(neighborhood)  # (B, G, C)
        batch = tokens.shape[0]

        def first(param: torch.Tensor) -> torch.Tensor:
            return param.expand(batch, -1, -1)

        x = torch.cat((first(self.cls_token), first(self.img_token), first(self.text_token), tokens), dim=1)
        pos = torch.cat(
            (first(self.cls_pos), first(self.img_pos), first(self.text_pos), self.pos_embed(center)), dim=1
        )
        x = self.norm(self.blocks(x, pos))
        feature = torch.cat([x[:, 0], x[:, 1], x[:, 2], x[:, 3:].max(dim=1).values], dim=-1)  # (B, 4C)
        logits: torch.Tensor = self.cls_head_finetune(feature)
        return logits


def tiny_recon(cls_dim: int = 5, head_type: str = "full") -> PointTransformer:
    """A small ReCon fine-tuning model: width 48, depth 2, 3 heads, 8 groups of 16 points."""
    config = SimpleNamespace(
        trans_dim=48,
        depth=2,
        drop_path_rate=0.1,
        cls_dim=cls_dim,
        num_heads=3,
        group_size=16,
        num_group=8,
        encoder_dims=48,
        type=head_type,
    )
    return PointTransformer(config)
