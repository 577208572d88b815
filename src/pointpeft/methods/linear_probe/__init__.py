"""Linear probing: the frozen backbone and a trained pooled head (with the CLS token, by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pointpeft.config import HeadedConfig


@dataclass
class LinearProbeConfig(HeadedConfig):
    """Settings of linear probing: the pooled head trains, and (``train_cls``, as the point-cloud baselines
    count it) the backbone's CLS token and CLS position; the rest of the backbone stays frozen.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``).
    """

    PEFT_TYPE: ClassVar[str] = "LINEAR_PROBE"
