"""VPTConfig: the settings of VPT-Deep on a point-cloud transformer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.config import CheckedConfig, check_pool_without_prompts, dapt_field_check


@dataclass
class VPTConfig(CheckedConfig):
    """Settings of VPT-Deep: ``num_prompts`` learnable tokens (each with a learnable position) join every
    block's input and are dropped from its output; a pooled head on the CLS token and the patches.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes: number of output classes K of the head, an int in [1, 2**20].
        num_prompts: n, the prompts of each block, an int in [1, 2**20] (the point-cloud baseline: 10).
        pool: the features the head concatenates, a non-empty subset of ``("cls", "patch")`` (the prompts
            are never pooled).
        head_dropout: dropout of the head's two hidden layers, in [0, 1).
        head_hidden: width of the head's two hidden layers, an int in [1, 2**20].
        train_cls: train the backbone's CLS token and CLS position (per-adapter copies).
        update_bn_stats: let the frozen backbone's BatchNorm running statistics update in train mode.
    """

    num_classes: int = field(metadata={"help": "Number of output classes of the head."})
    num_prompts: int = field(default=10, metadata={"help": "Prompt tokens of each block."})
    pool: tuple[str, ...] = field(default=("cls", "patch"), metadata={"help": "Head features."})
    head_dropout: float = field(default=0.5, metadata={"help": "Dropout of the head's hidden layers."})
    head_hidden: int = field(default=256, metadata={"help": "Width of the head's hidden layers."})
    train_cls: bool = field(default=True, metadata={"help": "Train the CLS token and its position."})
    update_bn_stats: bool = field(
        default=True, metadata={"help": "Update frozen BatchNorm running statistics in train mode."}
    )

    PEFT_TYPE: ClassVar[str] = "VPT"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        "num_classes": dapt_field_check("num_classes"),
        "num_prompts": dapt_field_check("rank"),
        "pool": lambda name, value: check_pool_without_prompts(value, name),
        "head_dropout": dapt_field_check("head_dropout"),
        "head_hidden": dapt_field_check("head_hidden"),
        "train_cls": dapt_field_check("tfts"),
        "update_bn_stats": dapt_field_check("update_bn_stats"),
    }
