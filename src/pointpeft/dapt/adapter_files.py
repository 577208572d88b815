"""Adapter-only files in the peft layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

An adapter file holds only what training changed: the DAPT modules (TFTS, Dynamic Adapters, prompts),
the head, the trained CLS token / positional embedding, and, when the adapter lets them update, the
running statistics of the backbone's BatchNorm layers. The frozen backbone is not saved; rebuild it (and
load its pre-trained weights) before loading an adapter. Safetensors files hold tensors only, so loading
runs no pickled code.

Both files are written atomically (beside, fsynced, renamed: :mod:`pointpeft.atomic_write`). Two files
cannot be renamed at once, so the weights file is the commit point: it carries a copy of the whole config
in its metadata and is written first. A save killed between the two renames leaves the new weights beside
the old config; loading sees that the two disagree and uses the copy inside the weights (with a warning),
so a folder always loads as the old adapter or the new one, whole.

The config also records a signature of the backbone the adapter was trained on (the names and shapes of
its parameters and buffers, the token width, the number of blocks and the root module's int/str
settings such as ``num_group``), which loading compares with the backbone it is given.

Where it is known, the config also records how to rebuild the backbone (the ``backbone`` entry:
:func:`backbone_record`) and the data the adapter was trained with (the ``data`` entry, written by
``pointpeft train``); folders without them (older ones, or backbones pointpeft cannot describe) still
load into a backbone passed by the caller.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from pointpeft.atomic_write import atomic_write_bytes, atomic_write_text
from pointpeft.checks import check_adapter_name
from pointpeft.config import DEFAULT_ADAPTER
from pointpeft.dapt.backbone_state import backbone_tensors, own_parameter_paths, token_width
from pointpeft.dapt.layout import BackboneLayout
from pointpeft.dapt.tfts import AdapterModules
from pointpeft.methods.plan import METHOD_CONFIGS, MethodConfig

if TYPE_CHECKING:  # annotations only: the model calls into this module, not the other way round
    from pointpeft.dapt.model import DAPTModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: Metadata key of the weights file that holds a copy of ``adapter_config.json``.
CONFIG_METADATA_KEY = "pointpeft_adapter_config"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_SHOWN = 8  # how many names an error lists
#: The attribute in which :func:`pointpeft.train.build_backbone` leaves, on the backbone it builds, the
#: ``backbone`` entry that describes it (see :func:`backbone_record`).
BACKBONE_RECORD_ATTRIBUTE = "pointpeft_backbone_record"
#: The attribute :func:`pointpeft.load_pretrained` sets on a backbone it loads a checkpoint file into: the
#: file's absolute path, which the backbone's record then names as its ``pretrained`` checkpoint.
PRETRAINED_ATTRIBUTE = "pointpeft_pretrained"
#: The keys of a ``backbone`` entry besides ``builtin`` / ``factory`` (each may be null except ``args``).
BACKBONE_RECORD_KEYS = ("args", "pretrained", "layout", "init", "seed", "weights_sha256")


def _version() -> str:
    from pointpeft.version import __version__

    return __version__


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def adapter_state_dict(model: DAPTModel, adapter_name: str) -> dict[str, torch.Tensor]:
    """The tensors of one adapter, keyed by their name in the model with the adapter name left out
    (``base_model.blocks.blocks.0.base_layer.norm1.tfts.gamma``, ``head.mlp.0.weight``,
    ``base_model.cls_token``). The values are the live tensors (not copies)."""
    if adapter_name not in model.configs:
        raise ValueError(f"no adapter named {adapter_name!r}; adapters: {model.adapters}")
    state: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, AdapterModules) and adapter_name in module:
            for key, value in module[adapter_name].state_dict(keep_vars=True).items():
                state[f"{prefix}.{key}"] = value
    for key, value in model.heads[adapter_name].state_dict(keep_vars=True).items():
        state[f"head.{key}"] = value
    copies, active = model.backbone_copies, model.active_adapter
    paths = copies.token_paths + model.trained_backbone_parameters(adapter_name)
    paths += copies.buffer_paths if model.configs[adapter_name].update_bn_stats else ()
    for path in paths:
        state[f"base_model.{path}"] = copies.tensor(model.base_model, path, adapter_name, active)
    return state


def _folder(directory: Any) -> str:
    if not isinstance(directory, (str, os.PathLike)) or not isinstance(os.fspath(directory), str):
        raise TypeError(f"directory must be a str or os.PathLike folder path, got {type(directory).__name__}")
    return os.fspath(directory)


# ------------------------------------------------------------------------------------ backbone signature
def _block_count(backbone: nn.Module, layout: BackboneLayout) -> dict[str, Any]:
    """The container that holds the first block and how many modules it holds (None where it is not a
    ModuleList / Sequential / ModuleDict, or missing)."""
    container = layout.blocks[0].rpartition(".")[0]
    try:
        module = backbone.get_submodule(container) if container else backbone
    except AttributeError:
        return {"container": container, "count": None}
    listed = isinstance(module, (nn.ModuleList, nn.Sequential, nn.ModuleDict))
    return {"container": container, "count": len(module._modules) if listed else None}


def _settings(backbone: nn.Module) -> dict[str, Any]:
    """The root module's public int and str attributes (``num_group``, ``group_size``, ``trans_dim``,
    ``pos_mode`` ...): settings that change what the backbone computes without changing any shape."""
    return {
        k: v
        for k, v in sorted(vars(backbone).items())
        if not k.startswith("_") and k != "training" and type(v) in (int, str)
    }


def _signature(backbone: nn.Module, layout: BackboneLayout, width: int | None) -> dict[str, Any]:
    return {
        "blocks": _block_count(backbone, layout),
        "width": width,
        "settings": _settings(backbone),
        "tensors": {name: list(t.shape) for name, t in backbone_tensors(backbone).items()},
    }


def backbone_signature(model: DAPTModel) -> dict[str, Any]:
    """What :func:`pointpeft.save_adapter` records of ``model``'s backbone, as it was before wrapping: the number of
    blocks in the container of the first block, the token width, the root module's int/str settings
    (e.g. ``num_group``, ``group_size``) and the name and shape of every parameter and buffer."""
    return _signature(model.base_model, model.layout, model.dim)


# ------------------------------------------------------------------------------------ backbone record
def frozen_weights_sha256(model: DAPTModel) -> str:
    """SHA-256 (hex) of the backbone's frozen parameters as they are (names, dtypes, shapes and bytes, by
    name), leaving out the CLS token and position and all buffers (running statistics change in training).
    The parameters some adapter trains (BitFit's biases, say) count at their pre-trained values, whichever
    adapter is active: the digest does not depend on the adapters.

    Two backbones with the same digest compute the same function under the same adapter: a rebuilt
    backbone is checked with it against the one the adapter was trained on."""
    copies = model.backbone_copies
    skipped = set(copies.token_paths)
    tensors = backbone_tensors(model.base_model, buffers=False)
    names = own_parameter_paths(model.base_model)
    for path in copies.trained_paths:
        tensors[names[path]] = copies.base_value(path)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        if name in skipped:
            continue
        tensor = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensors[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def backbone_record(model: DAPTModel) -> dict[str, Any] | None:
    """The ``backbone`` entry of ``model``'s adapter files: how to rebuild its backbone, or None where it is
    not known.

    It is ``{"builtin": name, ...}`` (a name of :data:`pointpeft.backbones.BACKBONES`) or
    ``{"factory": "package.module:function", ...}``, with ``"args"`` (the keyword arguments it is
    called with), ``"pretrained"`` (the checkpoint loaded into it, or null), ``"layout"`` (the preset
    name, or null), ``"init"`` and ``"seed"`` (how its random weights were drawn, null where not known)
    and ``"weights_sha256"`` (:func:`frozen_weights_sha256`, which a rebuilt backbone must match).

    A backbone built by :func:`pointpeft.train.build_backbone` (the training CLI) carries its full
    record; a built-in backbone built by hand records its constructor arguments (its ``config``
    attribute) and the checkpoint file :func:`pointpeft.load_pretrained` loaded into it, so a rebuild
    matches it where that checkpoint gave it all its frozen weights, or where it was not pre-trained and was
    drawn from the same random state (else loading refuses the rebuilt backbone: ``weights_sha256``)."""
    from pointpeft.backbones import BACKBONES

    backbone = model.base_model
    recorded = getattr(backbone, BACKBONE_RECORD_ATTRIBUTE, None)
    if isinstance(recorded, Mapping):
        record = copy.deepcopy(dict(recorded))
    else:
        names = [name for name, cls in BACKBONES.items() if type(backbone) is cls]
        args = getattr(backbone, "config", None)
        if not names or not isinstance(args, Mapping):
            return None
        pretrained = getattr(backbone, PRETRAINED_ATTRIBUTE, None)
        record = {"builtin": names[0], "args": copy.deepcopy(dict(args)), "pretrained": pretrained}
        record.update({"layout": model.layout.preset, "init": None, "seed": None})
    record["weights_sha256"] = frozen_weights_sha256(model)
    return record


def _check_backbone_record(value: Any, path: str) -> None:
    problem = None
    if not isinstance(value, dict):
        problem = f"must be an object, got {type(value).__name__}"
    elif ("builtin" in value) == ("factory" in value):
        problem = "must have exactly one of 'builtin' and 'factory'"
    elif not isinstance(value.get("builtin", value.get("factory")), str):
        problem = "its 'builtin' / 'factory' must be a string"
    elif not isinstance(value.get("args"), dict):
        problem = "its 'args' must be an object"
    else:
        kinds = {"pretrained": str, "layout": str, "init": str, "seed": int, "weights_sha256": str}
        for key, kind in kinds.items():
            item = value.get(key)
            if item is not None and (type(item) is not kind):
                problem = f"its {key!r} must be a {kind.__name__} or null, got {item!r}"
                break
    if problem is not None:
        raise ValueError(f"{path}: the 'backbone' entry is malformed: {problem}")


def plain_width(backbone: nn.Module, layout: BackboneLayout) -> int | None:
    try:
        return token_width(backbone.get_submodule(layout.blocks[0]), layout)
    except (AttributeError, ValueError):
        return None


def _names(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def _signature_differences(saved: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """One line per difference, ``what: saved X, this backbone Y``."""
    lines = []
    if saved["blocks"] != here["blocks"]:
        s, h = saved["blocks"], here["blocks"]
        lines.append(
            f"blocks in {s['container'] or '<root>'!r}: saved {s['count']}, this backbone "
            + (f"{h['count']}" if h["container"] == s["container"] else f"{h['count']} in {h['container']!r}")
        )
    if saved["width"] is not None and saved["width"] != here["width"]:
        lines.append(f"token width: saved {saved['width']}, this backbone {here['width']}")
    for key in sorted(set(saved["settings"]) & set(here["settings"])):
        if saved["settings"][key] != here["settings"][key]:
            lines.append(f"{key}: saved {saved['settings'][key]!r}, this backbone {here['settings'][key]!r}")
    old, new = saved["tensors"], here["tensors"]
    only_saved = [k for k in old if k not in new]
    only_here = [k for k in new if k not in old]
    if only_saved:
        lines.append(f"{len(only_saved)} parameter(s)/buffer(s) this backbone lacks: {_names(only_saved)}")
    if only_here:
        lines.append(
            f"{len(only_here)} parameter(s)/buffer(s) the saved backbone lacked: {_names(only_here)}"
        )
    shapes = [
        f"{k} saved {tuple(old[k])}, here {tuple(new[k])}" for k in old if k in new and old[k] != new[k]
    ]
    if shapes:
        lines.append(f"tensor shapes do not match for {len(shapes)}: " + "; ".join(shapes[:_SHOWN]))
    return lines


def check_signature(
    saved: dict[str, Any] | None, backbone: nn.Module, layout: BackboneLayout, width: int | None, source: str
) -> None:
    if saved is None:  # written by an older pointpeft
        return
    differences = _signature_differences(saved, _signature(backbone, layout, width))
    if differences:
        raise ValueError(
            f"{source} was saved for another backbone than this {type(backbone).__name__}; it differs in:\n  "
            + "\n  ".join(differences)
            + "\nBuild the backbone with the settings the adapter was trained with (and load its pre-trained "
            "weights) before loading the adapter."
        )


# ---------------------------------------------------------------------------------------------- saving
def _check_values(key: str, tensor: torch.Tensor, where: str) -> None:
    """Finite floating values, and a non-negative BatchNorm variance."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(
            f"{where}: tensor {key!r} holds {bad} NaN or inf value(s) of {tensor.numel()}; an adapter whose "
            "weights diverged computes nothing useful"
        )
    if key.endswith("running_var") and bool((tensor < 0).any()):
        raise ValueError(f"{where}: tensor {key!r} (a BatchNorm variance) holds negative values")


