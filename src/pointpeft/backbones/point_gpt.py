"""The PointGPT fine-tuning encoder (its GPT extractor), with the official parameter names.

PointGPT's fine-tuning model (``PointTransformer`` in the official ``models/PointGPT.py``, blocks from
``models/GPT.py``) computes, for the classification features:

* grouping: FPS centers and their K nearest points, then the patches put in a chain order: patch 0 first,
  then repeatedly the patch whose center is nearest to the last one taken (upstream's
  ``simplied_morton_sorting``), see :func:`chain_order`;
* the mini-PointNet ``encoder`` (``Encoder_small`` at width 384, ``Encoder_large`` above);
* a parameter-free sine embedding of the centers, ``pos_embed`` (``PositionEmbeddingCoordsSine(3, C, 1.0)``);
* the GPT extractor ``blocks``: a start token ``blocks.sos`` is put before ``[cls_token; patches]``, the
  positional embedding ``[cls_pos, sos_pos, pos_embed(centers)]`` is added before every block (so the
  start token gets ``cls_pos`` and the CLS token gets ``sos_pos``, as upstream), blocks ``blocks.layers.{i}``
  run sequence-first with ``nn.MultiheadAttention`` under a causal mask (fine-tuning is causal too), and
  ``blocks.ln_f`` normalises the result.

Upstream's fine-tuning model also holds modules that are not on this path, which the built-in leaves out:
its top-level ``norm`` (never called by its forward), ``blocks.increase_dim`` (pre-training only),
``generator_blocks`` (fine-tuning's auxiliary point-generation loss, not the features), and
``blocks.cls_norm`` with ``blocks.cls_head_finetune`` (the classification head, built only when the
extractor is not the pre-training one, so absent from pre-trained checkpoints). The built-in's last
operation is ``blocks.ln_f``; :func:`pointpeft.wrap_with_dapt` adds its own head.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from pointpeft.backbones.point_mae import Group, PatchEncoder
from pointpeft.checks import (
    check_choice,
    check_input_device,
    check_input_dtype,
    check_number,
    check_positive_int,
)
from pointpeft.ops import check_cloud

PatchEncoderKind = Literal["small", "large"]
_ENCODER_KINDS: tuple[PatchEncoderKind, ...] = ("small", "large")
NUM_GLOBAL_TOKENS = 2
"""T, the global tokens of PointGPT, in this order: the start token (sos), then CLS."""


class LargePatchEncoder(nn.Module):
    """PointGPT's ``Encoder_large`` (PointGPT-B and -L): point-MLP 3→256→512→1024, max-pool, concatenate
    ``[global, local]`` (2048 channels), point-MLP 2048→2048→``encoder_channel``, max-pool.

    Shapes:
        forward: ``point_groups (B, G, K, 3)`` → tokens ``(B, G, C)``.
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
        b, g, k, _ = point_groups.shape
        feature = self.first_conv(point_groups.reshape(b * g, k, 3).transpose(2, 1))  # (BG, 1024, K)
        feature_global = feature.amax(dim=2, keepdim=True)
        feature = torch.cat([feature_global.expand(-1, -1, k), feature], dim=1)  # (BG, 2048, K)
        return self.second_conv(feature).amax(dim=2).reshape(b, g, self.encoder_channel)


class SinePositionEmbedding(nn.Module):
    """Parameter-free sine embedding of coordinates (upstream's ``PositionEmbeddingCoordsSine``).

    With ``F = (dim // n_dim) // 2 * 2`` features per coordinate and frequencies
    ``f_i = temperature ** (2 * (i // 2) / F)``, coordinate ``u`` becomes ``(sin(s u / f_0), cos(s u / f_1),
    sin(s u / f_2), …)`` with ``s = 2π · scale``; the coordinates' features are concatenated and zero-padded
    to ``dim``. PointGPT uses ``temperature = 1.0``, so every frequency is 1.

    Shapes:
        forward: ``xyz (..., n_dim)`` → ``(..., dim)``, in ``xyz``'s dtype.
    """

    def __init__(self, dim: int, n_dim: int = 3, temperature: float = 1.0, scale: float = 1.0) -> None:
        super().__init__()
        check_positive_int("n_dim", n_dim)
        check_positive_int("dim", dim)
        if dim // n_dim // 2 * 2 == 0:
            raise ValueError(f"dim must be at least 2 * n_dim = {2 * n_dim}, got dim={dim}")
        self.dim = dim
        self.n_dim = n_dim
        self.num_pos_feats = dim // n_dim // 2 * 2
        self.padding = dim - self.num_pos_feats * n_dim
        self.temperature = check_number("temperature", temperature, low=0.0, low_inclusive=False)
        self.scale = check_number("scale", scale, low=0.0, low_inclusive=False) * 2 * math.pi

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        if xyz.shape[-1] != self.n_dim:
            raise ValueError(f"xyz must have shape (..., {self.n_dim}), got {tuple(xyz.shape)}")
        steps = torch.arange(self.num_pos_feats, dtype=xyz.dtype, device=xyz.device)
        dim_t = self.temperature ** (2 * torch.div(steps, 2, rounding_mode="trunc") / self.num_pos_feats)
        divided = (xyz * self.scale).unsqueeze(-1) / dim_t  # (..., n_dim, F)
        emb = torch.stack([divided[..., 0::2].sin(), divided[..., 1::2].cos()], dim=-1)
        emb = emb.reshape(*xyz.shape[:-1], self.n_dim * self.num_pos_feats)
        return nn.functional.pad(emb, (0, self.padding))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_dim={self.n_dim}, temperature={self.temperature}"


