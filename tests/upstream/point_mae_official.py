"""A test double of the official Point-MAE fine-tuning model (``PointTransformer``, Pang-Yatian/Point-MAE).

Written by us from the structure of the upstream model file, not copied from it: the same class names, the
same module and parameter names (so a state dict of the upstream model has the same keys), and the same
forward structure:

* ``Encoder``: a shared PointNet per patch, ``first_conv`` (Conv1d 3→128, BatchNorm, ReLU, Conv1d 128→256),
  the max over the patch's points concatenated to every point, ``second_conv`` (Conv1d 512→512, BatchNorm,
  ReLU, Conv1d 512→C), and the max over the points.
* ``Group``: FPS centres and their k nearest points, relative to the centre. The upstream file calls CUDA
  extensions for FPS and KNN, which are not available here; this double calls :func:`pointpeft.ops.group`.
* ``Block``: pre-norm, ``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))``, where
  ``drop_path`` is timm's stochastic depth (:class:`DropPath`) or ``nn.Identity`` at rate 0; ``Attention``
  computes the softmax attention explicitly from a packed ``qkv`` projection (no bias by default).
* ``TransformerEncoder``: re-adds the positional embedding before every block, ``x = block(x + pos)``,
  with stochastic-depth rates rising linearly from 0 to ``drop_path_rate`` over the blocks.
* ``PointTransformer``: a CLS token and CLS positional embedding, a positional MLP on the centres, the
  encoder blocks, a final LayerNorm ``norm``, and its own classifier ``cls_head_finetune`` on the
  concatenation of the CLS token and the max over the patch tokens; ``forward(pts (B, N, 3))`` returns its
  logits ``(B, cls_dim)``.

Left out: loading a checkpoint and the weight initialisation used when training from scratch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import pointpeft


class DropPath(nn.Module):
    """Stochastic depth as timm's ``DropPath``: in training, each sample's residual branch is zeroed with
    probability ``drop_prob`` and otherwise scaled by ``1 / (1 - drop_prob)`` (``scale_by_keep``); the
    identity in eval mode or at ``drop_prob`` 0.

    Shapes:
        forward: ``x (B, ...)`` → same.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """``drop(fc2(drop(act(fc1(x)))))`` with a GELU by default.

    Shapes:
        forward: ``x (B, T, in_features)`` → ``(B, T, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.drop(self.act(self.fc1(x)))
        out: torch.Tensor = self.drop(self.fc2(hidden))
        return out


class Attention(nn.Module):
    """Multi-head self-attention from one packed ``qkv`` projection, the softmax computed explicitly.

    Shapes:
        forward: ``x (B, T, dim)`` → ``(B, T, dim)``.
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
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        heads = self.num_heads
        # (B, T, 3C) -> (3, B, H, T, C / H)
        packed = self.qkv(x).reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        query, key, value = packed[0], packed[1], packed[2]
        weights = self.attn_drop((query @ key.transpose(-2, -1) * self.scale).softmax(dim=-1))
        mixed = (weights @ value).transpose(1, 2).reshape(batch, tokens, width)
        out: torch.Tensor = self.proj_drop(self.proj(mixed))
        return out


class Block(nn.Module):
    """A pre-norm transformer block with stochastic depth on both residual branches.

    Shapes:
        forward: ``x (B, T, dim)`` → ``(B, T, dim)``.
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
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        # Registered in the upstream order: norm1, drop_path, norm2, mlp, attn.
        self.norm1 = norm_layer(dim)
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        out: torch.Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out


class TransformerEncoder(nn.Module):
    """``depth`` blocks; the positional embedding is added to the input of every block.

    Args:
        drop_path_rate: one rate for every block, or a list of one rate per block.

    Shapes:
        forward: ``x (B, T, embed_dim)``, ``pos (B, T, embed_dim)`` → ``(B, T, embed_dim)``.
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
    ) -> None:
        super().__init__()
        rates = drop_path_rate if isinstance(drop_path_rate, list) else [drop_path_rate] * depth
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=rates[i],
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.blocks:
            x = layer(x + pos)
        return x


class Encoder(nn.Module):
    """The patch embedding: a PointNet over each group's points, with the group's max feature fed back.

    Shapes:
        forward: ``point_groups (B, G, K, 3)`` → ``(B, G, encoder_channel)``.
    """

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Conv1d(512, encoder_channel, 1),
        )

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        batch, groups, size, _ = point_groups.shape
        per_point: torch.Tensor = self.first_conv(
            point_groups.reshape(batch * groups, size, 3).transpose(2, 1)
        )
        pooled = per_point.max(dim=2, keepdim=True).values  # (BG, 256, 1)
        per_point = self.second_conv(torch.cat([pooled.expand(-1, -1, size), per_point], dim=1))
        return per_point.max(dim=2).values.reshape(batch, groups, self.encoder_channel)


class Group(nn.Module):
    """FPS + KNN grouping, through :func:`pointpeft.ops.group`.

    Shapes:
        forward: ``xyz (B, N, 3)`` → ``(neighborhood (B, G, K, 3) relative to its centre, center (B, G, 3))``.
    """

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighborhood, center = pointpeft.ops.group(xyz, self.num_group, self.group_size)
        return neighborhood, center


class PointTransformer(nn.Module):
    """The Point-MAE fine-tuning classifier.

    Args:
        config: an object with the attributes ``trans_dim``, ``depth``, ``drop_path_rate``, ``cls_dim``,
            ``num_heads``, ``group_size``, ``num_group`` and ``encoder_dims`` (the upstream model takes an
            EasyDict; a ``types.SimpleNamespace`` does).

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
        self.encoder_dims = config.encoder_dims

        self.group_divider = Group(self.num_group, self.group_size)
        self.encoder = Encoder(self.encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, self.trans_dim))
        rates = [float(r) for r in torch.linspace(0, self.drop_path_rate, self.depth)]
        self.blocks = TransformerEncoder(
            embed_dim=self.trans_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            drop_path_rate=rates,
        )
        self.norm = nn.LayerNorm(self.trans_dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(2 * self.trans_dim, 256),
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
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def get_loss_acc(self, ret: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of logits ``ret (B, cls_dim)`` against labels ``gt (B,)``, and the accuracy in %."""
        loss = self.loss_ce(ret, gt.long())
        accuracy = (ret.argmax(-1) == gt).sum() / float(gt.size(0))
        return loss, accuracy * 100

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center = self.group_divider(pts)
        tokens = self.encoder(neighborhood)  # (B, G, C)
        batch = tokens.shape[0]
        x = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(batch, -1, -1), self.pos_embed(center)), dim=1)
        x = self.norm(self.blocks(x, pos))
        pooled = torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)  # (B, 2C)
        logits: torch.Tensor = self.cls_head_finetune(pooled)
        return logits
