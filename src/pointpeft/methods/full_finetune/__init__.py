"""Full fine-tuning as a method of :func:`pointpeft.get_peft_model`: every backbone parameter trains.

Each adapter trains its own copy of the whole backbone (starting from the pre-trained values), so full
fine-tuning lives beside PEFT adapters on one backbone, and saves, loads and counts as they do. Its
function is :func:`pointpeft.full_finetune`'s (the reference's baseline) for the same head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pointpeft.config import HeadedConfig


def every_parameter(name: str) -> bool:
    """Full fine-tuning's rule: every backbone parameter trains, whatever its ``name``."""
    return True


@dataclass
class FullFinetuneConfig(HeadedConfig):
    """Settings of full fine-tuning: every backbone parameter trains (a per-adapter copy of the backbone),
    with a pooled head.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``). ``train_cls=False``
            keeps the CLS token and position frozen.
    """

    PEFT_TYPE: ClassVar[str] = "FULL_FINETUNE"
