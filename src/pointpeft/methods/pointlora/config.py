"""PointLoRAConfig: the settings of PointLoRA (LoRA with shared prompt MLPs and multi-scale token selection)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pointpeft.checks import check_int, check_number
from pointpeft.config import MAX_WIDTH, HeadedConfig, dapt_field_check
from pointpeft.methods.lora.config import check_alpha, check_targets

#: The released code's extra groupings: (FPS centres, kNN points per group, tokens kept) per scale.
POINTLORA_SCALES: tuple[tuple[int, int, int], ...] = ((128, 32, 32), (64, 64, 8))


def _sequence(name: str, value: Any, what: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of {what}, got {type(value).__name__} {value!r}")
    if not value:
        raise ValueError(f"{name} must hold at least one entry ({what}), got {list(value)!r}")
    return tuple(value)


def check_scales(name: str, value: Any) -> tuple[tuple[int, int, int], ...]:
    """``value`` as the token-selection scales: a non-empty sequence of ``(groups, group_size, selected)``
    int triples with ``groups, group_size >= 1`` and ``1 <= selected <= groups``."""
    what = "(groups, group_size, selected) int triples"
    scales = []
    for index, entry in enumerate(_sequence(name, value, what)):
        where = f"{name}[{index}]"
        if isinstance(entry, (str, bytes, Mapping)) or not isinstance(entry, Sequence):
            raise TypeError(f"{where} must be a {what[:-1]}, got {type(entry).__name__} {entry!r}")
        if len(entry) != 3:
            raise ValueError(f"{where} must be a (groups, group_size, selected) triple, got {list(entry)!r}")
        groups = check_int(f"{where} groups", entry[0], 1, MAX_WIDTH)
        size = check_int(f"{where} group_size", entry[1], 1, MAX_WIDTH)
        selected = check_int(f"{where} selected", entry[2], 1, MAX_WIDTH)
        if selected > groups:
            raise ValueError(
                f"{where} selected must be at most its groups ({groups}): the top-K tokens are picked among "
                f"the groups' tokens, got selected = {selected}"
            )
        scales.append((groups, size, selected))
    return tuple(scales)


def check_mask_weights(name: str, value: Any) -> tuple[float, ...]:
    """``value`` as the per-scale weights of the mask loss: a non-empty sequence of finite numbers >= 0."""
    return tuple(
        float(check_number(f"{name}[{i}]", w, low=0.0, high=1e6))
        for i, w in enumerate(_sequence(name, value, "numbers >= 0"))
    )


def _check_aux_weight(name: str, value: Any) -> float:
    return float(check_number(name, value, low=0.0, high=1e6))


def _check_hidden(name: str, value: Any) -> int:
    return check_int(name, value, 1, MAX_WIDTH)


def check_module_path(name: str, value: Any) -> str:
    """``value`` as a dotted module path of the backbone (``"pos_embed"``, ``"encoder.first_conv"``)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a dotted module path (str), got {type(value).__name__} {value!r}")
    if not value or any(not part.isidentifier() and not part.isdigit() for part in value.split(".")):
        raise ValueError(f"{name} must be a dotted module path such as 'pos_embed', got {value!r}")
    return value


def check_module_paths(name: str, value: Any) -> tuple[str, ...]:
    """``value`` as a collection of dotted module paths (may be empty), without repeats."""
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a sequence of dotted module paths, got {type(value).__name__} {value!r}"
        )
    paths = tuple(check_module_path(f"{name}[{i}]", v) for i, v in enumerate(value))
    if len(set(paths)) != len(paths):
        raise ValueError(f"{name} must not repeat a path, got {list(paths)!r}")
    return paths


