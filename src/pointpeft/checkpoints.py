"""Loading checkpoints: official pre-trained backbones, and models released with the DAPT reference."""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import nn

from pointpeft.backbones import PointMAE
from pointpeft.checks import check_choice, check_positive_int, check_type
from pointpeft.config import POOL_CHOICES, DAPTConfig, check_pool
from pointpeft.dapt.adapter_files import PRETRAINED_ATTRIBUTE
from pointpeft.dapt.model import DAPTModel, wrap_with_dapt
from pointpeft.safe_load import load_torch_file

# Reference name → pointpeft name of the DAPT-specific tensors, written with the backbone names (every
# ``.base_layer`` of a wrapped module removed), for the adapter named "default".
_REFERENCE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^tfts_(gamma|beta)_1$", r"encoder.tfts.default.\1"),
    (r"^tfts_(gamma|beta)_2$", r"norm.tfts.default.\1"),
    (r"^(blocks\.blocks\.\d+)\.tfts_(gamma|beta)_1$", r"\1.norm1.tfts.default.\2"),
    (r"^(blocks\.blocks\.\d+)\.tfts_(gamma|beta)_2$", r"\1.norm2.tfts.default.\2"),
    (r"^(blocks\.blocks\.\d+)\.tfts_(gamma|beta)_3$", r"\1.prompt.default.tfts.\2"),
    (r"^(blocks\.blocks\.\d+)\.attn\.tfts_(gamma|beta)_1$", r"\1.attn.qkv.tfts.default.\2"),
    (r"^(blocks\.blocks\.\d+)\.attn\.tfts_(gamma|beta)_2$", r"\1.attn.proj.tfts.default.\2"),
    (r"^(blocks\.blocks\.\d+)\.mlp\.tfts_(gamma|beta)_1$", r"\1.mlp.fc1.tfts.default.\2"),
    (r"^(blocks\.blocks\.\d+)\.mlp\.tfts_(gamma|beta)_2$", r"\1.mlp.fc2.tfts.default.\2"),
    (r"^(blocks\.blocks\.\d+)\.Adapter_MLP\.adapter_layer_norm_before\.", r"\1.mlp.adapter.default.norm."),
    (r"^(blocks\.blocks\.\d+)\.Adapter_MLP\.scale\.", r"\1.mlp.adapter.default.scale."),
    (r"^(blocks\.blocks\.\d+)\.Adapter_MLP\.down_proj\.", r"\1.mlp.adapter.default.down."),
    (r"^(blocks\.blocks\.\d+)\.Adapter_MLP\.up_proj\.", r"\1.mlp.adapter.default.up."),
)
_HEAD_PREFIX = "cls_head_finetune."


# Prefixes that training wrappers put in front of every key of the model they wrap: DistributedDataParallel
# and DataParallel (``module.``), torch.compile (``_orig_mod.``). They can be nested, in any order.
TRAINING_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
# Shapes of the reference tensors that give the model's sizes, in symbols bound on first use: C token width,
# E patch-encoder width, H FFN width, r adapter rank, h head width, W head input width, K classes. The head
# is the reference's Linear-BN-ReLU-Dropout (0-3), Linear-BN-ReLU-Dropout (4-7), Linear (8).
_REFERENCE_SHAPES: tuple[tuple[str, tuple[int | str, ...]], ...] = (
    ("cls_token", (1, 1, "C")),
    ("encoder.second_conv.3.weight", ("E", 512, 1)),
    ("blocks.blocks.0.mlp.fc1.weight", ("H", "C")),
    ("blocks.blocks.0.Adapter_MLP.down_proj.weight", ("r", "C")),
    (_HEAD_PREFIX + "0.weight", ("h", "W")),
    (_HEAD_PREFIX + "4.weight", ("h", "h")),
    (_HEAD_PREFIX + "8.weight", ("K", "h")),
)
# A block key of the reference: ``blocks.blocks.<i>.``, i without leading zeros and of at most 6 digits (a
# longer number is no block index; such a key is reported as unmatched).
_SYMBOLS = {
    "C": "token width",
    "E": "patch-encoder width",
    "H": "FFN width",
    "r": "adapter rank",
    "h": "head width",
    "W": "head input width",
    "K": "classes",
}
_BLOCK_KEY = re.compile(r"blocks\.blocks\.(0|[1-9]\d{0,5})\.")


