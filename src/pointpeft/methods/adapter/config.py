"""AdapterConfig: the settings of the AdaptFormer-style adapter on a point-cloud transformer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.checks import check_number
from pointpeft.config import HeadedConfig, dapt_field_check

#: The largest accepted adapter scale (a typo guard; AdaptFormer uses 0.1).
MAX_ADAPTER_SCALE = 1e6


def check_adapter_scale(name: str, value: Any) -> float:
    """``value`` as the adapter's fixed output scale: a finite number in (0, 1e6].

    Raises:
        TypeError: if ``value`` is not a number. ValueError: if it is NaN, infinite or out of range. The
            messages name ``name``, the expected range and ``value``.
    """
    return check_number(name, value, low=0.0, low_inclusive=False, high=MAX_ADAPTER_SCALE)


@dataclass
class AdapterConfig(HeadedConfig):
    """Settings of the AdaptFormer-style adapter: a bottleneck beside every block's FFN branch, reading the
    residual stream after the attention residual and added to the block's output outside the FFN's DropPath,
    and a pooled head.

    ``A(x) = scale · (W_u Dropout(ReLU(W_d x + b_d)) + b_u)`` (``C → rank → C``); in a pre-norm block
    ``X₁ = X + DropPath(Attn(LN₁ X))``, ``X_out = X₁ + DropPath(MLP(LN₂ X₁)) + A(X₁)``. The defaults are those
    of AdaptFormer's released code (bottleneck 64, scale 0.1, dropout 0.1).

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field, what it accepts and what it got).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``).
        rank: r, the bottleneck width of each adapter, an int in [1, 2**20].
        scale: s, the fixed (not learned) scale of the adapter's output, a finite number in (0, 1e6].
        dropout: dropout on the bottleneck activations, in [0, 1).
    """

    rank: int = field(default=64, metadata={"help": "Bottleneck width of each adapter."})
    scale: float = field(default=0.1, metadata={"help": "Fixed scale of the adapter's output."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the bottleneck activations."})

    PEFT_TYPE: ClassVar[str] = "ADAPTER"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        **HeadedConfig.HEAD_CHECKS,
        "rank": dapt_field_check("rank"),
        "scale": check_adapter_scale,
        "dropout": dapt_field_check("adapter_dropout"),
    }
