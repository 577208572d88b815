"""Point-MAE's segmentation model against its forward written out from the reference's steps (float64,
eval mode), its shapes, gradients, and bad input refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pointpeft.backbones import PointMAE
from pointpeft.segmentation import PointMAESegmentation

SIZES = dict(trans_dim=32, depth=4, num_heads=4, num_group=8, group_size=8, encoder_dims=32)


def _conv(layer, x):  # a 1x1 Conv1d on (B, C, N)
    return torch.einsum("oc,bcn->bon", layer.weight[:, :, 0], x) + (
        0 if layer.bias is None else layer.bias[:, None]
    )


def _bn(layer, x):  # BatchNorm1d in eval mode
    scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return (x - layer.running_mean[:, None]) * scale[:, None] + layer.bias[:, None]


def _written_out(model, points, category):
    b = model.backbone
    neighborhood, centers = b.group_divider(points)
    x, pos = b.encoder(neighborhood), b.pos_embed(centers)
    fetched = []
    for i, block in enumerate(b.blocks.blocks):
        x = block(x + pos)
        if i in model.fetch:
            fetched.append(b.norm(x).transpose(1, 2))
    feats = torch.cat(fetched, 1)  # (B, 3C, G)
    n = points.shape[1]
    one_hot = F.one_hot(category, model.num_categories).double()[:, :, None]
    conv, bn, _ = model.label_conv
    label = F.leaky_relu(_bn(bn, _conv(conv, one_hot)), 0.2).repeat(1, 1, n)
    glob = torch.cat(
        (feats.max(2).values[:, :, None].repeat(1, 1, n), feats.mean(2)[:, :, None].repeat(1, 1, n), label), 1
    )
    # PointNet++ feature propagation: squared distances sorted, the 3 nearest, 1/(d + 1e-8) normalised
    d = ((points[:, :, None, :] - centers[:, None, :, :]) ** 2).sum(-1)
    d, idx = d.sort(dim=-1)
    d, idx = d[:, :, :3], idx[:, :, :3]
    w = 1.0 / (d + 1e-8)
    w = w / w.sum(2, keepdim=True)
    f = feats.transpose(1, 2)
    carried = sum(
        torch.stack([f[bb, idx[bb, :, k]] for bb in range(len(f))]) * w[:, :, k : k + 1] for k in range(3)
    )
    y = torch.cat((points, carried), 2).transpose(1, 2)
    for layer in model.propagation.mlp:
        y = F.relu(_bn(layer[1], _conv(layer[0], y)))
    y = torch.cat((y, glob), 1)
    head = model.head
    y = F.relu(_bn(head[0][1], _conv(head[0][0], y)))
    y = F.relu(_bn(head[2][1], _conv(head[2][0], y)))
    return _conv(head[3], y).transpose(1, 2)


def test_the_model_computes_the_reference_forward_written_out():
    torch.manual_seed(0)
    model = PointMAESegmentation(PointMAE(**SIZES), num_parts=6, num_categories=3, fetch=(1, 2, 3)).double()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    points = torch.randn(2, 64, 3, dtype=torch.float64)
    category = torch.tensor([2, 0])
    with torch.no_grad():
        got = model(points, category)
        want = _written_out(model, points, category)
    assert got.shape == (2, 64, 6)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_training_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = PointMAESegmentation(PointMAE(**SIZES), num_parts=5, num_categories=2, fetch=(0, 3)).train()
    logits = model(torch.randn(3, 48, 3), torch.tensor([0, 1, 1]))
    F.cross_entropy(logits.reshape(-1, 5), torch.randint(0, 5, (3 * 48,))).backward()
    unused = {"backbone.cls_token", "backbone.cls_pos"}
    missing = [n for n, p in model.named_parameters() if p.grad is None and n not in unused]
    assert missing == []


def test_bad_input_is_refused_naming_it():
    model = PointMAESegmentation(PointMAE(**SIZES), num_parts=5, num_categories=2, fetch=(3,))
    points = torch.randn(2, 48, 3)
    with pytest.raises(TypeError, match=r"category must be an int64 or int32 tensor"):
        model(points, torch.zeros(2))
    with pytest.raises(ValueError, match=r"category must have shape \(2,\), got \(3,\)"):
        model(points, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"category must hold values in \[0, 2\)"):
        model(points, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"fetch must be"):
        PointMAESegmentation(PointMAE(**SIZES), fetch=(4,))
