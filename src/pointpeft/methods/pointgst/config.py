"""PointGSTConfig: the settings of PointGST (Point cloud Graph Spectral Tuning) on a point-cloud transformer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.checks import check_int
from pointpeft.config import MAX_WIDTH, HeadedConfig, dapt_field_check
from pointpeft.methods.adapter.config import check_adapter_scale


def _check_local_size(name: str, value: Any) -> int:
    """An int in [1, 2**20] (checked against the number of patches G when the adapter is added, where the
    backbone says G, and at forward time)."""
    return check_int(name, value, 1, MAX_WIDTH)


@dataclass
class PointGSTConfig(HeadedConfig):
    """Settings of PointGST: a Point Cloud Spectral Adapter (PCSA) beside every block's FFN branch, working in
    the spectral domains of graphs of the patch centres, and a pooled head.

    Per forward, from the patch centres ``c (B, G, 3)``: the global basis ``U (B, G, G)`` (eigenvectors of the
    normalised Laplacian of the centres' graph) and the local bases ``U_loc (B, G/s, s, s)`` of the centres
    sorted along a z-order curve and cut into chunks of ``s = local_size`` (see
    :func:`~pointpeft.methods.pointgst.graph_bases`). Per block, ``t = PCSA(X₁)`` (see
    :class:`~pointpeft.methods.pointgst.PCSA`) on the residual stream after the attention residual
    ``X₁ = X + DropPath(Attn(LN₁ X))``, and ``X_out = X₁ + DropPath(MLP(LN₂ X₁)) + t``. The defaults are
    those of the released code (``rank: 36``, ``local: 32``, scale 1).

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field, what it accepts and what it got).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``).
        rank: r, the width of each adapter's spectral bottleneck, an int in [1, 2**20].
        local_size: s, the centres per local graph, an int in [1, 2**20] that divides the number of patches G
            (checked when the adapter is added, where the backbone's grouping module has a ``num_group``, and
            at forward time).
        scale: the fixed (not learned) scale of the adapter's output, a finite number in (0, 1e6].
    """

    rank: int = field(default=36, metadata={"help": "Width of each adapter's spectral bottleneck."})
    local_size: int = field(default=32, metadata={"help": "Patch centres per local graph (divides G)."})
    scale: float = field(default=1.0, metadata={"help": "Fixed scale of the adapter's output."})

    PEFT_TYPE: ClassVar[str] = "POINTGST"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        **HeadedConfig.HEAD_CHECKS,
        "rank": dapt_field_check("rank"),
        "local_size": _check_local_size,
        "scale": check_adapter_scale,
    }
