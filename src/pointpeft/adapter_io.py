"""Saving and loading DAPT adapters: the public entry points.

The file format (``adapter_config.json`` + ``adapter_model.safetensors``, written atomically, checked on
reading) lives in :mod:`pointpeft.dapt.adapter_files`, which knows nothing of how a model is built; this module
adds what needs the model: unwrapping a model from DDP / ``torch.compile`` and wrapping a backbone to load
an adapter into.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from pointpeft.checks import check_adapter_name, check_type
from pointpeft.config import DEFAULT_ADAPTER
from pointpeft.dapt.adapter_files import adapter_state_dict as dapt_adapter_state_dict
from pointpeft.dapt.adapter_files import (
    add_adapter_from,
    check_backbone_class,
    check_signature,
    load_tensors,
    parse_adapter,
    plain_width,
    read_adapter,
    write_adapters,
)
from pointpeft.dapt.model import DAPTModel, check_plain_backbone, wrap_with_dapt

__all__ = ["adapter_state_dict", "load_adapter", "load_adapter_into", "save_adapter", "unwrap_dapt"]


def unwrap_dapt(model: Any) -> DAPTModel:
    """The :class:`~pointpeft.DAPTModel` inside ``model`` (itself, or inside DDP / DataParallel /
    ``torch.compile``).

    Raises:
        TypeError: if there is none. RuntimeError: if its adapters were unloaded.
    """
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    if not isinstance(inner, DAPTModel):
        raise TypeError(f"model must be a pointpeft.DAPTModel, got {type(model).__name__}")
    if not inner.adapters:
        raise RuntimeError(
            "model has no adapters: it was unloaded (DAPTModel.unload()); wrap the backbone again with "
            "pointpeft.wrap_with_dapt"
        )
    return inner


def save_adapter(
    model: nn.Module, directory: str | os.PathLike[str], adapter_names: list[str] | None = None
) -> None:
    """Write adapters in the peft layout: the ``"default"`` adapter in ``directory``, any other in
    ``directory/<name>/``, each as ``adapter_config.json`` and ``adapter_model.safetensors``.

    The config records the adapter's :class:`~pointpeft.DAPTConfig`, the resolved
    :class:`~pointpeft.BackboneLayout` (block paths included), the backbone class and signature and the
    pointpeft version. Each file is replaced atomically, the weights (which carry a copy of the config)
    first: a save killed at any point leaves a folder that loads as the previous adapter or the new one.
    Everything is checked before anything is written.

    Args:
        model: a :class:`~pointpeft.DAPTModel`, also inside ``DistributedDataParallel``, ``DataParallel``
            or ``torch.compile`` (unwrapped).
        directory: the folder to write (created if needed).
        adapter_names: which adapters (a list of names); all when None.

    Raises:
        TypeError: for a non-DAPT model, a non-path ``directory`` or a non-list ``adapter_names``.
        ValueError: for an unknown adapter name, a folder path that is a file, or an adapter holding NaN or
            inf values (nothing is written then).
    """
    write_adapters(unwrap_dapt(model), directory, adapter_names)


def adapter_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The live tensors of one adapter of ``model`` (a :class:`~pointpeft.DAPTModel`, also inside DDP,
    ``DataParallel`` or ``torch.compile``), keyed as in its adapter file (see
    :func:`pointpeft.dapt.adapter_files.adapter_state_dict`)."""
    return dapt_adapter_state_dict(unwrap_dapt(model), adapter_name)


def load_adapter(
    backbone: nn.Module, directory: str | os.PathLike[str], adapter_name: str = DEFAULT_ADAPTER
) -> DAPTModel:
    """Rebuild a DAPT model from a backbone and a saved adapter folder.

    The backbone must be built as when the adapter was saved, with its pre-trained weights loaded (the
    frozen weights are not in the adapter). The layout saved with the adapter is used, so the block paths
    must exist in ``backbone``. The result computes the same logits as the saved model; it is in the
    backbone's train/eval mode, with the adapter's parameters trainable (call ``.eval()`` to predict).

    Everything is checked before the backbone is wrapped: the files, the config and layout, the backbone
    against the signature saved with the adapter (blocks, width, settings such as ``num_group``, every
    parameter's name and shape), and each tensor's dtype and values. Should the tensors then not fit, the
    backbone is unwrapped again, so after any failure it is as it was.

    Args:
        backbone: the plain (not yet wrapped) backbone.
        directory: a folder written by :func:`save_adapter` (``adapter_config.json`` +
            ``adapter_model.safetensors``).
        adapter_name: the name the adapter gets in the returned model.

    Raises:
        FileNotFoundError: if a file is missing. ValueError: if a file is malformed, the backbone differs
            from the one the adapter was saved for (each difference is listed, saved vs this one), or its
            tensors do not fit (every missing, unexpected or mis-shaped tensor is named). TypeError: for a
            backbone that is not an ``nn.Module`` or a non-path ``directory``.
    """
    check_type("backbone", backbone, nn.Module, "a torch.nn.Module")
    check_plain_backbone(backbone)
    check_adapter_name(adapter_name)
    file = read_adapter(directory)
    config, layout = parse_adapter(file)
    source = file.config_source
    check_backbone_class(file.config, backbone, source)
    check_signature(
        file.config.get("backbone_signature"), backbone, layout, plain_width(backbone, layout), source
    )
    try:
        model = wrap_with_dapt(backbone, config, layout=layout, adapter_name=adapter_name)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    try:
        load_tensors(model, adapter_name, file.tensors, file.weights_source)
    except BaseException:
        model.unload()
        raise
    return model


def load_adapter_into(model: nn.Module, directory: str | os.PathLike[str], adapter_name: str) -> None:
    """Add the adapter saved in ``directory`` to ``model`` under ``adapter_name`` (not activated); the
    model may be inside DDP, ``DataParallel`` or ``torch.compile``. See
    :meth:`pointpeft.DAPTModel.load_adapter`."""
    add_adapter_from(unwrap_dapt(model), directory, adapter_name)
