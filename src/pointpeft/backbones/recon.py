"""The ReCon fine-tuning encoder (both streams), with the official parameter names.

ReCon's fine-tuning model (``PointTransformer`` in the official ``models/transformer.py``) prepends three
global tokens to the patch tokens, ``[cls, img, text, patches]``, each with its own learned positional
embedding (``cls_pos``, ``img_pos``, ``text_pos``; the patches get ``pos_embed(centers)``), and adds the
positional embedding before every block. Every block has two streams:

* the patch stream (``norm1, attn, norm2, mlp``): self-attention among the patch tokens only;
* the global stream (``norm1_contrast, attn_contrast, norm2_contrast, mlp_contrast``): the three global
  tokens cross-attend to the (normalised) patch tokens, queries from the global tokens
  (``attn_contrast.q``), keys and values from the patches (``attn_contrast.kv``).

Both streams add their residual to the *normalised* input (``h = norm1(x); h = h + attn(h)``, then
``h = norm2(h); h = h + mlp(h)``), as upstream does; it is not the pre-norm residual of Point-MAE. At
fine-tuning the patches are not detached from the global stream (upstream's ``finetune=True``).

Upstream's head pools ``[x[:, 0], x[:, 1], x[:, 2], max over x[:, 3:]]`` after the final ``norm``; it is
not part of the backbone (:func:`pointpeft.wrap_with_dapt` adds its own).
"""

from __future__ import annotations

import torch
from torch import nn

from pointpeft.backbones.point_mae import Attention, DropPath, Group, Mlp, PatchEncoder
from pointpeft.checks import (
    check_fraction,
    check_input_device,
    check_input_dtype,
    check_positive_int,
)
from pointpeft.ops import check_cloud

NUM_GLOBAL_TOKENS = 3
"""T, the global tokens of ReCon, in this order: CLS, image, text."""


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from ``x``, keys and values from ``y`` (ReCon's layout: a ``q``
    projection and a packed ``kv`` projection).

    Computes ``softmax((q @ kᵀ) * head_dim**-0.5) @ v`` per head, heads merged, then ``proj``.

    Shapes:
        forward: ``x (B, M, C)``, ``y (B, L, C)`` → ``(B, M, C)``.
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
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, m, c = x.shape
        head = c // self.num_heads
        kv = self.kv(y).reshape(b, y.shape[1], 2, self.num_heads, head).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]  # (B, H, L, c/H)
        q = self.q(x).reshape(b, m, self.num_heads, head).transpose(1, 2)  # (B, H, M, c/H)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, m, c)
        return self.proj_drop(self.proj(out))


