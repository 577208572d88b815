"""A functional twin of the DAPT reference computation, written from the spec's equations.

It reads a state dict with the reference implementation's key names directly, so it shares no module
code with pointpeft: the only shared piece is the FPS/KNN grouping, which has its own tests.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pointpeft.ops import group


def reference_state_dict(
    *,
    dim: int = 32,
    depth: int = 2,
    rank: int = 8,
    num_classes: int = 5,
    head_parts: int = 3,
    head_hidden: int = 256,
    mlp_ratio: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random tensors under every key of a ``PointTransformer_DAPT`` state dict (spec §2, §7).

    Every DAPT tensor is random, including the up-projections and TFTS, so that each component changes the
    logits.
    """
    gen = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        fan_in = shape[1] * (shape[2] if len(shape) > 2 else 1)
        return torch.randn(*shape, generator=gen) / fan_in**0.5

    def near_one(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=gen)

    def small(n: int) -> torch.Tensor:
        return 0.1 * torch.randn(n, generator=gen)

    def batch_norm(prefix: str, n: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": near_one(n),
            f"{prefix}.bias": small(n),
            f"{prefix}.running_mean": small(n),
            f"{prefix}.running_var": 0.5 + torch.rand(n, generator=gen),
            f"{prefix}.num_batches_tracked": torch.tensor(7),
        }

    hidden = mlp_ratio * dim
    sd: dict[str, torch.Tensor] = {
        "cls_token": 0.02 * torch.randn(1, 1, dim, generator=gen),
        "cls_pos": 0.02 * torch.randn(1, 1, dim, generator=gen),
        "encoder.first_conv.0.weight": w(128, 3, 1),
        "encoder.first_conv.0.bias": small(128),
        **batch_norm("encoder.first_conv.1", 128),
        "encoder.first_conv.3.weight": w(256, 128, 1),
        "encoder.first_conv.3.bias": small(256),
        "encoder.second_conv.0.weight": w(512, 512, 1),
        "encoder.second_conv.0.bias": small(512),
        **batch_norm("encoder.second_conv.1", 512),
        "encoder.second_conv.3.weight": w(dim, 512, 1),
        "encoder.second_conv.3.bias": small(dim),
        "pos_embed.0.weight": w(128, 3),
        "pos_embed.0.bias": small(128),
        "pos_embed.2.weight": w(dim, 128),
        "pos_embed.2.bias": small(dim),
        "norm.weight": near_one(dim),
        "norm.bias": small(dim),
        "tfts_gamma_1": near_one(dim),
        "tfts_beta_1": small(dim),
        "tfts_gamma_2": near_one(dim),
        "tfts_beta_2": small(dim),
        "cls_head_finetune.0.weight": w(head_hidden, head_parts * dim),
        "cls_head_finetune.0.bias": small(head_hidden),
        **batch_norm("cls_head_finetune.1", head_hidden),
        "cls_head_finetune.4.weight": w(head_hidden, head_hidden),
        "cls_head_finetune.4.bias": small(head_hidden),
        **batch_norm("cls_head_finetune.5", head_hidden),
        "cls_head_finetune.8.weight": w(num_classes, head_hidden),
        "cls_head_finetune.8.bias": small(num_classes),
    }
    for i in range(depth):
        b = f"blocks.blocks.{i}"
        sd.update(
            {
                f"{b}.norm1.weight": near_one(dim),
                f"{b}.norm1.bias": small(dim),
                f"{b}.attn.qkv.weight": w(3 * dim, dim),
                f"{b}.attn.proj.weight": w(dim, dim),
                f"{b}.attn.proj.bias": small(dim),
                f"{b}.norm2.weight": near_one(dim),
                f"{b}.norm2.bias": small(dim),
                f"{b}.mlp.fc1.weight": w(hidden, dim),
                f"{b}.mlp.fc1.bias": small(hidden),
                f"{b}.mlp.fc2.weight": w(dim, hidden),
                f"{b}.mlp.fc2.bias": small(dim),
                f"{b}.attn.tfts_gamma_1": near_one(3 * dim),
                f"{b}.attn.tfts_beta_1": small(3 * dim),
                f"{b}.attn.tfts_gamma_2": near_one(dim),
                f"{b}.attn.tfts_beta_2": small(dim),
                f"{b}.mlp.tfts_gamma_1": near_one(hidden),
                f"{b}.mlp.tfts_beta_1": small(hidden),
                f"{b}.mlp.tfts_gamma_2": near_one(dim),
                f"{b}.mlp.tfts_beta_2": small(dim),
                f"{b}.Adapter_MLP.adapter_layer_norm_before.weight": near_one(dim),
                f"{b}.Adapter_MLP.adapter_layer_norm_before.bias": small(dim),
                f"{b}.Adapter_MLP.scale.weight": w(1, dim),
                f"{b}.Adapter_MLP.scale.bias": 0.5 + small(1),
                f"{b}.Adapter_MLP.down_proj.weight": w(rank, dim),
                f"{b}.Adapter_MLP.down_proj.bias": small(rank),
                f"{b}.Adapter_MLP.up_proj.weight": w(dim, rank),
                f"{b}.Adapter_MLP.up_proj.bias": small(dim),
            }
        )
        for j in (1, 2, 3):
            sd[f"{b}.tfts_gamma_{j}"] = near_one(dim)
            sd[f"{b}.tfts_beta_{j}"] = small(dim)
    return sd


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        training=False,
        eps=1e-5,
    )


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5)


