"""Small stand-ins for third-party point-cloud transformer backbones (written by us from a description).

Each model reproduces the module attribute names and the forward structure of the backbone it mimics
(ReCon, PointGPT, openpoints' PointViT, and a user model on ``torch.nn.TransformerEncoder``), at a tiny
size, so that tests of the module-tree walker run fast on the CPU. Every sub-module is called through its
``__call__``, so wrapping or hooking a sub-module takes effect.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from pointpeft.backbones.point_mae import DropPath, PatchEncoder
from pointpeft.ops import group


def _pos_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))


def _token(dim: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(1, 1, dim) * 0.02)


def _drop_rates(rate: float, depth: int) -> list[float]:
    return [float(r) for r in torch.linspace(0, rate, depth)]


# ---------------------------------------------------------------------------------------------------------
# Shared transformer parts (Point-MAE / ReCon / timm naming)
# ---------------------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """Point-MAE / ReCon feed-forward ``fc1 → act → drop → fc2 → drop``: ``(B, L, C)`` → ``(B, L, C)``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Self-attention with packed ``qkv`` and a manual softmax (timm layout): ``(B, L, C)`` → ``(B, L, C)``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class CrossAttention(nn.Module):
    """ReCon cross-attention, queries from ``x`` and keys/values from ``y``: ``(B, Lq, C)`` → ``(B, Lq, C)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, nq, c = x.shape
        nk = y.shape[1]
        h = self.heads
        q = self.q(x).reshape(b, nq, h, c // h).transpose(1, 2)  # (B, h, Lq, d)
        kv = self.kv(y).reshape(b, nk, 2, h, c // h).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]  # (B, h, Lk, d)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, nq, c)
        return self.proj_drop(self.proj(x))


# ---------------------------------------------------------------------------------------------------------
# 1. ReCon
# ---------------------------------------------------------------------------------------------------------


class ReConBlock(nn.Module):
    """ReCon's block: self-attention on patch tokens, cross-attention of the 3 global tokens to them.

    Shapes: ``(B, 3 + L, C)`` → ``(B, 3 + L, C)``; any number L of tokens after the 3 global ones.
    """

    def __init__(self, dim: int, heads: int, drop_path: float = 0.0, with_contrast: bool = True) -> None:
        super().__init__()
        self.with_contrast = with_contrast
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        if with_contrast:
            self.norm1_contrast = nn.LayerNorm(dim)
            self.attn_contrast = CrossAttention(dim, heads)
            self.norm2_contrast = nn.LayerNorm(dim)
            self.mlp_contrast = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_contrast:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        cls_x, vis_x = x[:, :3], x[:, 3:]
        vis_x = vis_x + self.drop_path(self.attn(self.norm1(vis_x)))
        vis_x = vis_x + self.drop_path(self.mlp(self.norm2(vis_x)))
        cls_x = cls_x + self.drop_path(self.attn_contrast(self.norm1_contrast(cls_x), vis_x))
        cls_x = cls_x + self.drop_path(self.mlp_contrast(self.norm2_contrast(cls_x)))
        return torch.cat([cls_x, vis_x], dim=1)


class TransformerEncoder(nn.Module):
    """ReCon's block stack, re-adding ``pos`` before every block: ``(B, L, C), (B, L, C)`` → ``(B, L, C)``."""

    def __init__(
        self, dim: int, depth: int, heads: int, drop_path_rate: float = 0.0, with_contrast: bool = True
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [ReConBlock(dim, heads, dp, with_contrast) for dp in _drop_rates(drop_path_rate, depth)]
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x + pos)
        return x


