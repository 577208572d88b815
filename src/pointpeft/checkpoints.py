"""Loading checkpoints: official pre-trained backbones, and models released with the DAPT reference."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from pointpeft.backbones import PointMAE
from pointpeft.config import POOL_CHOICES, DAPTConfig
from pointpeft.dapt.model import DAPTModel, wrap_with_dapt

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


def strip_wrapper_names(key: str) -> str:
    """The backbone's own name of a parameter of a wrapped model: every ``.base_layer`` segment removed."""
    return key.replace(".base_layer.", ".").replace("base_layer.", "")


def _reference_to_pointpeft(key: str) -> str:
    if key.startswith(_HEAD_PREFIX):
        return "heads.default.mlp." + key[len(_HEAD_PREFIX) :]
    for pattern, replacement in _REFERENCE_RENAMES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return "base_model." + renamed
    return "base_model." + key


def _match_by_backbone_name(
    own: Mapping[str, torch.Tensor], entries: Iterable[tuple[str, str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Match checkpoint tensors to a model's state dict by backbone name (``.base_layer`` removed).

    Args:
        own: the model's state dict.
        entries: ``(checkpoint key, backbone name, tensor)`` for every checkpoint tensor to place.

    Returns:
        ``(loaded, unmatched, mismatched)``: model key -> tensor for the matches, checkpoint keys with no
        tensor of that name, and a description of every shape mismatch.
    """
    by_backbone_name = {strip_wrapper_names(k): k for k in own}
    loaded: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    mismatched: list[str] = []
    for key, name, value in entries:
        target = by_backbone_name.get(name)
        if target is None:
            unmatched.append(key)
        elif own[target].shape != value.shape:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, model {tuple(own[target].shape)}")
        else:
            loaded[target] = value
    return loaded, unmatched, mismatched


def _read_state_dict(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"path_or_state_dict: no checkpoint file at {os.fspath(source)!r}")
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise TypeError(
            f"path_or_state_dict must be a path or a mapping of tensors, got {type(source).__name__}"
        )
    state = source["base_model"] if "base_model" in source else source
    if not isinstance(state, Mapping) or not state:
        raise ValueError("path_or_state_dict holds no state dict (expected {'base_model': state_dict})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"the checkpoint's state dict has non-tensor entries: {bad[:10]}")
    return {k.replace("module.", ""): v for k, v in state.items()}


def _require(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"not a DAPT reference checkpoint: the key {key!r} is missing")
    return state[key]


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
    names; ``module.`` prefixes are removed. The token width, depth, rank, FFN width, head width and
    number of classes are read from the tensor shapes; the positional embedding is added once before the
    first block, as in the reference. Files are read with ``weights_only=True`` (no pickled code runs).

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
        ValueError: if a checkpoint key is not used, a model tensor is not in the checkpoint, shapes do not
            match, or ``pool`` is missing or inconsistent with the head.
    """
    state = _read_state_dict(path_or_state_dict)
    cls_token = _require(state, "cls_token")
    dim = cls_token.shape[-1]
    depth = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"blocks\.blocks\.(\d+)\.", k))), default=-1
    )
    if depth == 0:
        raise ValueError("not a DAPT reference checkpoint: no 'blocks.blocks.<i>.*' keys")
    rank = _require(state, "blocks.blocks.0.Adapter_MLP.down_proj.weight").shape[0]
    hidden = _require(state, "blocks.blocks.0.mlp.fc1.weight").shape[0]
    encoder_dims = _require(state, "encoder.second_conv.3.weight").shape[0]
    head_in = _require(state, _HEAD_PREFIX + "0.weight")
    head_hidden, head_width = head_in.shape
    last = max(int(m.group(1)) for k in state if (m := re.match(r"cls_head_finetune\.(\d+)\.weight$", k)))
    num_classes = state[f"{_HEAD_PREFIX}{last}.weight"].shape[0]

    parts, remainder = divmod(head_width, dim)
    if remainder or not 1 <= parts <= len(POOL_CHOICES):
        raise ValueError(f"the head's input width {head_width} is not 1-3 times the token width {dim}")
    if pool is None:
        if parts != len(POOL_CHOICES):
            raise ValueError(
                f"the head takes {parts} pooled feature(s) ({head_width} = {parts} x {dim}); pass pool= to say "
                f"which, e.g. pool=('cls', 'prompt') for OBJ_ONLY or pool=('cls', 'patch') for ModelNet40"
            )
        pool = POOL_CHOICES
    config = DAPTConfig(num_classes=num_classes, rank=rank, pool=tuple(pool), head_hidden=head_hidden)
    if len(config.pool) != parts:
        raise ValueError(
            f"pool={tuple(pool)} gives {len(config.pool)} feature(s) but the checkpoint's head takes {parts} "
            f"({head_width} = {parts} x {dim})"
        )

    backbone = PointMAE(
        trans_dim=dim,
        depth=depth,
        num_heads=num_heads,
        num_group=num_group,
        group_size=group_size,
        encoder_dims=encoder_dims,
        pos_mode="once",
        mlp_ratio=hidden / dim,
        qkv_bias="blocks.blocks.0.attn.qkv.bias" in state,
    )
    model = wrap_with_dapt(backbone, config)
    if "prompt" not in config.pool:
        # The reference's last block makes a prompt that nothing reads when the head does not pool prompts;
        # pointpeft does not create it (its TFTS would never get a gradient), so its two tensors are unused.
        state = {k: v for k, v in state.items() if not k.startswith(f"blocks.blocks.{depth - 1}.tfts_")
                 or not k.endswith("_3")}  # fmt: skip
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone_copies.")}
    loaded, unmatched, mismatched = _match_by_backbone_name(
        own, ((key, _reference_to_pointpeft(key), value) for key, value in state.items())
    )
    missing = [k for k in own if k not in loaded and not k.endswith("num_batches_tracked")]
    if unmatched:
        raise ValueError(f"{len(unmatched)} checkpoint key(s) match no tensor of the DAPT model: {unmatched}")
    if mismatched:
        raise ValueError("checkpoint tensors do not match the model's shapes: " + "; ".join(mismatched))
    if missing:
        raise ValueError(f"{len(missing)} tensor(s) of the DAPT model are not in the checkpoint: {missing}")
    model.load_state_dict(loaded, strict=False)
    _refresh_pretrained_copies(
        model.base_model, {strip_wrapper_names(k)[len("base_model.") :] for k in loaded}
    )
    return model.eval()


