"""LoRAConfig: the settings of LoRA on a point-cloud transformer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.checks import check_number
from pointpeft.config import HeadedConfig, dapt_field_check

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


def check_alpha(name: str, value: Any) -> float:
    """``value`` as LoRA's scale numerator: a finite number in (0, 1e6]."""
    value = check_number(name, value)
    if not 0 < value <= 1e6:
        raise ValueError(f"{name} must be > 0 and <= 1e6, got {value!r}")
    return float(value)


@dataclass
class LoRAConfig(HeadedConfig):
    """Settings of LoRA: a low-rank update ``(alpha / rank) · B A x`` beside each targeted frozen linear layer
    of every block, and a pooled head.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``).
        rank: r, the width of each update, an int in [1, 2**20].
        alpha: the scale numerator (the update is scaled by ``alpha / rank``), a number in (0, 1e6].
        dropout: dropout on the input of each update, in [0, 1).
        targets: the block's linear layers to adapt, a non-empty subset of ``("qkv", "proj", "fc1", "fc2")``.
            A packed qkv projection gets one update of all its ``3C`` outputs.
    """

    rank: int = field(default=8, metadata={"help": "Width of each low-rank update."})
    alpha: float = field(
        default=8.0, metadata={"help": "Scale numerator: updates are scaled by alpha / rank."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of each update."})
    targets: tuple[str, ...] = field(default=LORA_TARGETS, metadata={"help": "The linear layers adapted."})

    PEFT_TYPE: ClassVar[str] = "LORA"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        **HeadedConfig.HEAD_CHECKS,
        "rank": dapt_field_check("rank"),
        "alpha": check_alpha,
        "dropout": dapt_field_check("adapter_dropout"),
        "targets": check_targets,
    }