def _adapter_names(dapt: DAPTModel, adapter_names: Any) -> list[str]:
    if adapter_names is None:
        return list(dapt.adapters)
    if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)):
        raise TypeError(
            f"adapter_names must be a list of adapter names or None (all), got {adapter_names!r}; "
            f"for one adapter pass [{adapter_names!r}]"
        )
    if not adapter_names:
        raise ValueError(f"adapter_names must name at least one adapter; adapters: {dapt.adapters}")
    for name in adapter_names:
        if not isinstance(name, str) or name not in dapt.configs:
            raise ValueError(f"adapter_names: no adapter named {name!r}; adapters: {dapt.adapters}")
    return list(dict.fromkeys(adapter_names))


def _serialize(
    dapt: DAPTModel, name: str, data: Mapping[str, Any] | None, record: dict[str, Any] | None
) -> tuple[bytes, str]:
    """``(weights file bytes, config JSON text)`` of adapter ``name``; the weights carry the JSON."""
    from safetensors.torch import save

    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter_state_dict(dapt, name).items()
    }
    for key, tensor in tensors.items():
        _check_values(key, tensor, f"adapter {name!r} not saved (nothing was written)")
    config = {
        "peft_type": type(dapt.configs[name]).PEFT_TYPE,
        "pointpeft_version": _version(),
        "base_model_class": _class_name(dapt.base_model),
        "adapter_name": name,
        "config": dapt.configs[name].to_dict(),
        "layout": dapt.layout.to_dict(),
        "backbone_signature": backbone_signature(dapt),
    }
    if record is not None:
        config["backbone"] = record
    if data is not None:
        config["data"] = dict(data)
    text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return save(tensors, metadata={"format": "pt", CONFIG_METADATA_KEY: text}), text


