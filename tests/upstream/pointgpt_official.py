"""A test double of the official PointGPT fine-tuning model (``PointTransformer``, CGuangyan-BIT/PointGPT).

Written by us from the structure of the upstream model files, not copied from them. It reproduces:

* the module/parameter names of the upstream fine-tuning model (same state-dict keys): ``group_divider``,
  ``encoder`` (``Encoder_small`` for ``encoder_dims`` 384, ``Encoder_large`` for 768/1024), ``pos_embed`` (a
  parameter-free sine embedding of the coordinates), ``blocks`` (a ``GPT_extractor``: ``sos``,
  ``layers.{i}`` with ``ln_1``, ``ln_2``, ``attn`` = ``nn.MultiheadAttention``, ``mlp.{0,2}``, then
  ``ln_f``, ``increase_dim``, ``cls_head_finetune`` and ``cls_norm``), ``generator_blocks`` (a
  ``GPT_generator``), a top-level ``norm``, ``cls_token``, ``cls_pos`` and ``sos_pos``;
* the quirks: the top-level ``norm`` is never called by the forward; the last ops on the tokens are
  ``blocks.ln_f`` then ``blocks.cls_norm``; the classifier ``cls_head_finetune`` lives INSIDE ``blocks``;
  a GPT block replaces its residual stream by ``ln_1(x)`` before the attention
  (``x = ln_1(x); x = x + attn(x); x = x + mlp(ln_2(x))``) and runs sequence-first ``(T, B, C)`` with a
  causal boolean mask; the sequence is ``[sos, cls, patch_1..G]`` with positions
  ``[cls_pos, sos_pos, pos(center_1..G)]`` (so sos gets cls_pos and cls gets sos_pos), and the CLS token
  at position 1 only sees sos and itself; the feature is ``cat(h[:, 1], max h[:, 2:])``; the patches and
  centres are reordered by a greedy nearest-neighbour chain over the centres starting at centre 0;
* the forward returns a TUPLE ``(logits (B, cls_dim), generation loss ())``: the Chamfer L1 + L2 of the
  generator's patches against the absolute patch points (upstream: CUDA Chamfer extensions; here plain
  torch: L1 = mean of the two directions' mean nearest distance / 2, L2 = sum of the two mean squared).

Deviation: upstream asserts ``encoder_dims in (384, 768, 1024)``; this double also accepts other widths
(test sizes), which take ``Encoder_small``. FPS/KNN call :mod:`pointpeft.ops`.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from tests.upstream.point_mae_official import Encoder as Encoder_small
from torch import nn

import pointpeft


class Encoder_large(nn.Module):  # noqa: N801 (upstream class name)
    """The large patch embedding (three convs before the max, 2048 channels after it).

    Shapes:
        forward: ``point_groups (B, G, K, 3)`` → ``(B, G, encoder_channel)``.
    """

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 256, 1),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Conv1d(256, 512, 1),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Conv1d(512, 1024, 1),
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2048, 2048, 1),
            nn.BatchNorm1d(2048),
            nn.ReLU(inplace=True),
            nn.Conv1d(2048, encoder_channel, 1),
        )

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        batch, groups, size, _ = point_groups.shape
        feat: torch.Tensor = self.first_conv(point_groups.reshape(batch * groups, size, 3).transpose(2, 1))
        pooled = feat.max(dim=2, keepdim=True).values
        feat = self.second_conv(torch.cat([pooled.expand(-1, -1, size), feat], dim=1))
        return feat.max(dim=2).values.reshape(batch, groups, self.encoder_channel)


def nearest_chain_order(center: torch.Tensor) -> torch.Tensor:
    """The upstream "simplified Morton sorting": from centre 0, repeatedly go to the nearest unvisited centre.

    Shapes:
        ``center (B, G, 3)`` → order ``(B, G)`` (int64), ``order[:, 0] == 0``; ties take the lowest index.
    """
    batch, groups, _ = center.shape
    dist = torch.cdist(center, center)
    visited = torch.zeros(batch, groups, dtype=torch.bool, device=center.device)
    rows = torch.arange(batch, device=center.device)
    last = torch.zeros(batch, dtype=torch.long, device=center.device)
    order = [last]
    visited[rows, last] = True
    for _ in range(groups - 1):
        candidates = dist[rows, last].masked_fill(visited, float("inf"))
        last = candidates.argmin(dim=-1)
        visited[rows, last] = True
        order.append(last)
    return torch.stack(order, dim=1)


class Group(nn.Module):
    """FPS + KNN (through :func:`pointpeft.ops.group`), then the nearest-neighbour chain reordering.

    Shapes:
        forward: ``xyz (B, N, 3)`` → ``(neighborhood (B, G, K, 3) relative, center (B, G, 3))``, chain order.
    """

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighborhood, center = pointpeft.ops.group(xyz, self.num_group, self.group_size)
        order = nearest_chain_order(center)
        neighborhood = torch.gather(
            neighborhood, 1, order[:, :, None, None].expand(-1, -1, self.group_size, 3)
        ).contiguous()
        center = torch.gather(center, 1, order[:, :, None].expand(-1, -1, 3)).contiguous()
        return neighborhood, center


class PositionEmbeddingCoordsSine(nn.Module):
    """Parameter-free sine/cosine embedding of ``n_dim`` coordinates into ``d_model`` channels (zero-padded).

    Shapes:
        forward: ``xyz (..., n_dim)`` → ``(..., d_model)``.
    """

    def __init__(
        self, n_dim: int = 1, d_model: int = 256, temperature: float = 10000, scale: float | None = None
    ):
        super().__init__()
        self.n_dim = n_dim
        self.num_pos_feats = d_model // n_dim // 2 * 2
        self.temperature = temperature
        self.padding = d_model - self.num_pos_feats * n_dim
        self.scale = (1.0 if scale is None else scale) * 2 * math.pi

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(self.num_pos_feats, dtype=torch.float32, device=xyz.device)
        dim_t = self.temperature ** (2 * torch.div(steps, 2, rounding_mode="trunc") / self.num_pos_feats)
        divided = (xyz * self.scale).unsqueeze(-1) / dim_t
        emb = torch.stack([divided[..., 0::2].sin(), divided[..., 1::2].cos()], dim=-1)
        return F.pad(emb.reshape(*xyz.shape[:-1], -1), (0, self.padding))


class Block(nn.Module):
    """A GPT block: ``x = ln_1(x); x = x + attn(x, x, x, mask); x = x + mlp(ln_2(x))``, sequence-first.

    Shapes:
        forward: ``x (T, B, C)``, ``attn_mask (T, T)`` bool (True = masked) → ``(T, B, C)``.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(embed_dim)
        self.ln_2 = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, 4 * embed_dim), nn.GELU(), nn.Linear(4 * embed_dim, embed_dim)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x)
        mixed, _ = self.attn(x, x, x, attn_mask=attn_mask, need_weights=False)
        x = x + mixed
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT_extractor(nn.Module):  # noqa: N801 (upstream class name)
    """The causal encoder; with ``pretrained=False`` it also holds ``cls_head_finetune`` and ``cls_norm``.

    Shapes:
        forward(classify=True): ``h (B, L, C)``, ``pos (B, L + 1, C)``, mask ``(L + 1, L + 1)`` →
        ``(logits (B, num_classes), encoded (B, L + 1, C))``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_layers: int,
        num_classes: int,
        trans_dim: int,
        group_size: int,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.trans_dim = trans_dim
        self.group_size = group_size
        self.sos = nn.Parameter(torch.zeros(embed_dim))
        nn.init.normal_(self.sos)
        self.layers = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embed_dim)
        self.increase_dim = nn.Sequential(nn.Conv1d(trans_dim, 3 * group_size, 1))
        if not pretrained:
            self.cls_head_finetune = nn.Sequential(
                nn.Linear(2 * trans_dim, 256),
                nn.BatchNorm1d(256),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(256, 256),
                nn.BatchNorm1d(256),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(256, num_classes),
            )
            self.cls_norm = nn.LayerNorm(trans_dim)

    def forward(
        self, h: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor, classify: bool = False
    ) -> Any:
        batch = h.shape[0]
        h = h.transpose(0, 1)
        pos = pos.transpose(0, 1)
        sos = torch.ones(1, batch, self.embed_dim, device=h.device, dtype=h.dtype) * self.sos
        h = torch.cat([sos, h if classify else h[:-1]], dim=0)
        for layer in self.layers:
            h = layer(h + pos, attn_mask)
        h = self.ln_f(h)
        encoded = h.transpose(0, 1)
        if not classify:
            return encoded
        tokens = self.cls_norm(encoded)
        feature = torch.cat([tokens[:, 1], tokens[:, 2:].max(dim=1).values], dim=-1)
        return self.cls_head_finetune(feature), encoded


class GPT_generator(nn.Module):  # noqa: N801 (upstream class name)
    """The causal generator: blocks, ``ln_f`` and ``increase_dim`` to ``group_size`` points per token.

    Shapes:
        forward: ``h (B, L, C)``, ``pos (B, L, C)``, mask ``(L, L)`` → points ``(B * L, group_size, 3)``.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, num_layers: int, trans_dim: int, group_size: int
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.trans_dim = trans_dim
        self.group_size = group_size
        self.sos = nn.Parameter(torch.zeros(embed_dim))
        nn.init.normal_(self.sos)
        self.layers = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embed_dim)
        self.increase_dim = nn.Sequential(nn.Conv1d(trans_dim, 3 * group_size, 1))

    def forward(self, h: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = h.shape
        h = h.transpose(0, 1)
        pos = pos.transpose(0, 1)
        for layer in self.layers:
            h = layer(h + pos, attn_mask)
        h = self.ln_f(h)  # (L, B, C)
        points: torch.Tensor = self.increase_dim(h.transpose(1, 2))  # (L, 3K, B)
        return points.transpose(1, 2).transpose(0, 1).reshape(batch * length, -1, 3)


def chamfer_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chamfer L1 as the upstream extension: mean over both directions of the nearest distance, halved.

    Shapes:
        ``pred (P, K, 3)``, ``target (P, K', 3)`` → ``()``.
    """
    sq = torch.cdist(pred, target).square()
    return (
        sq.min(dim=2).values.clamp_min(0).sqrt().mean() + sq.min(dim=1).values.clamp_min(0).sqrt().mean()
    ) / 2


def chamfer_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chamfer L2 as the upstream extension: sum over both directions of the mean squared nearest distance.

    Shapes:
        ``pred (P, K, 3)``, ``target (P, K', 3)`` → ``()``.
    """
    sq = torch.cdist(pred, target).square()
    return sq.min(dim=2).values.mean() + sq.min(dim=1).values.mean()


def causal_mask(size: int, device: torch.device) -> torch.Tensor:
    """Boolean ``(size, size)`` mask, True above the diagonal (a token sees itself and earlier tokens)."""
    return torch.ones(size, size, dtype=torch.bool, device=device).triu(diagonal=1)


class PointTransformer(nn.Module):
    """The PointGPT fine-tuning classifier.

    Args:
        config: attributes ``trans_dim``, ``depth``, ``decoder_depth``, ``drop_path_rate`` (unused, as
            upstream), ``cls_dim``, ``num_heads``, ``group_size``, ``num_group``, ``encoder_dims``.

    Shapes:
        forward: ``pts (B, N, 3)`` → ``(logits (B, cls_dim), generation loss ())``.
    """

    def __init__(self, config: Any, **kwargs: Any) -> None:
        super().__init__()
        self.config = config
        self.trans_dim = config.trans_dim
        self.depth = config.depth
        self.decoder_depth = config.decoder_depth
        self.drop_path_rate = config.drop_path_rate
        self.cls_dim = config.cls_dim
        self.num_heads = config.num_heads
        self.group_size = config.group_size
        self.num_group = config.num_group
        self.encoder_dims = config.encoder_dims

        self.group_divider = Group(self.num_group, self.group_size)
        self.encoder: nn.Module
        if self.encoder_dims in (768, 1024):
            self.encoder = Encoder_large(self.encoder_dims)
        else:
            self.encoder = Encoder_small(self.encoder_dims)
        self.pos_embed = PositionEmbeddingCoordsSine(3, self.encoder_dims, 1.0)
        self.blocks = GPT_extractor(
            self.encoder_dims, self.num_heads, self.depth, self.cls_dim, self.trans_dim, self.group_size
        )
        self.generator_blocks = GPT_generator(
            self.encoder_dims, self.num_heads, self.decoder_depth, self.trans_dim, self.group_size
        )
        self.norm = nn.LayerNorm(self.trans_dim)  # never called by forward (as upstream)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.trans_dim))
        self.sos_pos = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.loss_ce = nn.CrossEntropyLoss()
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def forward(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighborhood, center = self.group_divider(pts)
        tokens = self.encoder(neighborhood)  # (B, G, C)
        batch, groups, _ = tokens.shape
        pos = torch.cat([self.sos_pos.expand(batch, -1, -1), self.pos_embed(center)], dim=1)
        step = center[:, 1:] - center[:, :-1]
        direction = step / torch.norm(step, dim=-1, keepdim=True)
        pos_relative = self.pos_embed(torch.cat([center[:, :1], direction], dim=1))
        x = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(batch, -1, -1), pos), dim=1)
        logits, encoded = self.blocks(x, pos, causal_mask(groups + 2, pts.device), classify=True)
        encoded = torch.cat([encoded[:, :1], encoded[:, 2:-1]], dim=1)  # (B, G, C)
        generated = self.generator_blocks(encoded, pos_relative, causal_mask(groups, pts.device))
        target = (neighborhood + center.unsqueeze(2)).reshape(batch * groups, self.group_size, 3)
        return logits, chamfer_l1(generated, target) + chamfer_l2(generated, target)


def tiny_pointgpt(cls_dim: int = 5) -> PointTransformer:
    """A small PointGPT fine-tuning model: width 48, depth 2, decoder depth 1, 3 heads, 8 groups of 16."""
    config = SimpleNamespace(
        trans_dim=48,
        depth=2,
        decoder_depth=1,
        drop_path_rate=0.1,
        cls_dim=cls_dim,
        num_heads=3,
        group_size=16,
        num_group=8,
        encoder_dims=48,
    )
    return PointTransformer(config)
