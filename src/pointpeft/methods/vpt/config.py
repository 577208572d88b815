"""VPTConfig: the settings of VPT (deep or shallow) on a point-cloud transformer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.config import HeadedConfig, dapt_field_check


@dataclass
class VPTConfig(HeadedConfig):
    """Settings of VPT with a pooled head on the CLS token and the patches.

    VPT-Deep (``deep=True``, the default): ``num_prompts`` learnable tokens, each with a learnable position,
    join every block's input and are dropped from its output (the point-cloud VPT baseline released in the
    IDPT code). VPT-Shallow (``deep=False``): ``num_prompts`` learnable tokens join once, after the CLS token
    at the first block's input, and go through every block. As in the original VPT code they join after the
    positions are added and carry none: on a backbone that re-adds positions before every block, the patch
    tokens get theirs again and the prompts still get none. No point-cloud VPT-Shallow code is released, so
    this choice is ours. The prompts start truncated-normal with std 0.02, as VPT-Deep's point-cloud code.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``; the prompts are
            never pooled).
        num_prompts: n, the prompts of each block (deep) or of the sequence (shallow), an int in [1, 2**20]
            (the point-cloud baseline: 10).
        deep: VPT-Deep (True) or VPT-Shallow (False), a bool.
    """

    num_prompts: int = field(default=10, metadata={"help": "Prompt tokens of each block."})
    deep: bool = field(default=True, metadata={"help": "VPT-Deep (fresh prompts per block) or VPT-Shallow."})

    PEFT_TYPE: ClassVar[str] = "VPT"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        **HeadedConfig.HEAD_CHECKS,
        "num_prompts": dapt_field_check("rank"),
        "deep": dapt_field_check("update_bn_stats"),
    }