_logger = logging.getLogger("pointpeft")

PretrainedSource = Literal["auto", "point_mae", "act", "point_bert", "recon", "plain"]
# Prefix of the encoder inside each family's pre-training checkpoint.
_ENCODER_PREFIXES = {"point_mae": "MAE_encoder.", "recon": "MAE_encoder.", "act": "ACT_encoder."}
# ReCon's second stream (global queries with cross-attention) and its image/text tokens: not part of the
# patch-stream encoder that DAPT adapts.
_RECON_EXTRA = re.compile(r"(_contrast\.|^(img|text)_(token|pos)$)")


class PretrainedLoadResult(NamedTuple):
    """What :func:`load_pretrained` did.

    Attributes:
        source: the checkpoint family read (``"point_mae"``, ``"act"``, ``"point_bert"``, ``"recon"`` or
            ``"plain"``).
        missing_keys: backbone tensors the checkpoint did not provide (they keep their current values;
            e.g. ``cls_token``/``cls_pos`` for Point-MAE, whose pre-training has no CLS token).
        unexpected_keys: checkpoint tensors the backbone has no place for (decoders, masks, heads, ...).
    """

    source: str
    missing_keys: list[str]
    unexpected_keys: list[str]


def _refresh_pretrained_copies(backbone: nn.Module, loaded: set[str]) -> None:
    """After loading into a wrapped backbone, make its kept pre-trained values (used by
    ``disable_adapter`` and by new adapters) those just loaded. ``loaded`` holds backbone names."""
    from pointpeft.dapt.owned import get_tensor
    from pointpeft.dapt.tfts import _Wrapper

    wrapper = next((m for m in backbone.modules() if isinstance(m, _Wrapper)), None)
    copies = None if wrapper is None else wrapper._stash.owned
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
    if any(k.startswith("MAE_encoder.") for k in keys):
        encoder = [k[len("MAE_encoder.") :] for k in keys if k.startswith("MAE_encoder.")]
        return "recon" if any(_RECON_EXTRA.search(k) for k in encoder) else "point_mae"
    return "plain"


