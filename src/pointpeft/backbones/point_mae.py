"""The Point-MAE fine-tuning encoder, with the official parameter names.

Module and parameter names follow the official Point-MAE / DAPT model files (``encoder.first_conv.*``,
``encoder.second_conv.*``, ``pos_embed.*``, ``blocks.blocks.{i}.*``, ``norm.*``, ``cls_token``,
``cls_pos``), so that an official checkpoint's encoder weights load by name, and so that a generic
walker (timm naming: ``norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2``) finds every block.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

from pointpeft.checks import (
    check_choice,
    check_fraction,
    check_input_device,
    check_input_dtype,
    check_positive_int,
)
from pointpeft.ops import check_cloud, group

PosMode = Literal["every_block", "once"]
_POS_MODES: tuple[PosMode, ...] = ("every_block", "once")


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples, scaling the rest.

    In training mode each sample of the batch keeps its branch with probability ``1 - drop_prob`` and the
    kept branches are divided by ``1 - drop_prob``; in eval mode (or with ``drop_prob == 0``) this is the
    identity. Input and output: ``(B, ...)``.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchEncoder(nn.Module):
    """Mini-PointNet that turns each group of points into one token.

    Shared point-MLP 3→128→256, max-pool, concatenate ``[global, local]`` (512 channels), point-MLP
    512→512→``encoder_channel``, max-pool.

    Args:
        encoder_channel: output token width C.

    Shapes:
        forward: ``point_groups (B, G, K, 3)`` → tokens ``(B, G, C)``.
    """

    def __init__(self, encoder_channel: int = 384) -> None:
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
        if not (torch.is_grad_enabled() and (point_groups.requires_grad or self._trainable())):
            return self._forward_frozen(point_groups)
        b, g, k, _ = point_groups.shape
        feature = self.first_conv(point_groups.reshape(b * g, k, 3).transpose(2, 1))  # (BG, 256, K)
        feature_global = torch.max(feature, dim=2, keepdim=True)[0]  # (BG, 256, 1)
        feature = torch.cat([feature_global.expand(-1, -1, k), feature], dim=1)  # (BG, 512, K)
        feature = self.second_conv(feature)  # (BG, C, K)
        return torch.max(feature, dim=2)[0].reshape(b, g, self.encoder_channel)

    def _trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def _forward_frozen(self, point_groups: torch.Tensor) -> torch.Tensor:
        """The forward's function when nothing needs a gradient (a frozen encoder), with less memory.

        Each intermediate is released as soon as the next exists, and the max-pools skip their indices.
        With the standard layers (the classes above, no hooks), the points are also kept channels-last,
        ``(BG, C, K, 1)`` with C innermost in memory: that is the layout in which cuDNN computes these
        1×1 convolutions, so it makes no layout copies of the 512-channel intermediates (about 1 GB each
        at batch 128 of 128 groups × 32 points), and the peak memory halves. BatchNorm uses the batch's
        statistics and updates its running ones exactly as the module's forward does; the results equal
        the forward's up to the rounding of a differently ordered reduction.
        """
        b, g, k, _ = point_groups.shape
        layers = (*self.first_conv, *self.second_conv)
        if not all(_is_plain(layer) for layer in layers):
            feature = point_groups.reshape(b * g, k, 3).transpose(2, 1)
            for layer in self.first_conv:
                feature = layer(feature)
            feature = torch.cat([feature.amax(dim=2, keepdim=True).expand(-1, -1, k), feature], dim=1)
            for layer in self.second_conv:
                feature = layer(feature)
            return feature.amax(dim=2).reshape(b, g, self.encoder_channel)
        feature = point_groups.reshape(b * g, k, 3, 1).permute(0, 2, 1, 3)  # (BG, 3, K, 1)
        for layer in self.first_conv:
            feature = _channels_last_layer(layer, feature)
        pooled = feature.amax(dim=2, keepdim=True).expand(-1, -1, k, -1)
        # The concatenation along C, built channels-last: (BG, K, 1, 512) viewed as (BG, 512, K, 1).
        feature = torch.cat([pooled.permute(0, 2, 3, 1), feature.permute(0, 2, 3, 1)], dim=3)
        feature = feature.permute(0, 3, 1, 2)
        del pooled
        for layer in self.second_conv:
            feature = _channels_last_layer(layer, feature)
        return feature.amax(dim=2).reshape(b, g, self.encoder_channel)


_PLAIN_LAYERS = (nn.Conv1d, nn.BatchNorm1d, nn.ReLU)


def _is_plain(layer: nn.Module) -> bool:
    """``layer`` is exactly a 1×1 Conv1d, a BatchNorm1d or a ReLU, with no hooks (its forward is known)."""
    if type(layer) not in _PLAIN_LAYERS:
        return False
    if layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks or layer._backward_pre_hooks:
        return False
    if isinstance(layer, nn.Conv1d):
        return layer.kernel_size == (1,) and layer.groups == 1 and layer.padding_mode == "zeros"
    return True


def _channels_last_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s forward (a :func:`_is_plain` layer) on ``x (N, C, K, 1)`` kept channels-last."""
    if isinstance(layer, nn.Conv1d):
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op after the first layer
        weight = layer.weight.unsqueeze(-1).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, layer.bias)
    if isinstance(layer, nn.ReLU):
        return F.relu(x, inplace=layer.inplace)
    # The one other plain layer is a BatchNorm1d. cuDNN may return the 3-channel first convolution's output
    # in NCHW: BatchNorm is faster channels-last.
    return batch_norm_any_rank(cast(nn.BatchNorm1d, layer), x.contiguous(memory_format=torch.channels_last))