def strip_wrapper_names(key: str) -> str:
    """The backbone's own name of a parameter of a wrapped model: every ``base_layer`` segment removed
    (``blocks.0.base_layer.norm1.base_layer.weight`` → ``blocks.0.norm1.weight``); other names that merely
    contain ``base_layer`` are kept."""
    return ".".join(part for part in key.split(".") if part != "base_layer")


def strip_training_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the prefixes of training wrappers removed from the start of its keys.

    A leading ``module.`` (DistributedDataParallel, DataParallel) or ``_orig_mod.`` (torch.compile) is
    removed while every key starts with it, as many times as the wrappers are nested
    (``module._orig_mod.blocks.0.x`` → ``blocks.0.x``). Nothing else in a key changes: a submodule named
    ``pre_module`` or ``module`` inside the model keeps its name, and when some keys lack the prefix, none
    is removed (the model itself then has a child of that name).
    """
    keys = list(state)
    removed = 0
    while keys and (prefix := _common_wrapper_prefix(keys, removed)) is not None:
        removed += len(prefix)
    return {key[removed:]: value for key, value in state.items()}


def _common_wrapper_prefix(keys: Sequence[str], start: int) -> str | None:
    """The wrapper prefix that every key has at position ``start``, if any."""
    return next((p for p in TRAINING_WRAPPER_PREFIXES if all(key.startswith(p, start) for key in keys)), None)


def _reference_to_pointpeft(key: str) -> str:
    if key.startswith(_HEAD_PREFIX):
        return "heads.default.mlp." + key[len(_HEAD_PREFIX) :]
    for pattern, replacement in _REFERENCE_RENAMES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return "base_model." + renamed
    return "base_model." + key


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating-point"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def value_problem(name: str, value: torch.Tensor, target: torch.Tensor) -> str | None:
    """Why the checkpoint tensor ``value`` cannot be copied into the model's ``target`` of the same shape
    and backbone name ``name``, or None when it can.

    Refused: sparse or meta tensors, a kind of dtype other than the target's (an integer tensor for float
    weights, ...), NaN or infinite values, and a negative BatchNorm ``running_var`` (its square root is NaN).
    """
    if value.layout != torch.strided:
        return f"is a {value.layout} tensor; only dense (strided) tensors can be loaded"
    if value.device.type == "meta":
        return "is a meta tensor: it holds no values"
    kind, expected = _dtype_kind(value.dtype), _dtype_kind(target.dtype)
    if kind != expected:
        return f"has dtype {value.dtype} ({kind}), the model's tensor is {target.dtype} ({expected})"
    if kind in ("floating-point", "complex"):
        bad = int(value.numel() - torch.isfinite(value).sum())
        if bad:
            return f"holds {bad} NaN or infinite value(s) of {value.numel()}"
    if name.rpartition(".")[2] == "running_var" and bool((value < 0).any()):
        return "holds a negative BatchNorm running variance"
    return None


class _Matches(NamedTuple):
    """Checkpoint tensors sorted against a model's state dict (see :func:`_match_by_backbone_name`)."""

    loaded: dict[str, torch.Tensor]  # model key -> tensor to load
    unmatched: list[str]  # checkpoint keys with no model tensor of that name
    mismatched: list[str]  # "key: checkpoint (shape), model (shape)"
    bad: list[str]  # "key: what is wrong with its values"


def _match_by_backbone_name(
    own: Mapping[str, torch.Tensor], entries: Iterable[tuple[str, str, torch.Tensor]]
) -> _Matches:
    """Match checkpoint tensors to a model's state dict by backbone name (``base_layer`` removed).

    Args:
        own: the model's state dict.
        entries: ``(checkpoint key, backbone name, tensor)`` for every checkpoint tensor to place.

    Returns:
        the matched tensors, and every checkpoint key that has no place, a different shape, or values that
        cannot be loaded (:func:`value_problem`).
    """
    by_backbone_name = {strip_wrapper_names(k): k for k in own}
    matches = _Matches({}, [], [], [])
    for key, name, value in entries:
        target = by_backbone_name.get(name)
        if target is None:
            matches.unmatched.append(key)
        elif own[target].shape != value.shape:
            matches.mismatched.append(
                f"{key}: checkpoint {tuple(value.shape)}, model {tuple(own[target].shape)}"
            )
        elif (problem := value_problem(name, value, own[target])) is not None:
            matches.bad.append(f"{key}: {problem}")
        else:
            matches.loaded[target] = value
    return matches