def chain_order(centers: torch.Tensor) -> torch.Tensor:
    """The patch order of PointGPT: patch 0 first, then repeatedly the not yet taken patch whose center is
    nearest (``torch.cdist``, ties to the lowest index) to the last one taken.

    Args:
        centers: ``(B, G, 3)`` patch centers.

    Returns:
        LongTensor ``(B, G)``: for each cloud, a permutation of ``range(G)``. Not differentiable.
    """
    with torch.no_grad():
        b, g, _ = centers.shape
        batch = torch.arange(b, device=centers.device)
        dist = torch.cdist(centers, centers)
        taken = torch.zeros(b, g, dtype=torch.bool, device=centers.device)
        last = torch.zeros(b, dtype=torch.long, device=centers.device)
        taken[batch, last] = True
        order = [last]
        for _ in range(g - 1):
            last = dist[batch, last].masked_fill(taken, math.inf).argmin(dim=-1)
            taken[batch, last] = True
            order.append(last)
        return torch.stack(order, dim=1)


class GPTGroup(nn.Module):
    """FPS + KNN grouping, with the patches in :func:`chain_order`.

    Shapes:
        forward: ``xyz (B, N, 3)`` → ``(neighborhood (B, G, K, 3), centers (B, G, 3))``, neighborhoods
        relative to their center.
    """

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size
        self.grouping = Group(num_group, group_size)

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighborhood, centers = self.grouping(xyz)
        order = chain_order(centers)  # (B, G)
        batch = torch.arange(order.shape[0], device=order.device).unsqueeze(1)
        return neighborhood[batch, order], centers[batch, order]

    def extra_repr(self) -> str:
        return f"num_group={self.num_group}, group_size={self.group_size}"


