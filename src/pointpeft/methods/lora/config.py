"""LoRAConfig: the settings of LoRA on a point-cloud transformer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.checks import check_number
from pointpeft.config import CheckedConfig, check_pool_without_prompts, dapt_field_check

#: The linear layers of a block that LoRA can adapt (the roles of pointpeft's block layout).
LORA_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")


def check_targets(name: str, value: Any) -> tuple[str, ...]:
    """``value`` as LoRA targets: a non-empty collection of names from :data:`LORA_TARGETS`, without
    repeats, returned in that order."""
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, (Sequence, set, frozenset)):
        raise TypeError(f"{name} must be a sequence of names from {LORA_TARGETS}, got {value!r}")
    value = tuple(value)
    if not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must name at least one of {LORA_TARGETS}, got {value!r}")
    unknown = [v for v in value if v not in LORA_TARGETS]
    if unknown or len(set(value)) != len(value):
        raise ValueError(f"{name} names must be distinct and among {LORA_TARGETS}, got {value!r}")
    return tuple(t for t in LORA_TARGETS if t in value)


def _check_alpha(name: str, value: Any) -> float:
    value = check_number(name, value)
    if not 0 < value <= 1e6:
        raise ValueError(f"{name} must be > 0 and <= 1e6, got {value!r}")
    return float(value)


@dataclass
class LoRAConfig(CheckedConfig):
    """Settings of LoRA: a low-rank update ``(alpha / rank) · B A x`` beside each targeted frozen linear layer
    of every block, and a pooled head.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes: number of output classes K of the head, an int in [1, 2**20].
        rank: r, the width of each update, an int in [1, 2**20].
        alpha: the scale numerator (the update is scaled by ``alpha / rank``), a number in (0, 1e6].
        dropout: dropout on the input of each update, in [0, 1).
        targets: the block's linear layers to adapt, a non-empty subset of ``("qkv", "proj", "fc1", "fc2")``.
            A packed qkv projection gets one update of all its ``3C`` outputs.
        pool: the features the head concatenates, a non-empty subset of ``("cls", "patch")``.
        head_dropout: dropout of the head's two hidden layers, in [0, 1).
        head_hidden: width of the head's two hidden layers, an int in [1, 2**20].
        train_cls: train the backbone's CLS token and CLS position (per-adapter copies).
        update_bn_stats: let the frozen backbone's BatchNorm running statistics update in train mode.
    """

    num_classes: int = field(metadata={"help": "Number of output classes of the head."})
    rank: int = field(default=8, metadata={"help": "Width of each low-rank update."})
    alpha: float = field(
        default=8.0, metadata={"help": "Scale numerator: updates are scaled by alpha / rank."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of each update."})
    targets: tuple[str, ...] = field(default=LORA_TARGETS, metadata={"help": "The linear layers adapted."})
    pool: tuple[str, ...] = field(default=("cls", "patch"), metadata={"help": "Head features."})
    head_dropout: float = field(default=0.5, metadata={"help": "Dropout of the head's hidden layers."})
    head_hidden: int = field(default=256, metadata={"help": "Width of the head's hidden layers."})
    train_cls: bool = field(default=True, metadata={"help": "Train the CLS token and its position."})
    update_bn_stats: bool = field(
        default=True, metadata={"help": "Update frozen BatchNorm running statistics in train mode."}
    )

    PEFT_TYPE: ClassVar[str] = "LORA"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        "num_classes": dapt_field_check("num_classes"),
        "rank": dapt_field_check("rank"),
        "alpha": _check_alpha,
        "dropout": dapt_field_check("adapter_dropout"),
        "targets": check_targets,
        "pool": lambda name, value: check_pool_without_prompts(value, name),
        "head_dropout": dapt_field_check("head_dropout"),
        "head_hidden": dapt_field_check("head_hidden"),
        "train_cls": dapt_field_check("tfts"),
        "update_bn_stats": dapt_field_check("update_bn_stats"),
    }