def _listed(items: Sequence[str], separator: str | None = None, limit: int = 20) -> str:
    """The first ``limit`` items, as a list (or joined by ``separator``), with how many more there are."""
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    shown = list(items[:limit])
    return (str(shown) if separator is None else separator.join(shown)) + more


def _raise_for_bad_values(bad: Sequence[str], where: str) -> None:
    if bad:
        raise ValueError(
            f"{where}: {len(bad)} checkpoint tensor(s) cannot be loaded: " + _listed(bad, "; ")
            + ". Nothing was loaded: such values would give wrong results; use a checkpoint saved from a "
            "healthy model"
        )  # fmt: skip


def _read_source(source: object) -> tuple[str, object]:
    """``(where, loaded object)``: ``where`` names the argument, and the file when there is one."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            folder = " (it is a folder)" if os.path.isdir(path) else ""
            raise FileNotFoundError(f"path_or_state_dict: no checkpoint file at {path!r}{folder}")
        return f"path_or_state_dict ({path!r})", load_torch_file(path, argument="path_or_state_dict")
    if not isinstance(source, Mapping):
        raise TypeError(
            f"path_or_state_dict must be a path or a mapping of tensors, got {type(source).__name__}"
        )
    return "path_or_state_dict", source


def _state_dict_of(loaded: object, where: str) -> Mapping[Any, Any]:
    """The state dict inside a loaded checkpoint: the first of :data:`STATE_DICT_KEYS` that it has
    (``{'base_model': ...}`` of the Point-MAE family, ``{'model': ..., 'optimizer': ..., 'epoch': ...}`` of
    openpoints), or ``loaded`` itself when its values are tensors."""
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"{where} holds a {type(loaded).__name__}, not a checkpoint: expected {{'base_model': state_dict}} "
            "or a state dict (a mapping of names to tensors)"
        )
    key = next((k for k in STATE_DICT_KEYS if k in loaded), None)
    if key is None:
        return loaded
    state = loaded[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: {key!r} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _check_state_entries(state: Mapping[Any, Any], where: str) -> None:
    """Every key a non-empty str and every value a tensor."""
    if not state:
        raise ValueError(f"{where} holds an empty state dict (expected {{'base_model': state_dict}})")
    bad_keys = [k for k in state if not isinstance(k, str) or not k]
    if bad_keys:
        raise ValueError(f"{where}: state dict keys must be non-empty names (str), got {bad_keys[:10]!r}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not bad:
        return
    listed = ", ".join(f"{k!r} ({type(state[k]).__name__})" for k in bad[:10])
    nested = [k for k in bad if isinstance(state[k], Mapping)]
    hint = (
        f"; if the tensors are under {nested[0]!r}, pass that mapping (e.g. checkpoint[{nested[0]!r}])"
        if nested
        else ""
    )
    raise ValueError(f"{where}: the state dict has {len(bad)} non-tensor entries: {listed}{hint}")


def _read_state_dict(source: object) -> tuple[str, dict[str, torch.Tensor]]:
    """``(where, state dict)`` of a checkpoint file or mapping, training-wrapper prefixes removed."""
    where, loaded = _read_source(source)
    state = _state_dict_of(loaded, where)
    _check_state_entries(state, where)
    return where, strip_training_wrapper_prefixes(state)


def _require(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"not a DAPT reference checkpoint: the key {key!r} is missing")
    return state[key]


def _pattern_text(pattern: Sequence[int | str]) -> str:
    """``("h", "W")`` → ``"(h, W) (h: head width, W: head input width)"``."""
    legend = ", ".join(f"{s}: {_SYMBOLS[s]}" for s in dict.fromkeys(p for p in pattern if isinstance(p, str)))
    return "(" + ", ".join(map(str, pattern)) + (",)" if len(pattern) == 1 else ")") + f" ({legend})"


def _reference_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The sizes C, E, H, r, h, W, K read from the shapes of :data:`_REFERENCE_SHAPES`, each key's shape
    checked (rank, fixed sizes, sizes shared between keys, no zero size) before any size is used."""
    family = _detect_source(list(state))
    if "cls_token" not in state and family != "plain":
        raise ValueError(
            f"not a DAPT reference checkpoint: it has no 'cls_token' and its keys look like a {family} "
            "pre-training checkpoint; load those weights with pointpeft.load_pretrained(backbone, ...)"
        )
    sizes: dict[str, int] = {}
    origin: dict[str, str] = {}
    for key, pattern in _REFERENCE_SHAPES:
        shape = tuple(_require(state, key).shape)
        expected = _pattern_text(pattern)
        if len(shape) != len(pattern) or 0 in shape:
            raise ValueError(
                f"not a DAPT reference checkpoint: {key!r} must have shape {expected} with sizes >= 1, got "
                f"{shape}"
            )
        for size, symbol in zip(shape, pattern, strict=True):
            if isinstance(symbol, int) and size != symbol:
                raise ValueError(
                    f"not a DAPT reference checkpoint: {key!r} must have shape {expected}, got {shape}"
                )
            if isinstance(symbol, str) and sizes.setdefault(symbol, size) != size:
                raise ValueError(
                    f"not a DAPT reference checkpoint: {key!r} must have shape {expected} with {symbol} = "
                    f"{sizes[symbol]} (from {origin[symbol]!r}), got {shape}"
                )
            if isinstance(symbol, str):
                origin.setdefault(symbol, key)
    return sizes


