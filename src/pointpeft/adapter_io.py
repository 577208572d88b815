"""Adapter-only files in the peft layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

An adapter file holds only what training changed: the DAPT modules (TFTS, Dynamic Adapters, prompts),
the head, the trained CLS token / positional embedding, and, when the adapter lets them update, the
running statistics of the backbone's BatchNorm layers. The frozen backbone is not saved; rebuild it (and
load its pre-trained weights) before loading an adapter. Safetensors files hold tensors only, so loading
runs no pickled code.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
from torch import nn

from pointpeft.config import DAPTConfig
from pointpeft.dapt.layout import BackboneLayout
from pointpeft.dapt.model import DEFAULT_ADAPTER, DAPTModel, wrap_with_dapt
from pointpeft.dapt.tfts import AdapterModules

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PEFT_TYPE = "DAPT"


def _version() -> str:
    from pointpeft import __version__

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
    paths = copies.token_paths + (copies.buffer_paths if model.configs[adapter_name].update_bn_stats else ())
    for path in paths:
        state[f"base_model.{path}"] = copies.tensor(model.base_model, path, adapter_name, active)
    return state


def _unwrap(model: Any) -> DAPTModel:
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    if not isinstance(inner, DAPTModel):
        raise TypeError(f"model must be a pointpeft.DAPTModel, got {type(model).__name__}")
    return inner


def save_adapter(
    model: DAPTModel, directory: str | os.PathLike[str], adapter_names: list[str] | None = None
) -> None:
    """Write adapters in the peft layout: the ``"default"`` adapter in ``directory``, any other in
    ``directory/<name>/``, each as ``adapter_config.json`` and ``adapter_model.safetensors``.

    The config records the adapter's :class:`~pointpeft.DAPTConfig`, the resolved
    :class:`~pointpeft.BackboneLayout` (block paths included), the backbone class and the pointpeft
    version. A model inside ``DistributedDataParallel`` or ``torch.compile`` is unwrapped.

    Args:
        model: the :class:`~pointpeft.DAPTModel`.
        directory: the folder to write (created if needed).
        adapter_names: which adapters; all when None.
    """
    from safetensors.torch import save_file

    dapt = _unwrap(model)
    names = list(dapt.adapters) if adapter_names is None else list(adapter_names)
    for name in names:
        if name not in dapt.configs:
            raise ValueError(f"no adapter named {name!r}; adapters: {dapt.adapters}")
    for name in names:
        folder = os.fspath(directory) if name == DEFAULT_ADAPTER else os.path.join(os.fspath(directory), name)
        os.makedirs(folder, exist_ok=True)
        tensors = {
            k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter_state_dict(dapt, name).items()
        }
        save_file(tensors, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
        config = {
            "peft_type": _PEFT_TYPE,
            "pointpeft_version": _version(),
            "base_model_class": _class_name(dapt.base_model),
            "adapter_name": name,
            "config": dapt.configs[name].to_dict(),
            "layout": dapt.layout.to_dict(),
        }
        with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")


def _read(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = os.fspath(directory)
    config_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"directory: no adapter file {path!r} (expected {CONFIG_NAME} and {WEIGHTS_NAME})"
            )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("peft_type") != _PEFT_TYPE:
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"{config_path}: not a pointpeft DAPT adapter config (peft_type {got!r}, expected 'DAPT')"
        )
    for key in ("config", "layout"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"{config_path}: the {key!r} entry is missing or not an object")
    try:
        tensors = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({error})") from None
    return config, tensors


def _load_tensors(model: DAPTModel, adapter_name: str, tensors: dict[str, torch.Tensor], source: str) -> None:
    targets = adapter_state_dict(model, adapter_name)
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit the model: {len(missing)} tensor(s) missing {missing[:8]}, "
            f"{len(unexpected)} unexpected {unexpected[:8]}"
        )
    mismatched = [
        f"{k}: file {tuple(v.shape)}, model {tuple(targets[k].shape)}"
        for k, v in tensors.items()
        if v.shape != targets[k].shape
    ]
    if mismatched:
        raise ValueError(f"{source}: tensor shapes do not match the model: " + "; ".join(mismatched[:8]))
    with torch.no_grad():
        for key, value in tensors.items():
            targets[key].copy_(value)


def _check_backbone(config: dict[str, Any], backbone: nn.Module, source: str) -> None:
    saved = config.get("base_model_class")
    if saved is not None and saved != _class_name(backbone):
        warnings.warn(
            f"{source} was saved for a {saved}, loading it into a {_class_name(backbone)}", stacklevel=3
        )


def load_adapter(
    backbone: nn.Module, directory: str | os.PathLike[str], adapter_name: str = DEFAULT_ADAPTER
) -> DAPTModel:
    """Rebuild a DAPT model from a backbone and a saved adapter folder.

    The backbone must be built as when the adapter was saved, with its pre-trained weights loaded (the
    frozen weights are not in the adapter). The layout saved with the adapter is used, so the block paths
    must exist in ``backbone``. The result computes the same logits as the saved model; it is in the
    backbone's train/eval mode, with the adapter's parameters trainable (call ``.eval()`` to predict).

    Args:
        backbone: the plain (not yet wrapped) backbone.
        directory: a folder written by :func:`save_adapter` (``adapter_config.json`` +
            ``adapter_model.safetensors``).
        adapter_name: the name the adapter gets in the returned model.

    Raises:
        FileNotFoundError: if a file is missing. ValueError: if a file is malformed, or its tensors do not
            fit the backbone (every missing, unexpected or mis-shaped tensor is named).
    """
    source = os.fspath(directory)
    config, tensors = _read(directory)
    _check_backbone(config, backbone, source)
    dapt_config = DAPTConfig.from_dict(config["config"])
    layout = BackboneLayout.from_dict(config["layout"])
    model = wrap_with_dapt(backbone, dapt_config, layout=layout, adapter_name=adapter_name)
    _load_tensors(model, adapter_name, tensors, source)
    return model


def load_adapter_into(model: DAPTModel, directory: str | os.PathLike[str], adapter_name: str) -> None:
    """Add the adapter saved in ``directory`` to ``model`` under ``adapter_name`` (not activated).

    Raises:
        ValueError: if the adapter was saved for a different layout, or its tensors do not fit.
    """
    dapt = _unwrap(model)
    source = os.fspath(directory)
    config, tensors = _read(directory)
    _check_backbone(config, dapt.base_model, source)
    layout = BackboneLayout.from_dict(config["layout"])
    if layout.blocks != dapt.layout.blocks or layout.block != dapt.layout.block:
        raise ValueError(
            f"{source} was saved for other blocks ({layout.blocks}) than the model's ({dapt.layout.blocks})"
        )
    dapt.add_adapter(adapter_name, DAPTConfig.from_dict(config["config"]))
    try:
        _load_tensors(dapt, adapter_name, tensors, source)
    except ValueError:
        dapt.delete_adapter(adapter_name)
        raise