class GPTBlock(nn.Module):
    """PointGPT's block, sequence-first: ``h = ln_1(x); h = h + attn(h, h, h, attn_mask)``, then
    ``h + mlp(ln_2(h))`` (the attention residual is added to the normalised input, as upstream; no drop
    path). ``attn`` is an ``nn.MultiheadAttention`` (packed ``in_proj``, ``out_proj``); ``mlp`` is
    ``Sequential(Linear(C, 4C), GELU, Linear(4C, C))``.

    Shapes:
        forward: ``x (T, B, C)``, ``attn_mask (T, T)`` boolean (True: blocked) or None → ``(T, B, C)``.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ln_1(x)
        a, _ = self.attn(x, x, x, attn_mask=attn_mask, need_weights=False)
        x = x + a
        return x + self.mlp(self.ln_2(x))


class GPTExtractor(nn.Module):
    """PointGPT's ``GPT_extractor`` on the fine-tuning path: start token ``sos``, blocks ``layers``, final
    LayerNorm ``ln_f``.

    ``forward(x, pos, attn_mask)`` puts ``sos`` before ``x``, adds ``pos`` before every block, runs the
    blocks sequence-first and applies ``ln_f``.

    Shapes:
        forward: ``x (B, L, C)``, ``pos (B, 1 + L, C)``, ``attn_mask (1 + L, 1 + L)`` →
        ``(B, 1 + L, C)`` (the start token first).
    """

    def __init__(self, embed_dim: int, num_heads: int, num_layers: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.sos = nn.Parameter(torch.zeros(embed_dim))
        self.layers = nn.ModuleList([GPTBlock(embed_dim, num_heads) for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        batch = x.shape[0]
        h = x.transpose(0, 1)  # (L, B, C)
        pos = pos.transpose(0, 1)
        h = torch.cat([self.sos.expand(1, batch, self.embed_dim), h], dim=0)
        for layer in self.layers:
            h = layer(h + pos, attn_mask)
        return self.ln_f(h).transpose(0, 1)


class PointGPT(nn.Module):
    """The PointGPT fine-tuning encoder (the GPT extractor and what feeds it), without a head.

    The defaults are PointGPT-S's fine-tuning configuration (``trans_dim`` 384, ``depth`` 12,
    ``num_heads`` 6, ``num_group`` 128, ``group_size`` 32, clouds of 2048 points; ``Encoder_small``).
    PointGPT-B / -L use ``trans_dim`` 768 / 1024 with ``patch_encoder="large"``. A PointGPT checkpoint's
    ``base_model`` entries load by name once the prefixes its loader strips (``module.``,
    ``GPT_Transformer.`` or ``base_model.``) are removed; its entries for the modules left out (see the
    module docstring: ``norm``, ``blocks.increase_dim``, ``generator_blocks``, ``blocks.cls_norm``,
    ``blocks.cls_head_finetune``) are then unexpected keys. ``cls_token`` and ``cls_pos`` are created at
    fine-tuning (pre-trained checkpoints do not have them).

    Args:
        trans_dim: token width C (upstream's ``encoder_dims``, equal to its ``trans_dim`` in every
            published configuration).
        depth: number of GPT blocks.
        num_heads: attention heads per block.
        num_group: G, the number of patches per cloud.
        group_size: K, the points per patch.
        patch_encoder: ``"small"`` (``Encoder_small``, PointGPT-S) or ``"large"`` (``Encoder_large``).

    Shapes:
        forward: ``points (B, N, 3)`` with ``N >= max(num_group, group_size)`` → tokens ``(B, 2 + G, C)``
        after ``blocks.ln_f``: ``T = 2`` global tokens first (the start token, then CLS), then the G
        patches in chain order. Upstream's head reads the CLS token ``[:, 1]`` and the max over ``[:, 2:]``.
        The attention is causal: token ``i`` sees tokens ``0..i``; so, as upstream, the start token and CLS
        see only each other and their outputs do not depend on the points (under DAPT the CLS token also
        sees the internal prompts, which the prompt splicing makes visible to every token).
    """

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        num_group: int = 128,
        group_size: int = 32,
        patch_encoder: PatchEncoderKind = "small",
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
        patch_encoder = check_choice("patch_encoder", patch_encoder, _ENCODER_KINDS)
        if trans_dim % num_heads != 0:
            raise ValueError(
                f"trans_dim must be divisible by num_heads, got trans_dim={trans_dim}, num_heads={num_heads}"
            )
        if trans_dim < 6:
            raise ValueError(
                f"trans_dim must be at least 6 (the sine embedding of 3 coordinates), got {trans_dim}"
            )
        # The constructor's arguments: what pointpeft.save_adapter records to rebuild this backbone.
        self.config: dict[str, int | str] = {
            "trans_dim": trans_dim, "depth": depth, "num_heads": num_heads, "num_group": num_group,
            "group_size": group_size, "patch_encoder": patch_encoder,
        }  # fmt: skip
        self.trans_dim = trans_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_group = num_group
        self.group_size = group_size
        self.patch_encoder = patch_encoder

        self.group_divider = GPTGroup(num_group, group_size)
        self.encoder: nn.Module = (
            PatchEncoder(trans_dim) if patch_encoder == "small" else LargePatchEncoder(trans_dim)
        )
        self.pos_embed = SinePositionEmbedding(trans_dim, 3, temperature=1.0)
        self.blocks = GPTExtractor(trans_dim, num_heads, depth)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.sos_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PointGPT's initialisation: truncated normal (std 0.02) for Linear/Conv1d weights (the
        attention's packed input projection Xavier-uniform, as ``nn.MultiheadAttention`` sets it), zero
        biases, unit LayerNorm weights; ``cls_token`` and ``cls_pos`` truncated normal (std 0.02),
        ``blocks.sos`` standard normal, ``sos_pos`` zero."""
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
                nn.init.xavier_uniform_(module.in_proj_weight)
                if module.in_proj_bias is not None:
                    nn.init.zeros_(module.in_proj_bias)
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
        nn.init.normal_(self.blocks.sos)
        nn.init.zeros_(self.sos_pos)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, 2 + G, C)`` of ``points (B, N, 3)``: the start token, CLS, then the patches.

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
        x = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)  # (B, 1 + G, C)
        pos = torch.cat(
            (self.cls_pos.expand(batch, -1, -1), self.sos_pos.expand(batch, -1, -1), self.pos_embed(centers)),
            dim=1,
        )  # (B, 2 + G, C)
        length = pos.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=points.device).triu(diagonal=1)
        out: torch.Tensor = self.blocks(x, pos, causal)
        return out