def _reference_depth(state: Mapping[str, torch.Tensor]) -> int:
    """The number of blocks: the ``blocks.blocks.<i>.*`` keys must number the blocks 0, 1, ... without gaps."""
    indices = {int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key))}
    if not indices:
        raise ValueError("not a DAPT reference checkpoint: no 'blocks.blocks.<i>.*' keys")
    depth = max(indices) + 1
    gaps = list(itertools.islice((i for i in range(depth) if i not in indices), 10))
    if gaps:
        raise ValueError(
            f"not a DAPT reference checkpoint: the blocks must be numbered 0..{depth - 1} without gaps, but no "
            f"key starts with 'blocks.blocks.<i>.' for i in {gaps}"
        )
    return depth


def _reference_parts(head_width: int, dim: int) -> int:
    """How many pooled features (of width ``dim``) the head's input (of width ``head_width``) holds."""
    parts, remainder = divmod(head_width, dim)
    if remainder or not 1 <= parts <= len(POOL_CHOICES):
        raise ValueError(
            f"the head's input width {head_width} ('{_HEAD_PREFIX}0.weight') is not 1-3 times the token width "
            f"{dim} ('cls_token')"
        )
    return parts


def load_reference_dapt(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    num_heads: int = 6,
    num_group: int = 128,
    group_size: int = 32,
    pool: Sequence[str] | None = None,
) -> DAPTModel:
    """Build a DAPT model from a checkpoint of the reference implementation (``PointTransformer_DAPT``).

    The checkpoint is ``{"base_model": state_dict}`` (or the state dict itself) with the reference's key
    names; the prefixes of training wrappers (``module.``, ``_orig_mod.``) are removed from the start of
    the keys (:func:`strip_training_wrapper_prefixes`). The token width, depth, rank, FFN width, head width
    and number of classes are read from the tensor shapes, after each of those tensors' shapes is checked;
    the positional embedding is added once before the first block, as in the reference. Files are read
    with :func:`pointpeft.safe_load.load_torch_file` (``weights_only=True``: no pickled code runs).

    Args:
        path_or_state_dict: a ``.pth`` file, or the loaded mapping.
        num_heads: attention heads per block (not recorded in the tensors).
        num_group: number of patches G (reference: 128 for ScanObjectNN, 64 for ModelNet40).
        group_size: points per patch (reference: 32).
        pool: the head's features. Needed when the head's input width does not tell: a head on two features
            is ``("cls", "prompt")`` (OBJ_ONLY) or ``("cls", "patch")`` (ModelNet40).

    Returns:
        the :class:`~pointpeft.DAPTModel`, in eval mode, computing the reference's logits.

    Raises:
        FileNotFoundError: if there is no file at the path. TypeError: if the argument is neither a path
            nor a mapping.
        ValueError: if the file cannot be read (truncated, corrupt, pickled code), a tensor that gives a
            size has the wrong rank, a zero size or sizes that disagree (the key and the expected shape,
            e.g. ``(1, 1, C)``, are named), the blocks are not numbered 0..N-1, a checkpoint key is not
            used, a model tensor is not in the checkpoint, shapes or dtypes do not match, a tensor holds NaN
            or infinite values, ``num_heads`` does not divide the token width, or ``pool`` is missing or
            inconsistent with the head.
    """
    check_positive_int("num_heads", num_heads)
    where, state = _read_state_dict(path_or_state_dict)
    sizes = _reference_sizes(state)
    dim = sizes["C"]
    depth = _reference_depth(state)
    if dim % num_heads:
        raise ValueError(
            f"num_heads={num_heads} does not divide the checkpoint's token width C={dim} ('cls_token'); pass "
            "the num_heads the model was trained with (reference: 6)"
        )
    parts = _reference_parts(sizes["W"], dim)
    if pool is None and parts != len(POOL_CHOICES):
        raise ValueError(
            f"the head takes {parts} pooled feature(s) ({sizes['W']} = {parts} x {dim}); pass pool= to say "
            f"which, e.g. pool=('cls', 'prompt') for OBJ_ONLY or pool=('cls', 'patch') for ModelNet40"
        )
    config = DAPTConfig(
        num_classes=sizes["K"], rank=sizes["r"], pool=POOL_CHOICES if pool is None else check_pool(pool),
        head_hidden=sizes["h"],
    )  # fmt: skip
    if len(config.pool) != parts:
        raise ValueError(
            f"pool={config.pool} gives {len(config.pool)} feature(s) but the checkpoint's head takes {parts} "
            f"({sizes['W']} = {parts} x {dim})"
        )

    backbone = PointMAE(
        trans_dim=dim,
        depth=depth,
        num_heads=num_heads,
        num_group=num_group,
        group_size=group_size,
        encoder_dims=sizes["E"],
        pos_mode="once",
        mlp_ratio=sizes["H"] / dim,
        qkv_bias="blocks.blocks.0.attn.qkv.bias" in state,
    )
    model = wrap_with_dapt(backbone, config)
    if "prompt" not in config.pool:
        # The reference's last block makes a prompt that nothing reads when the head does not pool prompts;
        # pointpeft does not create it (its TFTS would never get a gradient), so its two tensors are unused.
        state = {k: v for k, v in state.items() if not k.startswith(f"blocks.blocks.{depth - 1}.tfts_")
                 or not k.endswith("_3")}  # fmt: skip
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone_copies.")}
    matches = _match_by_backbone_name(
        own, ((key, _reference_to_pointpeft(key), value) for key, value in state.items())
    )
    missing = [k for k in own if k not in matches.loaded and not k.endswith("num_batches_tracked")]
    if matches.unmatched:
        raise ValueError(
            f"{len(matches.unmatched)} checkpoint key(s) match no tensor of the DAPT model: "
            + _listed(matches.unmatched)
        )
    if matches.mismatched:
        raise ValueError(
            "checkpoint tensors do not match the model's shapes: " + _listed(matches.mismatched, "; ")
        )
    _raise_for_bad_values(matches.bad, where)
    if missing:
        raise ValueError(
            f"{len(missing)} tensor(s) of the DAPT model are not in the checkpoint: " + _listed(missing)
        )
    model.load_state_dict(matches.loaded, strict=False)
    _refresh_pretrained_copies(
        model.base_model, {strip_wrapper_names(k)[len("base_model.") :] for k in matches.loaded}
    )
    return model.eval()


