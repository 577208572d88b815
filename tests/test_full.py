"""Full fine-tuning baseline: same backbone and head, everything trains."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.upstream.pointgpt_official import tiny_pointgpt
from torch import nn

import pointpeft
from conftest import SMALL
from pointpeft.backbones import PointMAE


def test_reference_full_finetuning_count():
    model = pointpeft.full_finetune(PointMAE(), num_classes=15)
    # The full fine-tuning count of the DAPT reference setting.
    assert pointpeft.count_parameters(model) == (22_093_327, 22_093_327)


def test_everything_trains_and_reads_the_backbone_tokens(points):
    torch.manual_seed(0)
    backbone = PointMAE(**SMALL)
    model = pointpeft.full_finetune(backbone, num_classes=4, pool=("cls", "patch")).eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(points), backbone(points))
    model.train()
    nn.functional.cross_entropy(model(points), torch.tensor([0, 1, 2, 3])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad and parameter.grad is not None, name


def test_sequence_first_backbone_and_cls_position(points):
    """PointGPT (the upstream double): sequence-first blocks, [sos, cls, patches], tokens read at blocks.ln_f."""
    backbone = tiny_pointgpt()
    groups, width = backbone.num_group, backbone.trans_dim
    model = pointpeft.full_finetune(backbone, num_classes=3, pool=("cls",)).eval()
    tokens = model.forward_features(points)
    assert tokens.shape == (4, 2 + groups, width) and model.head.cls_index == 1
    assert model(points).shape == (4, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="must not contain 'prompt'"):
        pointpeft.full_finetune(PointMAE(**SMALL), 3, pool=("cls", "prompt"))
    with pytest.raises(TypeError, match="backbone must be a torch.nn.Module"):
        pointpeft.full_finetune("model", 3)
    with pytest.raises(ValueError, match="num_classes"):
        pointpeft.full_finetune(PointMAE(**SMALL), 0)


def test_a_final_norm_without_normalized_shape_is_named():
    """The head's width is read from the final norm's ``normalized_shape``: a layout whose final norm has
    none gets a ValueError naming that module, not an AttributeError."""
    backbone = PointMAE(**SMALL)
    layout = dataclasses.replace(pointpeft.detect_layout(backbone), final_norm="pos_embed")
    with pytest.raises(ValueError, match=r"'pos_embed' \(Sequential\) has none"):
        pointpeft.full_finetune(backbone, 3, layout=layout)