def write_adapters(
    dapt: DAPTModel,
    directory: str | os.PathLike[str],
    adapter_names: list[str] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
) -> None:
    """:func:`pointpeft.save_adapter` for a :class:`~pointpeft.DAPTModel` that is not inside a DDP or
    compile wrapper (its arguments, files and errors): the config also records the backbone's signature
    (:func:`backbone_signature`) and, where known, how to rebuild it (:func:`backbone_record`). Each file is
    replaced atomically, the weights (which carry a copy of the config) first (see the module docstring);
    everything is checked before anything is written.
    """
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping of data settings or None, got {type(data).__name__}")
    root = _folder(directory)
    names = _adapter_names(dapt, adapter_names)
    folders = [root if name == DEFAULT_ADAPTER else os.path.join(root, name) for name in names]
    for folder in {root, *folders}:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"directory: {folder!r} exists and is not a folder; pass a folder path")
    record = backbone_record(dapt)
    payloads = [_serialize(dapt, name, data, record) for name in names]
    for folder, (weights, text) in zip(folders, payloads, strict=True):
        os.makedirs(folder, exist_ok=True)
        atomic_write_bytes(os.path.join(folder, WEIGHTS_NAME), weights)  # the commit point
        atomic_write_text(os.path.join(folder, CONFIG_NAME), text)