_logger = logging.getLogger("pointpeft")

PretrainedSource = Literal[
    "auto", "point_mae", "act", "point_bert", "recon", "pointgpt", "openpoints", "plain"
]
SOURCES: tuple[PretrainedSource, ...] = get_args(PretrainedSource)
# Prefix of the encoder inside each family's pre-training checkpoint.
# The prefix under which each family's pre-training checkpoint keeps the encoder that its fine-tuning model
# loads (as the upstream fine-tuning loaders strip it). Point-BERT's depends on point_bert_encoder.
_ENCODER_PREFIXES = {
    "point_mae": "MAE_encoder.",
    "recon": "MAE_encoder.",
    "act": "ACT_encoder.",
    "pointgpt": "GPT_Transformer.",
}
# ReCon's second stream (global queries with cross-attention) and its image/text tokens: how a ReCon
# checkpoint is told from a Point-MAE one (both keep the encoder under MAE_encoder.).
_RECON_EXTRA = re.compile(r"(_contrast\.|^(img|text)_(token|pos)$)")
# Where checkpoints of training frameworks keep the state dict: the Point-MAE family's runners
# (base_model), openpoints / PointNeXt (model), Lightning and many others (state_dict), a few (net, network).
STATE_DICT_KEYS: tuple[str, ...] = ("base_model", "model", "state_dict", "net", "network")