def load_pretrained(
    backbone: nn.Module,
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    source: PretrainedSource = "auto",
    point_bert_encoder: Literal["momentum", "online"] = "momentum",
) -> PretrainedLoadResult:
    """Load an official pre-training checkpoint into a backbone, by parameter name.

    The encoder's tensors are taken from under the family's prefix: ``MAE_encoder.`` (Point-MAE, ReCon),
    ``ACT_encoder.`` (ACT), ``transformer_k.`` (Point-BERT's momentum encoder, which the DAPT reference
    uses) or ``transformer_q.`` (``point_bert_encoder="online"``); ``module.`` is removed everywhere. For
    ReCon, the ``*_contrast`` stream and the image/text tokens are left out. The backbone may already be
    wrapped by :func:`pointpeft.wrap_with_dapt` (its ``.base_layer`` names are matched; a
    :class:`~pointpeft.DAPTModel` may be passed for its backbone); the values loaded become the
    pre-trained values that ``disable_adapter`` and new adapters start from. Files are read
    with ``weights_only=True``: no pickled code runs.

    Args:
        backbone: the model to fill, e.g. :class:`pointpeft.backbones.PointMAE`.
        path_or_state_dict: a checkpoint file (``{"base_model": state_dict}`` or a state dict) or the
            loaded mapping.
        source: the checkpoint family; ``"auto"`` tells it from the key prefixes, ``"plain"`` takes the
            keys as backbone names.
        point_bert_encoder: which of Point-BERT's two encoders to read.

    Returns:
        a :class:`PretrainedLoadResult` (also logged at INFO level on the ``pointpeft`` logger).

    Raises:
        ValueError: if a checkpoint tensor has a different shape than the backbone's tensor of that name
            (all such keys are listed), if nothing in the checkpoint matches the backbone, or if ``source``
            names an unknown family.
        FileNotFoundError / TypeError: for a missing file or an object that is not a state dict.
    """
    if isinstance(backbone, DAPTModel):
        backbone = backbone.base_model
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    sources = ("auto", "point_mae", "act", "point_bert", "recon", "plain")
    if source not in sources:
        raise ValueError(f"source must be one of {sources}, got {source!r}")
    if point_bert_encoder not in ("momentum", "online"):
        raise ValueError(f"point_bert_encoder must be 'momentum' or 'online', got {point_bert_encoder!r}")
    state = _read_state_dict(path_or_state_dict)
    if source == "auto":
        source = _detect_source(list(state))
    if source == "point_bert":
        prefix = "transformer_k." if point_bert_encoder == "momentum" else "transformer_q."
    else:
        prefix = _ENCODER_PREFIXES.get(source, "")

    encoder: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        name = key[len(prefix) :] if prefix and key.startswith(prefix) else None if prefix else key
        if name is None or (source == "recon" and _RECON_EXTRA.search(name)):
            unexpected.append(key)
        else:
            encoder[name] = value

    own = backbone.state_dict()
    loaded, unmatched, mismatched = _match_by_backbone_name(
        own, ((prefix + name, name, value) for name, value in encoder.items())
    )
    unexpected += unmatched
    if mismatched:
        raise ValueError(
            f"checkpoint tensors do not match {type(backbone).__name__}'s shapes (is the backbone built with "
            "the checkpoint's widths?): " + "; ".join(mismatched)
        )
    if not loaded:
        raise ValueError(
            f"no tensor of the checkpoint matches {type(backbone).__name__} (read as source={source!r}, "
            f"prefix {prefix!r}); checkpoint keys start with: {sorted({k.split('.')[0] for k in state})[:10]}"
        )
    backbone.load_state_dict(loaded, strict=False)
    _refresh_pretrained_copies(backbone, {strip_wrapper_names(k) for k in loaded})
    inserted = _inserted_by_dapt(backbone)  # DAPT's own new tensors are not pre-trained ones
    missing = [
        strip_wrapper_names(k)
        for k in own
        if k not in loaded and k not in inserted and not k.endswith("num_batches_tracked")
    ]
    _logger.info(
        "load_pretrained: read %d tensors as %s; missing (kept as initialised): %s; unexpected (ignored): %s",
        len(loaded), source, missing, unexpected,
    )  # fmt: skip
    return PretrainedLoadResult(source, missing, unexpected)