def _lin(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.linear(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"))


def _tfts(x: torch.Tensor, sd: dict[str, torch.Tensor], gamma: str) -> torch.Tensor:
    return x * sd[gamma] + sd[gamma.replace("gamma", "beta")]


def reference_logits(
    sd: dict[str, torch.Tensor],
    points: torch.Tensor,
    *,
    num_heads: int,
    num_group: int,
    group_size: int,
    pool: tuple[str, ...] = ("cls", "prompt", "patch"),
    pos_every_block: bool = False,
) -> torch.Tensor:
    """Eval-mode logits ``(B, K)`` of the reference DAPT for ``points (B, N, 3)``.

    With ``pos_every_block`` the positional embedding is re-added to the CLS and patch tokens (never to the
    prompts) before every block, which is DAPT on a Point-MAE backbone that keeps its own behaviour.
    """
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("blocks.blocks."))
    neighborhood, center = group(points, num_group, group_size)
    b, g, k, _ = neighborhood.shape
    x = neighborhood.reshape(b * g, k, 3).transpose(2, 1)
    f = F.conv1d(x, sd["encoder.first_conv.0.weight"], sd["encoder.first_conv.0.bias"])
    f = F.relu(_bn(f, sd, "encoder.first_conv.1"))
    f = F.conv1d(f, sd["encoder.first_conv.3.weight"], sd["encoder.first_conv.3.bias"])
    f = torch.cat([f.max(dim=2, keepdim=True)[0].expand(-1, -1, k), f], dim=1)
    f = F.conv1d(f, sd["encoder.second_conv.0.weight"], sd["encoder.second_conv.0.bias"])
    f = F.relu(_bn(f, sd, "encoder.second_conv.1"))
    f = F.conv1d(f, sd["encoder.second_conv.3.weight"], sd["encoder.second_conv.3.bias"])
    tokens = _tfts(f.max(dim=2)[0].reshape(b, g, -1), sd, "tfts_gamma_1")
    c = tokens.shape[-1]

    pos = _lin(F.gelu(_lin(center, sd, "pos_embed.0")), sd, "pos_embed.2")
    pos = torch.cat([sd["cls_pos"].expand(b, -1, -1), pos], dim=1)
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), tokens], dim=1)
    if not pos_every_block:
        x = x + pos
    heads, head_dim = num_heads, c // num_heads
    for i in range(depth):
        p = f"blocks.blocks.{i}"
        if pos_every_block:  # prompts sit at 1..i and get no positional embedding
            zeros = pos.new_zeros(b, i, c)
            x = x + torch.cat([pos[:, :1], zeros, pos[:, 1:]], dim=1)
        length = x.shape[1]
        z = _tfts(_ln(x, sd, f"{p}.norm1"), sd, f"{p}.tfts_gamma_1")
        qkv = _tfts(_lin(z, sd, f"{p}.attn.qkv"), sd, f"{p}.attn.tfts_gamma_1")
        q, kk, v = qkv.reshape(b, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q @ kk.transpose(-2, -1)) * head_dim**-0.5).softmax(dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(b, length, c)
        x = x + _tfts(_lin(o, sd, f"{p}.attn.proj"), sd, f"{p}.attn.tfts_gamma_2")

        u = _tfts(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.tfts_gamma_2")
        ua = _ln(u, sd, f"{p}.Adapter_MLP.adapter_layer_norm_before")
        scale = F.relu(_lin(ua, sd, f"{p}.Adapter_MLP.scale"))
        adapter = (
            _lin(F.gelu(_lin(ua, sd, f"{p}.Adapter_MLP.down_proj")), sd, f"{p}.Adapter_MLP.up_proj") * scale
        )
        ffn = F.gelu(_tfts(_lin(u, sd, f"{p}.mlp.fc1"), sd, f"{p}.mlp.tfts_gamma_1"))
        ffn = _tfts(_lin(ffn, sd, f"{p}.mlp.fc2"), sd, f"{p}.mlp.tfts_gamma_2")
        x = x + (ffn + adapter)
        prompt = _tfts(F.gelu(adapter).mean(dim=1, keepdim=True), sd, f"{p}.tfts_gamma_3")
        x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)

    y = _tfts(_ln(x, sd, "norm"), sd, "tfts_gamma_2")
    features = []
    if "cls" in pool:
        features.append(y[:, 0])
    if "prompt" in pool:
        features.append(y[:, 1:-num_group].mean(dim=1))
    if "patch" in pool:
        features.append(y[:, -num_group:].max(dim=1)[0])
    h = torch.cat(features, dim=-1)
    h = F.relu(_bn(_lin(h, sd, "cls_head_finetune.0"), sd, "cls_head_finetune.1"))
    h = F.relu(_bn(_lin(h, sd, "cls_head_finetune.4"), sd, "cls_head_finetune.5"))
    return _lin(h, sd, "cls_head_finetune.8")