# --------------------------------------------------------------------------------------------- reading
class AdapterFile(NamedTuple):
    """An adapter folder as read and checked by :func:`read_adapter`.

    Attributes:
        config: the adapter config (the JSON object of ``adapter_config.json``).
        config_source: the file the config was taken from.
        tensors: the weights, by name.
        weights_source: the weights file.
    """

    config: dict[str, Any]
    config_source: str
    tensors: dict[str, torch.Tensor]
    weights_source: str


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in an adapter config")


def _parse_config(text: str, path: str) -> dict[str, Any]:
    """The config object in ``text``, checked to be a pointpeft adapter config (of a known method)."""
    try:
        config = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    known = [cls.PEFT_TYPE for cls in METHOD_CONFIGS]
    if not isinstance(config, dict) or config.get("peft_type") not in known:
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"{path}: not a pointpeft adapter config (peft_type {got!r}, expected one of {known}; "
            "the file must hold a JSON object written by pointpeft.save_adapter)"
        )
    for key in ("config", "layout"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"{path}: the {key!r} entry is missing or not an object")
    signature = config.get("backbone_signature")
    if signature is not None and not _is_signature(signature):
        raise ValueError(f"{path}: the 'backbone_signature' entry is malformed")
    if "backbone" in config:
        _check_backbone_record(config["backbone"], path)
    if "data" in config and not isinstance(config["data"], dict):
        raise ValueError(f"{path}: the 'data' entry must be an object, got {type(config['data']).__name__}")
    return config