def batch_norm_any_rank(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """What ``bn(x)`` computes, for an ``x`` of any rank (``nn.BatchNorm1d`` itself accepts rank 2 or 3):
    the same choice of batch or running statistics, and the same update of the running statistics."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # a cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean if track else None,
        bn.running_var if track else None,
        bn.weight,
        bn.bias,
        batch_stats,
        momentum,
        bn.eps,
    )


class Group(nn.Module):
    """FPS + KNN grouping (the Point-MAE contract), backed by :func:`pointpeft.ops.group`.

    Shapes:
        forward: ``xyz (B, N, 3)`` → ``(neighborhood (B, G, K, 3), centers (B, G, 3))``; neighborhoods are
        relative to their center.
    """

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighborhood, centers = group(xyz, self.num_group, self.group_size)
        return neighborhood, centers

    def extra_repr(self) -> str:
        return f"num_group={self.num_group}, group_size={self.group_size}"


class Mlp(nn.Module):
    """Transformer feed-forward network ``fc1 → GELU → fc2``. Shapes: ``(B, L, C)`` → ``(B, L, C)``."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` projection (timm / Point-MAE layout).

    Computed as the reference does: ``softmax((q @ kᵀ) * head_dim**-0.5) @ v``, heads merged, ``proj``;
    with ``fused = True``, by ``torch.nn.functional.scaled_dot_product_attention`` instead (the same
    function, without keeping the attention matrix for backward; :func:`pointpeft.full_finetune` sets it).

    Shapes:
        forward: ``(B, L, C)`` → ``(B, L, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.fused:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
            return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(attn(norm1(x)))``, then ``x + DropPath(mlp(norm2(x)))``.

    Shapes:
        forward: ``(B, L, C)`` → ``(B, L, C)``.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, round(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`Block` in ``self.blocks`` (hence the official ``blocks.blocks.{i}`` names).

    ``forward(x, pos=None)``: with ``pos`` given, it is added to the input of every block (Point-MAE);
    without it the blocks are applied in sequence. Shapes: ``x (B, L, C)``, ``pos (B, L, C)``.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path_rate: float | list[float] = 0.0,
    ) -> None:
        super().__init__()
        rates = drop_path_rate if isinstance(drop_path_rate, list) else [float(drop_path_rate)] * depth
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rates[i]) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x if pos is None else x + pos)
        return x


