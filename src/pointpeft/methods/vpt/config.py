"""VPTConfig: the settings of VPT-Deep on a point-cloud transformer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.config import HeadedConfig, dapt_field_check


@dataclass
class VPTConfig(HeadedConfig):
    """Settings of VPT-Deep: ``num_prompts`` learnable tokens (each with a learnable position) join every
    block's input and are dropped from its output; a pooled head on the CLS token and the patches.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``; the prompts are
            never pooled).
        num_prompts: n, the prompts of each block, an int in [1, 2**20] (the point-cloud baseline: 10).
    """

    num_prompts: int = field(default=10, metadata={"help": "Prompt tokens of each block."})

    PEFT_TYPE: ClassVar[str] = "VPT"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        **HeadedConfig.HEAD_CHECKS,
        "num_prompts": dapt_field_check("rank"),
    }