class ReConBlock(nn.Module):
    """A ReCon block with its two streams (see the module docstring).

    The first :data:`NUM_GLOBAL_TOKENS` tokens form the global stream, the rest the patch stream (DAPT's
    prompts, spliced in after the global tokens, join the patch stream). With ``h`` the normalised
    stream::

        g = norm1_contrast(x[:, :3]);  p = norm1(x[:, 3:])
        g = g + drop_path(attn_contrast(g, p));  p = p + drop_path(attn(p))
        g = norm2_contrast(g);  p = norm2(p)
        out = [g + drop_path(mlp_contrast(g)), p + drop_path(mlp(p))]

    Shapes:
        forward: ``x (B, 3 + L, C)`` → ``(B, 3 + L, C)``.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm1_contrast = nn.LayerNorm(dim)
        self.norm2_contrast = nn.LayerNorm(dim)
        self.mlp_contrast = Mlp(dim, hidden)
        self.attn_contrast = CrossAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        glob = self.norm1_contrast(x[:, :NUM_GLOBAL_TOKENS])
        patches = self.norm1(x[:, NUM_GLOBAL_TOKENS:])
        glob = glob + self.drop_path(self.attn_contrast(glob, patches))
        patches = patches + self.drop_path(self.attn(patches))
        glob = self.norm2_contrast(glob)
        patches = self.norm2(patches)
        glob = glob + self.drop_path(self.mlp_contrast(glob))
        patches = patches + self.drop_path(self.mlp(patches))
        return torch.cat((glob, patches), dim=1)


class ReConTransformerEncoder(nn.Module):
    """A stack of :class:`ReConBlock` in ``self.blocks`` (hence the official ``blocks.blocks.{i}`` names);
    ``forward(x, pos)`` adds ``pos`` to the input of every block. Shapes: ``x, pos (B, 3 + G, C)``."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path_rates: list[float] | None = None,
    ) -> None:
        super().__init__()
        rates = drop_path_rates if drop_path_rates is not None else [0.0] * depth
        self.blocks = nn.ModuleList(
            [ReConBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rates[i]) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return x


class ReCon(nn.Module):
    """The ReCon fine-tuning encoder (both streams), without its classification head.

    Pipeline: FPS + KNN grouping → mini-PointNet patch encoder (width ``trans_dim``: ReCon has no
    ``reduce_dim``) → ``[cls_token, img_token, text_token; tokens]`` plus ``[cls_pos, img_pos, text_pos;
    pos_embed(centers)]`` → ``depth`` two-stream blocks (the positional embedding re-added before each) →
    final LayerNorm ``norm`` on all tokens.

    The defaults are the published fine-tuning configuration (``trans_dim`` 384, ``depth`` 12,
    ``num_heads`` 6, ``num_group`` 128, ``group_size`` 32, clouds of 2048 points; the published
    ScanObjectNN runs use ``drop_path_rate=0.2``). A ReCon checkpoint's ``base_model`` entries load by
    name once the prefixes its loader strips (``module.``, ``MAE_encoder.`` or ``base_model.``) are
    removed; the pre-training-only entries (decoder, projections, image and text encoders) are then
    unexpected keys.

    Args:
        trans_dim: token width C (also the patch encoder's output width).
        depth: number of blocks.
        num_heads: attention heads per block (both streams).
        num_group: G, the number of patches per cloud.
        group_size: K, the points per patch.
        drop_path_rate: stochastic-depth rate, linearly spaced from 0 over the blocks.
        mlp_ratio: FFN hidden width over C.
        qkv_bias: whether the qkv / q / kv projections have a bias (ReCon: no).

    Shapes:
        forward: ``points (B, N, 3)`` with ``N >= max(num_group, group_size)`` → tokens ``(B, 3 + G, C)``
        after the final LayerNorm: ``T = 3`` global tokens first (CLS, image, text), then the G patches.
    """

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        num_group: int = 128,
        group_size: int = 32,
        drop_path_rate: float = 0.0,
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
        ):
            check_positive_int(name, value)
        check_fraction("drop_path_rate", drop_path_rate)
        if trans_dim % num_heads != 0:
            raise ValueError(
                f"trans_dim must be divisible by num_heads, got trans_dim={trans_dim}, num_heads={num_heads}"
            )
        # The constructor's arguments: what pointpeft.save_adapter records to rebuild this backbone.
        self.config: dict[str, int | float | bool] = {
            "trans_dim": trans_dim, "depth": depth, "num_heads": num_heads, "num_group": num_group,
            "group_size": group_size, "drop_path_rate": float(drop_path_rate),
            "mlp_ratio": float(mlp_ratio), "qkv_bias": bool(qkv_bias),
        }  # fmt: skip
        self.trans_dim = trans_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_group = num_group
        self.group_size = group_size

        self.group_divider = Group(num_group, group_size)
        self.encoder = PatchEncoder(trans_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.img_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.text_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.img_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.text_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = ReConTransformerEncoder(trans_dim, depth, num_heads, mlp_ratio, qkv_bias, rates)
        self.norm = nn.LayerNorm(trans_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ReCon's initialisation: truncated normal (std 0.02) for Linear/Conv1d weights and the six global
        token and position parameters, zero biases, unit LayerNorm weights."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for token in (
            self.cls_token,
            self.img_token,
            self.text_token,
            self.cls_pos,
            self.img_pos,
            self.text_pos,
        ):
            nn.init.trunc_normal_(token, std=0.02)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, 3 + G, C)`` of ``points (B, N, 3)``: CLS, image, text, then the patches.

        Raises:
            TypeError: if ``points`` is not a floating tensor of the parameters' dtype. ValueError: if it
                is not ``(B, N, 3)`` with ``N >= max(num_group, group_size)``, is on another device than
                the parameters, or holds NaN or inf coordinates.
        """
        check_cloud(points, "points")
        check_input_dtype("points", points, self)
        check_input_device("points", points, self)
        needed = max(self.num_group, self.group_size)
        if points.shape[1] < needed:
            raise ValueError(
                f"points must hold at least max(num_group, group_size) = {needed} points per cloud, "
                f"got shape {tuple(points.shape)} (N = {points.shape[1]})"
            )
        neighborhood, centers = self.group_divider(points)
        tokens = self.encoder(neighborhood)  # (B, G, C)
        batch = tokens.shape[0]
        glob = torch.cat((self.cls_token, self.img_token, self.text_token), dim=1).expand(batch, -1, -1)
        glob_pos = torch.cat((self.cls_pos, self.img_pos, self.text_pos), dim=1).expand(batch, -1, -1)
        x = torch.cat((glob, tokens), dim=1)
        pos = torch.cat((glob_pos, self.pos_embed(centers)), dim=1)
        return self.norm(self.blocks(x, pos))
