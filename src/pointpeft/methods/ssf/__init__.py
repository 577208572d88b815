"""SSF (Lian et al., NeurIPS 2022): a per-channel scale and shift after the frozen operations, and a head.

On a wrapped backbone SSF uses the scale-and-shift sites of DAPT (after the patch encoder, after each
block's frozen operations, and after the final norm) with the same transform, ``x * γ + β``, initialised
``γ ~ N(1, std²)``, ``β ~ N(0, std²)``; no adapter and no prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.config import (
    CheckedConfig,
    check_pool_without_prompts,
    dapt_field_check,
)


@dataclass
class SSFConfig(CheckedConfig):
    """Settings of SSF: scale-and-shift transforms at every frozen operation, and a pooled head.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes: number of output classes K of the head, an int in [1, 2**20].
        pool: the features the head concatenates, a non-empty subset of ``("cls", "patch")``.
        head_dropout: dropout of the head's two hidden layers, in [0, 1).
        head_hidden: width of the head's two hidden layers, an int in [1, 2**20].
        tfts_init_std: std of the init, γ ~ N(1, std²), β ~ N(0, std²), in [0, 1].
        train_cls: train the backbone's CLS token and CLS position (per-adapter copies), as DAPT does.
        update_bn_stats: let the frozen backbone's BatchNorm running statistics update in train mode.
    """

    num_classes: int = field(metadata={"help": "Number of output classes of the head."})
    pool: tuple[str, ...] = field(default=("cls", "patch"), metadata={"help": "Head features."})
    head_dropout: float = field(default=0.5, metadata={"help": "Dropout of the head's hidden layers."})
    head_hidden: int = field(default=256, metadata={"help": "Width of the head's hidden layers."})
    tfts_init_std: float = field(default=0.02, metadata={"help": "Std of the scale-and-shift init."})
    train_cls: bool = field(default=True, metadata={"help": "Train the CLS token and its position."})
    update_bn_stats: bool = field(
        default=True, metadata={"help": "Update frozen BatchNorm running statistics in train mode."}
    )

    PEFT_TYPE: ClassVar[str] = "SSF"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        "num_classes": dapt_field_check("num_classes"),
        "pool": lambda name, value: check_pool_without_prompts(value, name),
        "head_dropout": dapt_field_check("head_dropout"),
        "head_hidden": dapt_field_check("head_hidden"),
        "tfts_init_std": dapt_field_check("tfts_init_std"),
        "train_cls": dapt_field_check("tfts"),
        "update_bn_stats": dapt_field_check("update_bn_stats"),
    }