class PretrainedLoadResult(NamedTuple):
    """What :func:`load_pretrained` did.

    Attributes:
        source: the checkpoint family read (``"point_mae"``, ``"act"``, ``"point_bert"``, ``"recon"``,
            ``"pointgpt"``, ``"openpoints"`` or ``"plain"``).
        missing_keys: backbone tensors the checkpoint did not provide (they keep their current values;
            e.g. ``cls_token``/``cls_pos`` for Point-MAE, whose pre-training has no CLS token).
        unexpected_keys: checkpoint tensors the backbone has no place for (decoders, masks, heads, ...).
    """

    source: str
    missing_keys: list[str]
    unexpected_keys: list[str]

    def summary(self) -> str:
        """One line for a log: the family read, then what is missing and what was ignored, grouped by the
        first part of their names (``MAE_decoder (52), mask_token (1)``)."""
        return (
            f"read as {self.source}; missing (kept as initialised): {_grouped(self.missing_keys)}; "
            f"unexpected (ignored): {_grouped(self.unexpected_keys)}"
        )


def _grouped(keys: Sequence[str]) -> str:
    """``keys`` as ``name (count)`` per first dotted part, in order of first appearance; ``none`` if empty."""
    if not keys:
        return "none"
    counts: dict[str, int] = {}
    for key in keys:
        head = key.split(".")[0]
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(name if n == 1 and name in keys else f"{name} ({n})" for name, n in counts.items())


#: The attribute in which :func:`load_pretrained` leaves, on the backbone, the
#: :class:`PretrainedLoadResult` of its last load (:func:`pretrained_load_result` reads it).
LOAD_RESULT_ATTRIBUTE = "pointpeft_pretrained_load_result"


def pretrained_load_result(backbone: nn.Module) -> PretrainedLoadResult | None:
    """What the last :func:`load_pretrained` into ``backbone`` (or a :class:`~pointpeft.DAPTModel`'s
    backbone) loaded, or None if none has."""
    if isinstance(backbone, DAPTModel):
        backbone = backbone.base_model
    result = getattr(backbone, LOAD_RESULT_ATTRIBUTE, None)
    return result if isinstance(result, PretrainedLoadResult) else None


def _refresh_pretrained_copies(backbone: nn.Module, loaded: set[str]) -> None:
    """After loading into a wrapped backbone, make its kept pre-trained values (used by
    ``disable_adapter`` and by new adapters) those just loaded. ``loaded`` holds backbone names."""
    from pointpeft.dapt.backbone_copies import get_tensor
    from pointpeft.dapt.tfts import DAPTWrapper

    wrapper = next((m for m in backbone.modules() if isinstance(m, DAPTWrapper)), None)
    copies = None if wrapper is None else wrapper.link.copies
    if copies is None:
        return
    with torch.no_grad():
        for path in copies.paths:
            if strip_wrapper_names(path) in loaded:
                copies.base_value(path).copy_(get_tensor(backbone, path))