def _is_signature(value: Any) -> bool:
    if not isinstance(value, dict) or set(value) != {"blocks", "width", "settings", "tensors"}:
        return False
    blocks, width, settings, tensors = (value[k] for k in ("blocks", "width", "settings", "tensors"))
    return (
        isinstance(blocks, dict)
        and isinstance(blocks.get("container"), str)
        and (blocks.get("count") is None or type(blocks.get("count")) is int)
        and (width is None or type(width) is int)
        and isinstance(settings, dict)
        and isinstance(tensors, dict)
        and all(isinstance(s, list) and all(type(d) is int for d in s) for s in tensors.values())
    )


def _read_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    for key, tensor in tensors.items():
        if tensor.dtype not in _FLOAT_DTYPES + _INT_DTYPES:
            raise ValueError(
                f"{path}: tensor {key!r} has dtype {tensor.dtype}; adapter tensors are float16, bfloat16, "
                "float32 or float64 (integer only for BatchNorm's num_batches_tracked)"
            )
        _check_values(key, tensor, path)
    return tensors, metadata


def read_adapter(directory: str | os.PathLike[str]) -> AdapterFile:
    """Read and check an adapter folder written by :func:`pointpeft.save_adapter`, without touching any model.

    The config is taken from ``adapter_config.json``; where the copy inside the weights file disagrees
    with it (a save killed between the two renames, or a hand edit), the copy inside the weights is used,
    with a warning naming both files. A folder with the weights file only (a first save killed before
    the config was written) loads from that copy. Files of older versions without the copy load from
    the JSON.

    Raises:
        TypeError: if ``directory`` is not a path. FileNotFoundError: if a file is missing.
        ValueError: if a file is malformed, or a tensor is not of a float (or, for counters, integer)
            dtype or holds NaN or inf values (the message names the file and the tensor).
    """
    folder = _folder(directory)
    config_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(weights_path):
        missing = weights_path if os.path.isfile(config_path) else config_path
        raise FileNotFoundError(
            f"directory: no adapter file {missing!r} (expected {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    tensors, metadata = _read_weights(weights_path)
    embedded = metadata.get(CONFIG_METADATA_KEY)
    inner = None if embedded is None else _parse_config(embedded, f"{weights_path} (its config copy)")
    if not os.path.isfile(config_path):
        if inner is None:
            raise FileNotFoundError(
                f"directory: no adapter file {config_path!r} (expected {CONFIG_NAME} and {WEIGHTS_NAME})"
            )
        warnings.warn(
            f"{config_path} is missing; using the config stored in {weights_path}", UserWarning, stacklevel=3
        )
        return AdapterFile(inner, weights_path, tensors, weights_path)
    try:
        with open(config_path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"{config_path}: not a UTF-8 text file ({error})") from None
    config = _parse_config(text, config_path)
    if inner is not None and inner != config:
        warnings.warn(
            f"{config_path} disagrees with the config stored in {weights_path} (a save interrupted between "
            "the two files, or an edit); using the one stored with the weights",
            UserWarning,
            stacklevel=3,
        )
        return AdapterFile(inner, weights_path, tensors, weights_path)
    return AdapterFile(config, config_path, tensors, weights_path)


def parse_adapter(file: AdapterFile) -> tuple[MethodConfig, BackboneLayout]:
    """The adapter's config (of the class its ``peft_type`` names) and layout; errors name the file."""
    config_class = next(cls for cls in METHOD_CONFIGS if cls.PEFT_TYPE == file.config["peft_type"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = config_class.from_dict(file.config["config"])
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{file.config_source}: the 'config' entry is not a valid {config_class.__name__}: {error}"
            ) from None
    for warning in caught:
        warnings.warn(f"{file.config_source}: {warning.message}", UserWarning, stacklevel=3)
    try:
        layout = BackboneLayout.from_dict(file.config["layout"])
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{file.config_source}: the 'layout' entry is not a valid BackboneLayout: {error}"
        ) from None
    return config, layout


def check_backbone_class(config: dict[str, Any], backbone: nn.Module, source: str) -> None:
    saved = config.get("base_model_class")
    if saved is not None and saved != _class_name(backbone):
        warnings.warn(
            f"{source} was saved for a {saved}, loading it into a {_class_name(backbone)}", stacklevel=3
        )


def load_tensors(model: DAPTModel, adapter_name: str, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Check every tensor against the adapter's (names, shapes, dtype kinds, values after the cast), then
    copy them; nothing is copied unless all fit."""
    targets = adapter_state_dict(model, adapter_name)
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit the model: {len(missing)} tensor(s) missing {missing[:_SHOWN]}, "
            f"{len(unexpected)} unexpected {unexpected[:_SHOWN]}"
        )
    mismatched = [
        f"{k}: file {tuple(v.shape)}, model {tuple(targets[k].shape)}"
        for k, v in tensors.items()
        if v.shape != targets[k].shape
    ]
    if mismatched:
        raise ValueError(f"{source}: tensor shapes do not match the model: " + "; ".join(mismatched[:_SHOWN]))
    cast = {}
    for key, value in tensors.items():
        target = targets[key]
        if target.is_floating_point() != value.is_floating_point():
            kind = "a floating-point" if target.is_floating_point() else "an integer"
            raise ValueError(
                f"{source}: tensor {key!r} must be {kind} tensor like the model's ({target.dtype}), "
                f"got {value.dtype}"
            )
        cast[key] = value.to(target.dtype)
        if value.dtype != target.dtype and not bool(torch.isfinite(cast[key]).all()):
            raise ValueError(f"{source}: tensor {key!r} overflows the model's {target.dtype}")
    with torch.no_grad():
        for key, value in cast.items():
            targets[key].copy_(value)


def _layout_differences(saved: BackboneLayout, model: BackboneLayout) -> list[str]:
    a, b = saved.to_dict(), model.to_dict()
    return [f"{k}: saved {a[k]!r}, model {b[k]!r}" for k in a if k != "preset" and a[k] != b[k]]


def add_adapter_from(dapt: DAPTModel, directory: str | os.PathLike[str], adapter_name: str) -> None:
    """Add the adapter saved in ``directory`` to ``model`` under ``adapter_name`` (not activated).

    Everything is checked (as by :func:`pointpeft.load_adapter`) before the adapter is added; should its tensors
    then not fit, it is removed again, so after any failure the model is as it was.

    Raises:
        ValueError: if the name is taken, the adapter was saved for a different layout or backbone, or its
            tensors do not fit.
    """
    check_adapter_name(adapter_name)
    if adapter_name in dapt.configs:
        raise ValueError(
            f"adapter_name: an adapter named {adapter_name!r} exists already; adapters: {dapt.adapters}"
        )
    file = read_adapter(directory)
    config, layout = parse_adapter(file)
    source = file.config_source
    check_backbone_class(file.config, dapt.base_model, source)
    if layout.blocks != dapt.layout.blocks or layout.block != dapt.layout.block:
        raise ValueError(
            f"{source} was saved for other blocks ({layout.blocks}) than the model's ({dapt.layout.blocks})"
        )
    differences = _layout_differences(layout, dapt.layout)
    if differences:
        raise ValueError(f"{source} was saved for another layout than the model's: " + "; ".join(differences))
    check_signature(file.config.get("backbone_signature"), dapt.base_model, dapt.layout, dapt.dim, source)
    dapt.add_adapter(adapter_name, config)
    try:
        load_tensors(dapt, adapter_name, file.tensors, file.weights_source)
    except BaseException:
        dapt.delete_adapter(adapter_name)
        raise
