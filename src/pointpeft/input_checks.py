"""Checks at the entry of the models' forward: inputs whose dtype or device does not match the model's
parameters get a clear error naming the argument, instead of a failure deep inside a convolution
("Input type (double) and bias type (float) should be the same").

The points are not cast: a float64 cloud fed to a float32 model would silently lose precision, and a
float16 one would run a float32 model on rounded coordinates. Under ``torch.autocast`` the inputs stay in
the parameters' dtype (autocast casts inside the operations), so autocast passes these checks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["check_input_device", "check_input_dtype", "reference_parameter"]


def reference_parameter(module: nn.Module) -> torch.Tensor | None:
    """The first floating-point parameter of ``module`` (whose dtype and device the inputs must have), or
    None when it has none."""
    return next((p for p in module.parameters() if p.is_floating_point()), None)


def check_input_dtype(name: str, value: Any, module: nn.Module) -> None:
    """Check that ``value``, when it is a floating-point tensor, has the dtype of ``module``'s parameters.

    Other values (integer tensors, images of another type, non-tensors) are left to ``module``.

    Raises:
        TypeError: naming ``name``, the expected and received dtype, and the two ways to fix it.
    """
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return
    reference = reference_parameter(module)
    if reference is None or value.dtype == reference.dtype:
        return
    raise TypeError(
        f"{name} must have the dtype of the model's parameters, {reference.dtype}, got {value.dtype} "
        f"(shape {tuple(value.shape)}); convert it with {name}{_cast(reference.dtype)} or the model with "
        f"model{_cast(value.dtype)}. For mixed precision keep both float32 and run under torch.autocast"
    )


def check_input_device(name: str, value: Any, module: nn.Module) -> None:
    """Check that the tensor ``value`` is on the device of ``module``'s parameters.

    Raises:
        ValueError: naming ``name``, the expected and received device, and the fix.
    """
    if not isinstance(value, torch.Tensor):
        return
    reference = reference_parameter(module)
    if reference is None or value.device == reference.device:
        return
    raise ValueError(
        f"{name} must be on the device of the model's parameters, {reference.device}, got {value.device}; "
        f"move it with {name}.to('{reference.device}') (or the model with model.to('{value.device}'))"
    )


_CASTS = {torch.float32: ".float()", torch.float64: ".double()", torch.float16: ".half()"}


def _cast(dtype: torch.dtype) -> str:
    """The call that converts a tensor or a module to ``dtype``: ``.float()``, ``.double()``, ..."""
    return _CASTS.get(dtype, f".to({dtype})")