@dataclass
class PointLoRAConfig(HeadedConfig):
    """Settings of PointLoRA (Wang et al., CVPR 2025) as its released code computes it.

    * Beside each targeted frozen linear layer of every block (``targets``, the released code: the packed
      ``qkv`` and the attention output ``proj``), a LoRA update (:class:`~pointpeft.methods.lora.LoRA`,
      scaled by ``alpha / rank`` = 1 at the defaults: the released forward applies no scale) plus a shared
      "prompt MLP" term ``M_role(x)`` (``Linear(in, prompt_hidden) → GELU → Linear(prompt_hidden, out)``),
      one MLP per role shared by all the blocks. (The released code multiplies ``M`` by a scalar that is
      frozen at 1.0; pointpeft leaves the constant out.)
    * Multi-scale token selection, once before the blocks: for each scale ``(groups, group_size,
      selected)`` the raw points are grouped (FPS + kNN, :func:`pointpeft.ops.group`), encoded by the
      backbone's own patch encoder and their centres by its position MLP (``pos_embed``); a mask predictor
      shared by the scales (``Linear(C, C//2) → ReLU → Linear(C//2, 1) → sigmoid``) scores each token and
      the ``selected`` highest-scoring tokens (hard top-K) and their positions join the sequence after the
      patch tokens: ``1 + G + Σ selected`` tokens (169 on Point-MAE at the defaults).
    * At every block the patch tokens get ``+ prompt_mlp(x)`` and the selected tokens ``+ selected_mlp(x)``
      (two more shared MLPs ``C → prompt_hidden → C``), after the positions are added.
    * The backbone modules named by ``trained_backbone`` train too (per-adapter copies; the released code:
      the patch encoder's first conv stage and the position MLP).
    * An auxiliary loss ``aux_weight · Σ_s mask_weights[s] · mean(p log p + (1−p) log(1−p))`` (eps 1e-6 in
      the logs) over the predictor's scores ``p`` of each scale, which the model exposes as
      :attr:`pointpeft.DAPTModel.auxiliary_loss` and ``pointpeft train`` adds to the cross-entropy. The
      top-K gathers do not depend on ``p``'s values, so the predictor gets gradient through this loss only.
    * The head pools the CLS token and the max over the patch **and** the selected tokens.

    Every field is checked when the config is built and whenever it is assigned (a ``TypeError`` or
    ``ValueError`` naming the field, what it accepts and what it got).

    Args:
        num_classes, pool, head_dropout, head_hidden, train_cls, update_bn_stats: the head and the CLS token,
            as :class:`~pointpeft.config.HeadedConfig` (pool ``("cls", "patch")``: the released head).
        rank: r of each LoRA update (released: 8).
        alpha: LoRA's scale numerator (updates scaled by ``alpha / rank``; released: unscaled, i.e. 8 / 8).
        targets: the block's linear layers adapted, a subset of ``("qkv", "proj", "fc1", "fc2")``
            (released: ``("qkv", "proj")``; the paper's figure shows qkv and the FFN).
        prompt_hidden: the hidden width of the four shared prompt MLPs (released: 32).
        scales: ``(groups, group_size, selected)`` per extra grouping (released: ``((128, 32, 32),
            (64, 64, 8))``); ``selected <= groups``; the cloud must hold at least ``max(groups,
            group_size)`` points (checked at forward).
        mask_weights: the weight of each scale's term of the mask loss, one per scale (released: 1, 0.25).
        aux_weight: the weight of the mask loss in the training loss (released: 0.004).
        pos_embed: the backbone's position MLP (centres ``(B, S, 3)`` → ``(B, S, C)``), a module path.
        trained_backbone: backbone module paths whose parameters train (released: the first conv stage of
            the patch encoder, ``encoder.first_conv``, and ``pos_embed``); may be empty.
    """

    rank: int = field(default=8, metadata={"help": "Width of each low-rank update."})
    alpha: float = field(
        default=8.0, metadata={"help": "LoRA scale numerator (updates scaled alpha / rank)."}
    )
    targets: tuple[str, ...] = field(default=("qkv", "proj"), metadata={"help": "The linear layers adapted."})
    prompt_hidden: int = field(default=32, metadata={"help": "Hidden width of the shared prompt MLPs."})
    scales: tuple[tuple[int, int, int], ...] = field(
        default=POINTLORA_SCALES, metadata={"help": "(groups, group_size, selected) per extra grouping."}
    )
    mask_weights: tuple[float, ...] = field(
        default=(1.0, 0.25), metadata={"help": "Weight of each scale's mask-loss term."}
    )
    aux_weight: float = field(
        default=0.004, metadata={"help": "Weight of the mask loss in the training loss."}
    )
    pos_embed: str = field(default="pos_embed", metadata={"help": "The backbone's position MLP."})
    trained_backbone: tuple[str, ...] = field(
        default=("encoder.first_conv", "pos_embed"), metadata={"help": "Backbone modules that train."}
    )

    PEFT_TYPE: ClassVar[str] = "POINTLORA"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        **HeadedConfig.HEAD_CHECKS,
        "rank": dapt_field_check("rank"),
        "alpha": check_alpha,
        "targets": check_targets,
        "prompt_hidden": _check_hidden,
        "scales": check_scales,
        "mask_weights": check_mask_weights,
        "aux_weight": _check_aux_weight,
        "pos_embed": check_module_path,
        "trained_backbone": check_module_paths,
    }

    def _check_together(self, name: str, value: Any) -> Any:
        """``mask_weights`` holds one weight per entry of ``scales``."""
        if name in ("scales", "mask_weights"):
            scales = value if name == "scales" else self.__dict__.get("scales")
            weights = value if name == "mask_weights" else self.__dict__.get("mask_weights")
            if scales is not None and weights is not None and len(scales) != len(weights):
                raise ValueError(
                    f"mask_weights must hold one weight per scale ({len(scales)} scales: {list(scales)}), "
                    f"got {list(weights)}"
                )
        return value


def selected_count(config: PointLoRAConfig) -> int:
    """The tokens that join the sequence after the patches: ``Σ selected`` over the scales."""
    return sum(s[2] for s in config.scales)
