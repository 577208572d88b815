"""A backbone's own tensors and widths as they were before DAPT was inserted, and taking DAPT out again.

DAPT replaces a backbone's sub-modules by wrappers (their ``base_layer`` is the original module) and adds its
own modules (:class:`~pointpeft.dapt.tfts.AdapterModules`). The functions here look through the wrappers:
:func:`backbone_tensors` lists the parameters under their pre-wrap names, :func:`module_width` and
:func:`token_width` read widths, :func:`restore_plain_backbone` puts the original modules back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pointpeft.dapt.layout import BackboneLayout
from pointpeft.dapt.tfts import AdapterModules, DAPTWrapper

__all__ = [
    "backbone_tensors",
    "innermost",
    "keep_python_forward",
    "module_width",
    "own_parameter_paths",
    "restore_plain_backbone",
    "token_width",
]


def module_width(module: nn.Module, path: str) -> int:
    if isinstance(module, DAPTWrapper):
        module = module.base_layer
    for attr in ("out_features", "normalized_shape", "embed_dim"):
        value = getattr(module, attr, None)
        if value is not None:
            return int(value[-1]) if isinstance(value, (tuple, list, torch.Size)) else int(value)
    raise ValueError(
        f"cannot tell the output width of {path} ({type(module).__name__}) to place a TFTS there"
    )


def token_width(block: nn.Module, layout: BackboneLayout) -> int:
    """The token width C of a backbone, read from the first norm or projection the layout names in
    ``block`` (a plain or a wrapped block).

    Raises:
        ValueError: if the layout names none, or the module's width cannot be told.
    """
    for path in (layout.block.norm1, layout.block.norm2, layout.block.proj, layout.block.fc2):
        if path is not None:
            return module_width(block.get_submodule(path), path)
    raise ValueError("cannot tell the token width C: the layout names no norm or projection in the blocks")


def innermost(module: nn.Module) -> nn.Module:
    while isinstance(module, DAPTWrapper):
        module = module.base_layer
    return module


def backbone_tensors(module: nn.Module, *, buffers: bool = True) -> dict[str, torch.Tensor]:
    """The parameters (and persistent buffers) of a backbone under the names they had before DAPT was
    inserted: inside a wrapped backbone the wrappers are looked through (their ``base_layer``) and DAPT's
    own modules (TFTS, adapters, prompts) are left out. On a plain module these are the names of its
    ``named_parameters()`` (and persistent ``named_buffers()``), a shared tensor under its first name."""
    found: dict[str, torch.Tensor] = {}
    seen_modules: set[int] = set()
    seen_tensors: set[int] = set()

    def visit(node: nn.Module, prefix: str) -> None:
        node = innermost(node)
        if id(node) in seen_modules:
            return
        seen_modules.add(id(node))
        members: list[tuple[str, torch.Tensor | None]] = list(node._parameters.items())
        if buffers:
            persistent = node._non_persistent_buffers_set
            members += [(k, b) for k, b in node._buffers.items() if k not in persistent]
        for key, tensor in members:
            if tensor is not None and id(tensor) not in seen_tensors:
                seen_tensors.add(id(tensor))
                found[prefix + key] = tensor
        for key, child in node._modules.items():
            if child is not None and not isinstance(child, AdapterModules):
                visit(child, f"{prefix}{key}.")

    visit(module, "")
    return found


def own_parameter_paths(module: nn.Module) -> dict[str, str]:
    """The backbone's own parameters in a wrapped backbone: their path there (through the wrappers,
    ``blocks.0.base_layer.mlp.fc1.base_layer.bias``) → their name before wrapping (``blocks.0.mlp.fc1.bias``).
    DAPT's own modules are left out; a shared parameter appears under its first path."""
    found: dict[str, str] = {}
    seen: set[int] = set()

    def visit(node: nn.Module, path: str, name: str) -> None:
        for key, tensor in node._parameters.items():
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                found[path + key] = name + key
        for key, child in node._modules.items():
            if child is None or isinstance(child, AdapterModules):
                continue
            inside = key == "base_layer" and isinstance(node, DAPTWrapper)
            visit(child, f"{path}{key}.", name if inside else f"{name}{key}.")

    visit(module, "", "")
    return found


def restore_plain_backbone(backbone: nn.Module, requires_grad: Mapping[str, bool]) -> None:
    """Take DAPT's wrappers and hooks out of ``backbone`` (each wrapper replaced by the module it wraps)
    and set each parameter's ``requires_grad`` to its value in ``requires_grad`` (pre-wrap names)."""
    seen: set[int] = set()

    def strip(node: nn.Module) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        for handle_id, hook in list(node._forward_pre_hooks.items()):
            if hook is keep_python_forward:
                del node._forward_pre_hooks[handle_id]
        for name, child in list(node._modules.items()):
            if child is not None:
                inner = innermost(child)
                node._modules[name] = inner
                strip(inner)

    strip(backbone)
    for name, parameter in backbone.named_parameters():
        if name in requires_grad:
            parameter.requires_grad_(requires_grad[name])


def keep_python_forward(module: nn.Module, args: Any) -> None:
    """No-op pre-hook. ``nn.TransformerEncoderLayer`` skips its fused fast path (which reads the weights
    directly and would bypass the inserted modules) when a hook is attached."""
    return None