def _inserted_by_dapt(model: nn.Module) -> set[str]:
    """State-dict names of the tensors that DAPT added to a wrapped backbone (none of a plain one)."""
    from pointpeft.dapt import TFTS, DynamicAdapter, InternalPrompt

    names: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, (TFTS, DynamicAdapter, InternalPrompt)):
            names.update(f"{prefix}.{name}" if prefix else name for name in module.state_dict())
    return names


def _detect_source(keys: Sequence[str]) -> str:
    if any(k.startswith("transformer_k.") or k.startswith("transformer_q.") for k in keys):
        return "point_bert"
    if any(k.startswith("ACT_encoder.") for k in keys):
        return "act"
    if any(k.startswith("GPT_Transformer.") for k in keys):
        return "pointgpt"
    if any(k.startswith("MAE_encoder.") for k in keys):
        encoder = [k[len("MAE_encoder.") :] for k in keys if k.startswith("MAE_encoder.")]
        return "recon" if any(_RECON_EXTRA.search(k) for k in encoder) else "point_mae"
    if keys and all(k.startswith(("encoder.", "prediction.")) for k in keys):
        return "openpoints"  # BaseCls: encoder (the PointViT) and prediction (the head)
    return "plain"


def _family_prefix(family: str, backbone: nn.Module, point_bert_encoder: str) -> str:
    """The prefix of the backbone's tensors in a checkpoint of ``family``."""
    if family == "point_bert":
        return "transformer_q." if point_bert_encoder == "online" else "transformer_k."
    if family == "openpoints":
        # Into a BaseCls the keys fit as they are; into the PointViT alone, without its "encoder." prefix.
        has_encoder = isinstance(getattr(backbone, "encoder", None), nn.Module)
        return "" if has_encoder else "encoder."
    return _ENCODER_PREFIXES.get(family, "")


