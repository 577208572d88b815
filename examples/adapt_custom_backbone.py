"""Adapt a point transformer that pointpeft has never seen: the walker finds its blocks by structure.

Run: python examples/adapt_custom_backbone.py
"""

import torch
from torch import nn

import pointpeft


class Block(nn.Module):
    """A pre-norm block with the usual timm names (ln_1/attn.qkv/attn.proj/ln_2/mlp.fc1/mlp.fc2)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, 4 * dim)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (
            self.attn.qkv(self.ln_1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        )
        attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.attn.proj(attended)
        return x + self.mlp(self.ln_2(x))


class PatchEmbed(nn.Module):
    """A shared point-MLP, max-pooled over each group: (B, G, K, 3) -> (B, G, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        return self.mlp(groups).max(dim=2)[0]


class TinyPointTransformer(nn.Module):
    """Groups points with pointpeft.ops, embeds each group with a shared MLP, runs four blocks."""

    def __init__(self, dim: int = 96, depth: int = 4, num_group: int = 32, group_size: int = 16) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size
        self.patch_embed = PatchEmbed(dim)
        self.pos = nn.Linear(3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.ModuleList(Block(dim, heads=4) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        neighborhood, centers = pointpeft.ops.group(points, self.num_group, self.group_size)
        tokens = self.patch_embed(neighborhood) + self.pos(centers)  # (B, G, C)
        x = torch.cat([self.cls_token.expand(len(points), -1, -1), tokens], dim=1)
        for layer in self.layers:
            x = layer(x)
        return self.ln_f(x)


backbone = TinyPointTransformer()
print(pointpeft.detect_layout(backbone))
model = pointpeft.wrap_with_dapt(backbone, pointpeft.DAPTConfig(num_classes=10, rank=16))
pointpeft.print_trainable_parameters(model)
tokens, prompts = model.eval().forward_features(torch.rand(2, 512, 3))
print(
    f"tokens {tuple(tokens.shape)}, prompts {tuple(prompts.shape)}, logits {tuple(model(torch.rand(2, 512, 3)).shape)}"
)
