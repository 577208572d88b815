"""IDPTConfig: the settings of IDPT (Instance-aware Dynamic Prompt Tuning) on a point-cloud transformer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.checks import check_choice, check_int
from pointpeft.config import MAX_WIDTH, POOL_CHOICES, HeadedConfig, check_pool, dapt_field_check

#: ``IDPTConfig.prompt_pos_mode``: how the prompt's position joins it (see :class:`IDPTConfig`).
PROMPT_POS_MODES: tuple[str, ...] = ("auto", "every_block", "once")


def _check_prompt_layer(name: str, value: Any) -> int:
    """An int >= 0 (the block index; checked against the backbone's depth when the adapter is added)."""
    return check_int(name, value, 0, MAX_WIDTH)


def _check_k(name: str, value: Any) -> int:
    """An int >= 1 (checked against the number of patch tokens at forward time)."""
    return check_int(name, value, 1, MAX_WIDTH)


@dataclass
class IDPTConfig(HeadedConfig):
    """Settings of IDPT: one prompt token made from the patch tokens by a DGCNN-style generator, inserted
    after the CLS token at block ``prompt_layer``, and a pooled head.

    At block ``p = prompt_layer`` the generator reads the ``G`` patch tokens ``T (B, G, C)`` that block
    ``p`` receives (the output of block ``p − 1``, the global tokens left out, before the positions are
    added; for ``p = 0`` the patch encoder's output) and makes one prompt ``q (B, 1, C)`` (see
    :class:`~pointpeft.methods.idpt.DGCNNPromptGenerator`); blocks ``p … L−1`` run on
    ``[CLS, q, patches]``. The prompt's position ``prompt_pos (1, 1, C)`` (truncated normal, std 0.02) is
    added to the prompt at the input of every block ``p … L−1`` on a backbone that re-adds its positions
    before every block (Point-MAE's forward, ``pos_mode="every_block"``), and once, when the prompt joins,
    on one that adds them once before block 0 (``pos_mode="once"``). The defaults are the released code's
    (ScanObjectNN PB_T50_RS / ModelNet40: ``prompt_layer=11``, ``k=20``, pool ``all``).

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field, what it accepts and what it got).

    Args:
        num_classes, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token, as
            :class:`~pointpeft.config.HeadedConfig`.
        pool: the features the head concatenates, a non-empty subset of ``("cls", "prompt", "patch")`` in
            that order: the CLS token, the prompt, the max over the patch tokens. The released code's
            ``cls_type: all`` is ``("cls", "prompt", "patch")`` (the default, 3C wide) and its
            ``promptonly`` (OBJ_BG) is ``("prompt",)``.
        prompt_layer: p, the index of the block whose input gets the prompt, an int in [0, depth) (checked
            against the backbone when the adapter is added; the released code: 11, and 6 for OBJ_ONLY).
        k: the neighbours of each token in the generator's feature-space kNN graphs (itself included), an
            int >= 1 and at most the number of patch tokens G (checked at forward time; released: 20).
        train_prompt_pos: train the prompt's position. False (the default) is the released code's
            behaviour: its ``prompt_pos`` is not among the optimised parameters (their names contain
            ``cls``), so it stays at its random init; it is then kept as a buffer (saved with the adapter,
            not counted as a parameter).
        prompt_pos_mode: ``"auto"`` (default) follows the backbone: the ``pos_mode`` setting of the first
            module of the backbone that has one (pointpeft's ``PointMAE`` / ``PointBERT``), else
            ``"every_block"`` (the convention of Point-MAE's and the other re-adding backbones' forward);
            ``"every_block"`` or ``"once"`` say it outright.
    """

    pool: tuple[str, ...] = field(
        default=POOL_CHOICES, metadata={"help": "Head features: subset of ('cls', 'prompt', 'patch')."}
    )
    prompt_layer: int = field(default=11, metadata={"help": "Block whose input gets the prompt."})
    k: int = field(default=20, metadata={"help": "Neighbours in the generator's kNN graphs."})
    train_prompt_pos: bool = field(
        default=False, metadata={"help": "Train the prompt's position (the released code does not)."}
    )
    prompt_pos_mode: str = field(
        default="auto", metadata={"help": "How the prompt's position joins: auto | every_block | once."}
    )

    PEFT_TYPE: ClassVar[str] = "IDPT"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        **HeadedConfig.HEAD_CHECKS,
        "pool": lambda name, value: check_pool(value, name),
        "prompt_layer": _check_prompt_layer,
        "k": _check_k,
        "train_prompt_pos": dapt_field_check("update_bn_stats"),
        "prompt_pos_mode": lambda name, value: check_choice(name, value, PROMPT_POS_MODES),
    }
