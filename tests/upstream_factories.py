"""``model.factory`` targets for tests/test_cli_upstream_backbones.py: each upstream test double (and the
timm-style ViT and a model on ``nn.TransformerEncoder``) at a small size, built as a user's factory would."""

from __future__ import annotations

from tests.standins import TorchEncoderModel
from tests.test_timm_like import PointViT
from tests.upstream import (
    act_official,
    openpoints_official,
    point_bert_official,
    pointgpt_official,
    recon_official,
)
from torch import nn


def act() -> nn.Module:
    """ACT's fine-tuning model (Point-MAE's, with ``embed_dim`` and ``reduce_dim``)."""
    return act_official.tiny_act()


def point_bert() -> nn.Module:
    """Point-BERT's fine-tuning model (its 256→384 ``reduce_dim``, at a small width)."""
    return point_bert_official.tiny_point_bert()


def recon() -> nn.Module:
    """ReCon's fine-tuning model: both streams, 3 global tokens."""
    return recon_official.tiny_recon()


def pointgpt() -> nn.Module:
    """PointGPT's fine-tuning model: an unused top-level norm, ``blocks.ln_f``, a ``(logits, loss)`` output."""
    return pointgpt_official.tiny_pointgpt()


def openpoints() -> nn.Module:
    """openpoints' ``BaseCls`` around a PointViT (its grouping allocates CUDA buffers, as upstream)."""
    return openpoints_official.tiny_openpoints()


def timm_vit(dim: int = 48) -> nn.Module:
    """A point ViT in timm's ``VisionTransformer`` layout (LayerScale, ``num_prefix_tokens``-free)."""
    return PointViT(dim=dim, depth=2, groups=16)


def torch_encoder(batch_first: bool = True) -> nn.Module:
    """A user model on ``nn.TransformerEncoder``."""
    return TorchEncoderModel(dim=32, depth=2, heads=4, batch_first=batch_first)