class PointMAE(nn.Module):
    """The Point-MAE fine-tuning encoder (ViT-S-like, 22.1M parameters at the defaults with a head).

    Pipeline: FPS + KNN grouping → mini-PointNet patch encoder → ``[cls_token; tokens]`` plus
    ``[cls_pos; pos_embed(centers)]`` → ``depth`` pre-norm blocks → final LayerNorm. No classification
    head: :func:`pointpeft.wrap_with_dapt` adds one.

    Args:
        trans_dim: token width C.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        num_group: G, the number of FPS centers (patches) per cloud.
        group_size: K, the points per patch.
        encoder_dims: output width of the patch encoder. Point-MAE uses ``trans_dim``; a different width
            (Point-BERT: 256) adds ``reduce_dim = Linear(encoder_dims, trans_dim)`` after the encoder, as in
            Point-BERT's ``PointTransformer``, so Point-BERT checkpoints load into
            ``PointMAE(encoder_dims=256)``.
        drop_path_rate: stochastic-depth rate, linearly spaced from 0 over the blocks.
        pos_mode: ``"every_block"`` adds the positional embedding to the input of every block (Point-MAE's
            behaviour); ``"once"`` adds it before block 0 only, as the DAPT reference does. To reproduce the
            DAPT paper, use ``"once"``.
        mlp_ratio: FFN hidden width over C.
        qkv_bias: whether the qkv projection has a bias (Point-MAE: no).

    Shapes:
        forward: ``points (B, N, 3)`` with ``N >= max(num_group, group_size)`` → tokens ``(B, 1 + G, C)``
        (CLS first), after the final LayerNorm.
    """

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        num_group: int = 128,
        group_size: int = 32,
        encoder_dims: int = 384,
        drop_path_rate: float = 0.0,
        pos_mode: PosMode = "every_block",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("trans_dim", trans_dim),
            ("depth", depth),
            ("num_heads", num_heads),
            ("num_group", num_group),
            ("group_size", group_size),
            ("encoder_dims", encoder_dims),
        ):
            check_positive_int(name, value)
        pos_mode = check_choice("pos_mode", pos_mode, _POS_MODES)
        check_fraction("drop_path_rate", drop_path_rate)
        # The constructor's arguments: what pointpeft.save_adapter records to rebuild this backbone.
        self.config: dict[str, int | float | str | bool] = {
            "trans_dim": trans_dim,
            "depth": depth,
            "num_heads": num_heads,
            "num_group": num_group,
            "group_size": group_size,
            "encoder_dims": encoder_dims,
            "drop_path_rate": float(drop_path_rate),
            "pos_mode": pos_mode,
            "mlp_ratio": float(mlp_ratio),
            "qkv_bias": bool(qkv_bias),
        }
        self.trans_dim = trans_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_group = num_group
        self.group_size = group_size
        self.encoder_dims = encoder_dims
        self.pos_mode = pos_mode

        self.group_divider = Group(num_group, group_size)
        self.encoder = PatchEncoder(encoder_dims)
        if encoder_dims != trans_dim:
            self.reduce_dim = nn.Linear(encoder_dims, trans_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = TransformerEncoder(trans_dim, depth, num_heads, mlp_ratio, qkv_bias, rates)
        self.norm = nn.LayerNorm(trans_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Point-MAE's initialisation: truncated normal (std 0.02) for Linear/Conv1d weights and the two
        cls parameters, zero biases, unit LayerNorm weights."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, 1 + G, C)`` of ``points (B, N, 3)``.

        Raises:
            TypeError: if ``points`` is not a floating tensor of the parameters' dtype (convert it with
                ``points.float()``, or the model with ``model.double()``). ValueError: if it is not
                ``(B, N, 3)`` with ``N >= max(num_group, group_size)``, is on another device than the
                parameters, or holds NaN or inf coordinates.
        """
        check_cloud(points, "points")
        check_input_dtype("points", points, self)
        check_input_device("points", points, self)
        needed = max(self.num_group, self.group_size)
        if points.shape[1] < needed:
            raise ValueError(
                f"points must hold at least max(num_group, group_size) = {needed} points per cloud, "
                f"got shape {tuple(points.shape)} (N = {points.shape[1]}); give each cloud more points, "
                "or build the model with a smaller num_group / group_size"
            )
        neighborhood, centers = self.group_divider(points)
        tokens = self.encoder(neighborhood)  # (B, G, encoder_dims)
        if self.encoder_dims != self.trans_dim:
            tokens = self.reduce_dim(tokens)  # (B, G, C)
        batch = tokens.shape[0]
        x = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(batch, -1, -1), self.pos_embed(centers)), dim=1)
        if self.pos_mode == "once":
            x = self.blocks(x + pos)
        else:
            x = self.blocks(x, pos)
        return self.norm(x)
