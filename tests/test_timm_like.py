"""A stand-in with timm's ViT module structure (names and forward written by us): the walker adapts it."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

import pointpeft
from pointpeft import DAPTConfig, count_parameters, wrap_with_dapt
from pointpeft.dapt import TFTS, DynamicAdapter


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(4 * dim, dim), nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1, self.drop_path1 = (
            nn.LayerNorm(dim),
            Attention(dim, heads),
            LayerScale(dim),
            nn.Identity(),
        )
        self.norm2, self.mlp, self.ls2, self.drop_path2 = (
            nn.LayerNorm(dim),
            Mlp(dim),
            LayerScale(dim),
            nn.Identity(),
        )

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class PointViT(nn.Module):
    """timm VisionTransformer layout on point groups: patch_embed, cls_token, pos_embed (a Parameter),
    blocks (nn.Sequential), norm, fc_norm, head."""

    def __init__(self, dim: int = 48, depth: int = 3, groups: int = 16) -> None:
        super().__init__()
        self.groups = groups
        self.patch_embed = nn.Sequential()
        self.patch_embed.proj = nn.Linear(3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + groups, dim))
        self.blocks = nn.Sequential(*[Block(dim, 4) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc_norm = nn.Identity()
        self.head = nn.Linear(dim, 10)

    def forward(self, points):
        neighborhood, _ = pointpeft.ops.group(points, self.groups, 8)
        tokens = self.patch_embed(neighborhood).max(dim=2)[0]  # (B, G, C)
        x = torch.cat([self.cls_token.expand(len(points), -1, -1), tokens], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(self.fc_norm(x[:, 0]))


def test_timm_layout_is_found_and_adapted():
    torch.manual_seed(0)
    backbone = PointViT()
    layout = pointpeft.detect_layout(backbone)
    assert layout.blocks == ("blocks.0", "blocks.1", "blocks.2")
    assert (layout.block.qkv, layout.block.proj, layout.block.fc1, layout.block.fc2) == (
        "attn.qkv",
        "attn.proj",
        "mlp.fc1",
        "mlp.fc2",
    )
    assert (layout.patch_encoder, layout.final_norm, layout.trainable_tokens) == (
        "patch_embed",
        "norm",
        ("cls_token",),
    )
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=4, rank=8))
    c, r, depth = 48, 8, 3
    adapter = 2 * c + (c + 1) + (c * r + r) + (r * c + c)
    tfts = 2 * (depth * (c + 3 * c + c + c + 4 * c + c + c) + 2 * c)
    head = (3 * c * 256 + 256) + 2 * 256 + (256 * 256 + 256) + 2 * 256 + (256 * 4 + 4)
    assert (
        count_parameters(model)[0] == depth * adapter + tfts + c + head
    )  # + cls_token (pos_embed stays frozen)
    points = torch.rand(4, 64, 3)
    tokens, prompts = model.eval().forward_features(points)
    assert tokens.shape == (4, 17, c) and prompts.shape == (4, depth, c)
    loss = F.cross_entropy(model.train()(points), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert backbone.pos_embed.grad is None and backbone.head.weight.grad is None  # frozen, not trained


def test_timm_adapter_is_added_after_layer_scale_so_it_is_not_muted():
    """timm's LayerScale ls2 (init 1e-5) multiplies the FFN output; the adapter's output is added after it,
    so it reaches the residual stream at full size."""
    torch.manual_seed(0)
    backbone = PointViT()
    layout = pointpeft.detect_layout(backbone)
    assert layout.block.mlp == "mlp" and layout.block.adapter_out == "ls2"
    assert layout == dataclasses.replace(pointpeft.preset_layout("timm_vit", backbone), preset=None)
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=4, rank=8, prompts=False, pool=("cls",))).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TFTS):
                module.gamma.fill_(1.0)
                module.beta.zero_()
            elif isinstance(module, DynamicAdapter):
                module.up.weight.normal_()
    block = model.base_model.blocks[0]
    inner = block.base_layer
    x = torch.randn(2, 17, 48)
    with torch.no_grad():
        adapted = block(x)
        with model.disable_adapter():
            bare = block(x)
        ffn_input = inner.norm2(x + inner.ls1(inner.attn(inner.norm1(x))))
        expected = inner.ls2.adapter["default"](ffn_input)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(adapted - bare, expected, rtol=1e-4, atol=1e-5)
