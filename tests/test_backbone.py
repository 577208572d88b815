from __future__ import annotations

import pytest
import torch

from conftest import SMALL
from pointpeft.backbones import PointMAE
from pointpeft.backbones.point_mae import DropPath


def test_official_parameter_names():
    names = set(PointMAE(**SMALL).state_dict())
    for key in (
        "encoder.first_conv.0.weight",
        "encoder.first_conv.1.running_mean",
        "encoder.second_conv.3.bias",
        "pos_embed.0.weight",
        "pos_embed.2.bias",
        "blocks.blocks.2.norm1.weight",
        "blocks.blocks.2.attn.qkv.weight",
        "blocks.blocks.2.attn.proj.bias",
        "blocks.blocks.2.mlp.fc1.weight",
        "blocks.blocks.2.mlp.fc2.bias",
        "blocks.blocks.2.norm2.bias",
        "norm.weight",
        "cls_token",
        "cls_pos",
    ):
        assert key in names
    assert "blocks.blocks.0.attn.qkv.bias" not in names


def test_point_mae_parameter_total():
    # Encoder part of the reference (patch encoder + pos MLP + 12 blocks + final norm) + cls token/pos.
    assert sum(p.numel() for p in PointMAE().parameters()) == 21_825_024 + 768


def test_pos_modes_differ_and_are_validated(points):
    torch.manual_seed(0)
    a = PointMAE(**SMALL, pos_mode="once").eval()
    b = PointMAE(**SMALL, pos_mode="every_block").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert a(points).shape == (4, 1 + SMALL["num_group"], SMALL["trans_dim"])
        assert not torch.allclose(a(points), b(points))
    with pytest.raises(ValueError, match="pos_mode must be one of"):
        PointMAE(pos_mode="sometimes")


def test_forward_input_errors_name_points():
    model = PointMAE(**SMALL)
    with pytest.raises(ValueError, match=r"points must have shape \(B, N, 3\), got \(2, 50, 4\)"):
        model(torch.zeros(2, 50, 4))
    with pytest.raises(ValueError, match="at least max\\(num_group, group_size\\) = 16 points"):
        model(torch.zeros(2, 10, 3))
    with pytest.raises(TypeError, match="points must have a floating-point dtype"):
        model(torch.zeros(2, 50, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="points must be a torch.Tensor"):
        model([[0.0, 0.0, 0.0]])


def test_point_bert_widths_add_reduce_dim():
    """Point-BERT: a 256-d patch encoder, then reduce_dim to the token width."""
    model = PointMAE(trans_dim=32, encoder_dims=24, depth=1, num_heads=4, num_group=8, group_size=4)
    assert model.reduce_dim.in_features == 24 and model.reduce_dim.out_features == 32
    assert "reduce_dim" not in dict(PointMAE(**SMALL).named_children())
    assert model(torch.rand(2, 32, 3)).shape == (2, 9, 32)


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        PointMAE(trans_dim=30, encoder_dims=30, num_heads=4)
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        PointMAE(depth=0)


def test_drop_path_semantics():
    layer = DropPath(0.5).train()
    torch.manual_seed(0)
    out = layer(torch.ones(1000, 3, 2))
    per_sample = out[:, 0, 0]
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and rescaled by 1/keep
    assert torch.all(out == per_sample[:, None, None])  # one decision per sample
    assert 0.4 < (per_sample == 0).float().mean() < 0.6
    assert torch.equal(layer.eval()(torch.ones(4, 3)), torch.ones(4, 3))
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)
