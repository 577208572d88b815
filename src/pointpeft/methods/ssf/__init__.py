"""SSF (Lian et al., NeurIPS 2022): a per-channel scale and shift after the frozen operations, and a head.

On a wrapped backbone SSF uses the scale-and-shift sites of DAPT (after the patch encoder, after each
block's frozen operations, and after the final norm) with the same transform, ``x * γ + β``, initialised
``γ ~ N(1, std²)``, ``β ~ N(0, std²)``; no adapter and no prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.config import HeadedConfig, dapt_field_check


@dataclass
class SSFConfig(HeadedConfig):
    """Settings of SSF: scale-and-shift transforms at every frozen operation, and a pooled head.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``).
        tfts_init_std: std of the init, γ ~ N(1, std²), β ~ N(0, std²), in [0, 1].
    """

    tfts_init_std: float = field(default=0.02, metadata={"help": "Std of the scale-and-shift init."})

    PEFT_TYPE: ClassVar[str] = "SSF"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        **HeadedConfig.HEAD_CHECKS,
        "tfts_init_std": dapt_field_check("tfts_init_std"),
    }
