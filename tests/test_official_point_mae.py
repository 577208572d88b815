"""DAPT on a test double of the official Point-MAE fine-tuning model file, as users wrap it.

The double is written by us from the upstream file's structure (its class and module names, and a
``TransformerEncoder`` whose forward re-adds the positional embedding before every block:
``x = block(x + pos)``; pre-norm blocks with timm's ``DropPath``; explicit softmax attention; the model's own
``cls_head_finetune``), not copied. The grouping uses pointpeft's ops (the upstream CUDA ops are not here).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import pointpeft
from conftest import randomize_dapt
from test_fused import _assert_same_step, _Counting, _step, cuda_live_bytes


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = (
            keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        ).floor_()
        return x.div(keep) * mask


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.drop = (
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv, self.attn_drop = nn.Linear(dim, dim * 3, bias=False), nn.Dropout(0.0)
        self.proj, self.proj_drop = nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.attn = Attention(dim, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads, rates[i]) for i in range(depth)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return x


class Encoder(nn.Module):
    def __init__(self, channel: int) -> None:
        super().__init__()
        self.encoder_channel = channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, channel, 1)
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, g, n, _ = groups.shape
        feature = self.first_conv(groups.reshape(b * g, n, 3).transpose(2, 1))
        glob = torch.max(feature, dim=2, keepdim=True)[0]
        feature = self.second_conv(torch.cat([glob.expand(-1, -1, n), feature], dim=1))
        return torch.max(feature, dim=2, keepdim=False)[0].reshape(b, g, self.encoder_channel)


class Group(nn.Module):
    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighborhood, center = pointpeft.ops.group(xyz, self.num_group, self.group_size)
        return neighborhood, center


class PointTransformer(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        dim = config.trans_dim
        self.group_divider = Group(config.num_group, config.group_size)
        self.encoder = Encoder(config.encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        rates = [x.item() for x in torch.linspace(0, config.drop_path_rate, config.depth)]
        self.blocks = TransformerEncoder(dim, config.depth, config.num_heads, rates)
        self.norm = nn.LayerNorm(dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(dim * 2, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, config.cls_dim),
        )  # fmt: skip

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        neighborhood, center = self.group_divider(pts)
        tokens = self.encoder(neighborhood)
        batch = tokens.shape[0]
        x = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(batch, -1, -1), self.pos_embed(center)), dim=1)
        x = self.norm(self.blocks(x, pos))
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(1)[0]], dim=-1))


def _official(**overrides: float) -> PointTransformer:
    values = dict(trans_dim=64, depth=3, drop_path_rate=0.0, cls_dim=5, num_heads=4, group_size=16,
                  num_group=32, encoder_dims=64)  # fmt: skip
    values.update(overrides)
    torch.manual_seed(0)
    return PointTransformer(SimpleNamespace(**values))


@pytest.mark.parametrize("layout", [None, "point_mae"])
def test_every_block_of_the_official_file_runs_the_fast_path(layout, monkeypatch):
    model = pointpeft.wrap_with_dapt(
        _official(), pointpeft.DAPTConfig(num_classes=5, rank=16, adapter_dropout=0.0), layout=layout
    ).train()
    report = model.execution_report()
    assert [r.block for r in report] == [f"blocks.blocks.{i}" for i in range(3)]
    assert all(r.execution == "fused" and r.reason == "" for r in report)
    counting = _Counting(monkeypatch)
    model(torch.rand(4, 256, 3))
    assert counting.blocks == 3


@pytest.mark.parametrize("train", [False, True])
def test_fused_equals_plain_on_the_official_file(train):
    model = pointpeft.wrap_with_dapt(
        _official().double(),
        pointpeft.DAPTConfig(num_classes=5, rank=16, adapter_dropout=0.0),
        execution="plain",
    )
    randomize_dapt(model, 0)
    model.train(train)
    points = (torch.rand(4, 256, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
    plain = _step(model, points, seed=0)
    fused = copy.deepcopy(model)
    fused.execution = "fused"
    _assert_same_step(_step(fused, points, seed=0), plain, 1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (memory is measured there)")
def test_the_official_file_keeps_under_45_percent_for_backward():
    config = pointpeft.DAPTConfig(num_classes=5, rank=16, adapter_dropout=0.5)
    model = pointpeft.wrap_with_dapt(_official(drop_path_rate=0.1), config).cuda().train()
    points = torch.rand(16, 256, 3, device="cuda")
    saved = {}
    for execution in ("plain", "fused"):
        model.execution = execution
        cuda_live_bytes(model, points)
        saved[execution] = cuda_live_bytes(model, points)
    assert saved["fused"] <= 0.45 * saved["plain"], saved
