"""Backbone factories for tests/test_any_backbone.py: what ``model.factory`` names
(``tests.any_backbone_factories:official_point_mae``), and factories that go wrong."""

from __future__ import annotations

from types import SimpleNamespace

from tests.upstream.point_mae_official import PointTransformer
from torch import nn

NOT_CALLABLE = 5


def official_point_mae(
    trans_dim: int = 48,
    depth: int = 2,
    num_heads: int = 2,
    num_group: int = 16,
    group_size: int = 8,
    encoder_dims: int = 48,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """The test double of the official Point-MAE fine-tuning model (its own head is left unused by DAPT)."""
    return PointTransformer(
        SimpleNamespace(
            trans_dim=trans_dim,
            depth=depth,
            num_heads=num_heads,
            num_group=num_group,
            group_size=group_size,
            encoder_dims=encoder_dims,
            drop_path_rate=drop_path_rate,
            cls_dim=4,
        )
    )


def not_a_module(**kwargs: object) -> int:
    """A factory that returns no module."""
    return 3