class ReConLike(nn.Module):
    """Mimics ReCon's fine-tune ``PointTransformer`` (3 global tokens); ``(B, N, 3)`` → logits ``(B, classes)``."""

    def __init__(
        self,
        dim: int = 32,
        depth: int = 3,
        heads: int = 4,
        num_group: int = 16,
        group_size: int = 8,
        num_classes: int = 10,
        drop_path_rate: float = 0.0,
        with_contrast: bool = True,
    ) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size
        self.encoder = PatchEncoder(dim)
        self.cls_token, self.img_token, self.text_token = _token(dim), _token(dim), _token(dim)
        self.cls_pos, self.img_pos, self.text_pos = _token(dim), _token(dim), _token(dim)
        self.pos_embed = _pos_mlp(dim)
        self.blocks = TransformerEncoder(dim, depth, heads, drop_path_rate, with_contrast)
        self.norm = nn.LayerNorm(dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(4 * dim, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes)
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        neighborhood, centers = group(points, self.num_group, self.group_size)
        tokens = self.encoder(neighborhood)  # (B, G, C)
        b = tokens.shape[0]
        globals_ = [t.expand(b, -1, -1) for t in (self.cls_token, self.img_token, self.text_token)]
        global_pos = [p.expand(b, -1, -1) for p in (self.cls_pos, self.img_pos, self.text_pos)]
        x = torch.cat([*globals_, tokens], dim=1)
        pos = torch.cat([*global_pos, self.pos_embed(centers)], dim=1)
        x = self.norm(self.blocks(x, pos))
        features = torch.cat([x[:, 0], x[:, 1], x[:, 2], x[:, 3:].max(1)[0]], dim=-1)
        return self.cls_head_finetune(features)


# ---------------------------------------------------------------------------------------------------------
# 2. PointGPT
# ---------------------------------------------------------------------------------------------------------


class GPTBlock(nn.Module):
    """PointGPT's sequence-first block (residual taken after ``ln_1``): ``(L, B, C)`` → ``(L, B, C)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ln_1(x)
        a, _ = self.attn(x, x, x, attn_mask=attn_mask, need_weights=False)
        x = x + a
        return x + self.mlp(self.ln_2(x))


class GPTExtractor(nn.Module):
    """PointGPT's ``GPT_extractor`` with its head: ``h, pos (B, T, C)`` → ``(logits, h (B, T + 1, C))``."""

    def __init__(self, dim: int, depth: int, heads: int, num_classes: int) -> None:
        super().__init__()
        self.sos = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.ModuleList([GPTBlock(dim, heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.cls_norm = nn.LayerNorm(dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(2 * dim, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes)
        )

    def forward(
        self, h: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = h.shape[0]
        h, pos = h.transpose(0, 1), pos.transpose(0, 1)  # (T, B, C)
        h = torch.cat([self.sos.expand(-1, b, -1), h], dim=0)  # (T + 1, B, C)
        pos = torch.cat([torch.zeros_like(pos[:1]), pos], dim=0)
        for layer in self.layers:
            h = layer(h + pos, attn_mask)
        h = self.ln_f(h).transpose(0, 1)  # (B, T + 1, C)
        f = self.cls_norm(h)
        logits = self.cls_head_finetune(torch.cat([f[:, 1], f[:, 2:].max(1)[0]], dim=-1))
        return logits, h


class GPTGenerator(nn.Module):
    """PointGPT's ``GPT_generator`` (a shorter stack): ``h, pos (L, B, C)`` → ``(L, B, C)``."""

    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([GPTBlock(dim, heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)

    def forward(
        self, h: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h + pos, attn_mask)
        return self.ln_f(h)


class PointGPTLike(nn.Module):
    """Mimics PointGPT's fine-tune model (sos + cls before patches); ``(B, N, 3)`` → ``(logits, aux_loss ())``."""

    def __init__(
        self,
        dim: int = 32,
        depth: int = 3,
        heads: int = 4,
        num_group: int = 16,
        group_size: int = 8,
        num_classes: int = 10,
        generator_depth: int = 1,
    ) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size
        self.encoder = PatchEncoder(dim)
        self.cls_token = _token(dim)
        self.cls_pos = _token(dim)
        self.pos_embed = _pos_mlp(dim)
        self.blocks = GPTExtractor(dim, depth, heads, num_classes)
        self.generator_blocks = GPTGenerator(dim, generator_depth, heads)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighborhood, centers = group(points, self.num_group, self.group_size)
        tokens = self.encoder(neighborhood)  # (B, G, C)
        b, g, _ = tokens.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)  # (B, 1 + G, C)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)
        length = g + 2
        attn_mask = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=1)
        logits, h = self.blocks(x, pos, attn_mask)  # h: (B, 2 + G, C)
        gen_pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1).transpose(0, 1)
        generated = self.generator_blocks(h.transpose(0, 1), gen_pos, attn_mask)
        return logits, generated.pow(2).mean()


# ---------------------------------------------------------------------------------------------------------
# 3. openpoints PointViT
# ---------------------------------------------------------------------------------------------------------


class PointPatchEmbed(nn.Module):
    """openpoints-style patch embedding: ``p (B, N, 3), x (B, 3, N)`` → ``([p, centers], [x, (B, E, G)])``."""

    def __init__(self, num_group: int, group_size: int, embed_chs: int) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size
        self.encoder = PatchEncoder(embed_chs)

    def forward(self, p: torch.Tensor, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        neighborhood, centers = group(p, self.num_group, self.group_size)
        features = self.encoder(neighborhood).transpose(1, 2).contiguous()  # (B, E, G)
        return [p, centers], [x, features]


class ViTMlp(nn.Module):
    """timm feed-forward ``fc1 → act → drop1 → fc2 → drop2``: ``(B, L, C)`` → ``(B, L, C)``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ViTBlock(nn.Module):
    """timm-style pre-norm block used by openpoints' PointViT: ``(B, L, C)`` → ``(B, L, C)``."""

    def __init__(self, dim: int, heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PointViTLike(nn.Module):
    """Mimics openpoints' ``PointViT`` (1 cls token); ``(B, N, 3)`` → ``(p_list, x_list, x (B, 1 + G, C))``."""

    def __init__(
        self,
        dim: int = 32,
        depth: int = 3,
        heads: int = 4,
        num_group: int = 16,
        group_size: int = 8,
        embed_chs: int = 24,
        drop_path_rate: float = 0.0,
        add_pos_each_block: bool = True,
    ) -> None:
        super().__init__()
        self.patch_embed = PointPatchEmbed(num_group, group_size, embed_chs)
        self.proj = nn.Linear(embed_chs, dim)
        self.cls_token = _token(dim)
        self.cls_pos = _token(dim)
        self.pos_embed = _pos_mlp(dim)
        self.n_tokens = 1
        self.add_pos_each_block = add_pos_each_block
        self.blocks = nn.ModuleList([ViTBlock(dim, heads, dp) for dp in _drop_rates(drop_path_rate, depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(
        self, p: torch.Tensor | dict[str, torch.Tensor], x: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        if isinstance(p, dict):
            p, x = p["pos"], p.get("x")
        if x is None:
            x = p.transpose(1, 2).contiguous()
        p_list, x_list = self.patch_embed(p, x)
        center_p, x = p_list[-1], self.proj(x_list[-1].transpose(1, 2))  # (B, G, C)
        b = x.shape[0]
        pos_embed = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center_p)], dim=1)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        if self.add_pos_each_block:
            for block in self.blocks:
                x = block(x + pos_embed)
        else:
            x = x + pos_embed
            for block in self.blocks:
                x = block(x)
        x = self.norm(x)
        return p_list, x_list, x

    def forward_cls_feat(
        self, p: torch.Tensor | dict[str, torch.Tensor], x: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``cat(cls token, max over patch tokens)``: ``(B, 2C)``."""
        _, _, x = self.forward(p, x)
        return torch.cat([x[:, 0], x[:, 1:].max(1)[0]], dim=-1)


# ---------------------------------------------------------------------------------------------------------
# 4. A user model on torch.nn.TransformerEncoder
# ---------------------------------------------------------------------------------------------------------


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


def standin_models() -> dict[str, Callable[[], nn.Module]]:
    """Zero-argument constructors of every stand-in at its default small size."""
    return {
        "recon": ReConLike,
        "pointgpt": PointGPTLike,
        "pointvit": PointViTLike,
        "torch_encoder_batch_first": partial(TorchEncoderModel, batch_first=True, norm_first=True),
        "torch_encoder_seq_first": partial(
            TorchEncoderModel, batch_first=False, norm_first=False, final_norm=False
        ),
    }