def load_pretrained(
    backbone: nn.Module,
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    source: PretrainedSource = "auto",
    point_bert_encoder: Literal["momentum", "online"] = "online",
) -> PretrainedLoadResult:
    """Load an official pre-training (or fine-tuning) checkpoint into a backbone, by parameter name.

    It loads what the backbone's own published fine-tuning loader loads, into whatever the backbone has:

    * the state dict is taken from under ``base_model`` (the Point-MAE family's runners), ``model``
      (openpoints / PointNeXt: ``{'model', 'optimizer', 'scheduler', 'epoch'}``), ``state_dict``, ``net`` or
      ``network``, or is the mapping itself; the prefixes of training wrappers (``module.``,
      ``_orig_mod.``) are removed from the start of the keys (:func:`strip_training_wrapper_prefixes`;
      names inside keys never change);
    * the encoder is read from under its family's prefix: ``MAE_encoder.`` (Point-MAE, ReCon),
      ``ACT_encoder.`` (ACT), ``GPT_Transformer.`` (PointGPT), ``transformer_q.`` (Point-BERT's online
      encoder, which Point-BERT's own fine-tuning loader reads) or ``transformer_k.`` (its momentum encoder,
      ``point_bert_encoder="momentum"``, which DAPT's released loader reads); openpoints' ``encoder.`` is
      kept for a ``BaseCls`` and removed for a bare PointViT;
    * every tensor whose name the backbone has is loaded: for ReCon the ``*_contrast`` stream and the
      image/text tokens too, when the backbone has them (ReCon's own fine-tuning model does).

    What the checkpoint lacks (``missing_keys``) and what the backbone has no place for
    (``unexpected_keys``) are returned and logged. The backbone may already be wrapped by
    :func:`pointpeft.wrap_with_dapt` (its ``.base_layer`` names are matched; a
    :class:`~pointpeft.DAPTModel` may be passed for its backbone); the values loaded become the
    pre-trained values that ``disable_adapter`` and new adapters start from. Files are read
    with :func:`pointpeft.safe_load.load_torch_file` (``weights_only=True``: no pickled code runs). Nothing
    is loaded unless every tensor to load fits: same shape, same kind of dtype (floating-point, integer,
    ...), finite values.

    Args:
        backbone: the model to fill, e.g. :class:`pointpeft.backbones.PointMAE`.
        path_or_state_dict: a checkpoint file (``{"base_model": state_dict}`` or a state dict) or the
            loaded mapping.
        source: the checkpoint family; ``"auto"`` tells it from the key prefixes, ``"plain"`` takes the
            keys as backbone names.
        point_bert_encoder: which of Point-BERT's two encoders to read: ``"online"`` (``transformer_q``,
            as Point-BERT's fine-tuning does; the default) or ``"momentum"`` (``transformer_k``).

    Returns:
        a :class:`PretrainedLoadResult` (also logged at INFO level on the ``pointpeft`` logger).

    Raises:
        ValueError: if the file cannot be read (truncated, corrupt, pickled code) or holds no state dict
            of tensors (empty, non-tensor entries), if a checkpoint tensor has a different shape than the
            backbone's tensor of that name, another kind of dtype, or NaN/infinite values (all such keys are
            listed), if nothing in the checkpoint matches the backbone, or if ``source`` names an unknown
            family. The messages name the file.
        FileNotFoundError / TypeError: for a missing file or an argument that is not a path or mapping.
    """
    if isinstance(backbone, DAPTModel):
        backbone = backbone.base_model
    check_type("backbone", backbone, nn.Module, "a torch.nn.Module")
    source = check_choice("source", source, SOURCES)
    if point_bert_encoder not in ("momentum", "online"):
        raise ValueError(f"point_bert_encoder must be 'momentum' or 'online', got {point_bert_encoder!r}")
    where, state = _read_state_dict(path_or_state_dict)
    family: str = _detect_source(list(state)) if source == "auto" else source
    prefix = _family_prefix(family, backbone, point_bert_encoder)

    encoder: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        name = key[len(prefix) :] if prefix and key.startswith(prefix) else None if prefix else key
        if name is None:
            unexpected.append(key)
        else:
            encoder[name] = value

    own = backbone.state_dict()
    matches = _match_by_backbone_name(own, ((prefix + name, name, value) for name, value in encoder.items()))
    loaded = matches.loaded
    unexpected += matches.unmatched
    if matches.mismatched:
        raise ValueError(
            f"checkpoint tensors do not match {type(backbone).__name__}'s shapes (is the backbone built with "
            "the checkpoint's widths?): " + _listed(matches.mismatched, "; ")
        )
    _raise_for_bad_values(matches.bad, where)
    if not loaded:
        raise ValueError(
            f"{where}: no tensor of the checkpoint matches {type(backbone).__name__} (read as source={family!r}, "
            f"prefix {prefix!r}); checkpoint keys start with: {sorted({k.split('.')[0] for k in state})[:10]}"
        )
    backbone.load_state_dict(loaded, strict=False)
    _refresh_pretrained_copies(backbone, {strip_wrapper_names(k) for k in loaded})
    if (
        isinstance(path_or_state_dict, (str, os.PathLike))
        and source == "auto"
        and point_bert_encoder == "online"
    ):
        # An adapter saved with this backbone records the file, so load_adapter(DIR) can rebuild it.
        setattr(backbone, PRETRAINED_ATTRIBUTE, os.path.abspath(os.fspath(path_or_state_dict)))
    elif hasattr(backbone, PRETRAINED_ATTRIBUTE):
        # Weights that a rebuild from a file cannot reproduce: no file is recorded (rather than an old one).
        delattr(backbone, PRETRAINED_ATTRIBUTE)
    inserted = _inserted_by_dapt(backbone)  # DAPT's own new tensors are not pre-trained ones
    missing = [
        strip_wrapper_names(k)
        for k in own
        if k not in loaded and k not in inserted and not k.endswith("num_batches_tracked")
    ]
    _logger.info(
        "load_pretrained: read %d tensors as %s; missing (kept as initialised): %s; unexpected (ignored): %s",
        len(loaded), family, missing, unexpected,
    )  # fmt: skip
    result = PretrainedLoadResult(family, missing, unexpected)
    setattr(backbone, LOAD_RESULT_ATTRIBUTE, result)
    return result
