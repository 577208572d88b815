"""BitFit (Ben Zaken et al., ACL 2022): the backbone's bias terms train, and a head.

BitFit's released code (its default, ``--bias-terms all``) trains every parameter whose name contains
``bias``, and the classifier. On a point-cloud transformer the same rule selects the biases of the blocks'
linear layers and norms, of the final norm, of the patch encoder (convolutions and BatchNorm) and of the
positional MLP. Each adapter trains its own copies of them, starting from the pre-trained values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pointpeft.config import HeadedConfig


def is_bias(name: str) -> bool:
    """BitFit's rule: whether the backbone parameter named ``name`` (its own name, e.g.
    ``blocks.blocks.0.mlp.fc1.bias``) is a bias term: the name contains ``bias``."""
    return "bias" in name


@dataclass
class BitFitConfig(HeadedConfig):
    """Settings of BitFit: every bias of the backbone trains (per-adapter copies), with a pooled head and
    (``train_cls``) the CLS token; the other backbone parameters stay frozen.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool default ``("cls", "patch")``).
    """

    PEFT_TYPE: ClassVar[str] = "BITFIT"
