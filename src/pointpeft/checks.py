"""Argument checks shared by every part of pointpeft: numbers, integers, fractions, booleans, choices,
paths, types, and the dtype and device of a model's inputs.

Each check returns the value it accepted (normalised: a numpy integer becomes an ``int``, a number a
``float``) or raises ``TypeError`` (wrong type) or ``ValueError`` (right type, wrong value) with a message
that names the argument, what it accepts and what it got. The checks of one kind of data live beside it
(cloud arrays and labels of dataset files in :mod:`pointpeft.data.checks`, point-cloud tensors in
:func:`pointpeft.ops.check_cloud`, training-config keys in :mod:`pointpeft.train.config`) and build on
these.

The input checks (:func:`check_input_dtype`, :func:`check_input_device`) run at the entry of the models'
forward: inputs whose dtype or device does not match the model's parameters get a clear error naming the
argument, instead of a failure deep inside a convolution ("Input type (double) and bias type (float)
should be the same"). The points are not cast: a float64 cloud fed to a float32 model would silently lose
precision, and a float16 one would run a float32 model on rounded coordinates. Under ``torch.autocast``
the inputs stay in the parameters' dtype (autocast casts inside the operations), so autocast passes these
checks.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import torch
from torch import nn

__all__ = [
    "check_adapter_name",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_fraction",
    "check_input_device",
    "check_input_dtype",
    "check_int",
    "check_number",
    "check_path",
    "check_positive_int",
    "check_real",
    "check_type",
    "reference_parameter",
]

T = TypeVar("T")


# ------------------------------------------------------------------------------------------- numbers
def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int (numpy integers accepted, bools refused) in ``[low, high]`` (``high`` None: no
    upper bound).

    Raises:
        TypeError: ``"<name> must be an int >= <low>, got <type> <value>"`` if ``value`` is not an
            integer. ValueError: ``"<name> must be an int in [<low>, <high>], got <value>"`` (or
            ``>= <low>``) if it is out of range.
    """
    expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """``value``, checked to be a Python int (not a bool) >= 1: a count or a width of a model setting.

    Raises:
        TypeError: ``"<name> must be an int >= 1, got <type> <value>"``. ValueError: ``"<name> must be >= 1,
            got <value>"``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """``value`` as a float, checked to be a finite real number (an int or float, not a bool) in the range
    from ``low`` to ``high`` (None: unbounded on that side; each bound included unless its ``*_inclusive``
    is False).

    Raises:
        TypeError: ``"<name> must be a number, got <type> <value>"`` if ``value`` is not an int or float.
        ValueError: ``"<name> must be a finite number[ in <range>], got <value>"`` if it is NaN or infinite,
            ``"<name> must be in <range>, got <value>"`` if it is out of range (``<range>`` is written as
            ``[0, 1)``, ``(0, inf)``, ...).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
    if not math.isfinite(value):
        where = "" if low is None and high is None else f" in {lo}, {hi}"
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}")
    return value


def check_real(name: str, value: object, expected: str, ok: Callable[[float], bool]) -> float:
    """``value`` as a finite float (numpy reals accepted, bools refused) for which ``ok`` holds; ``expected``
    says in words what is accepted (``"a float in [0, 1)"``).

    Raises:
        TypeError: ``"<name> must be <expected>, got <type> <value>"`` if ``value`` is not a real number.
        ValueError: ``"<name> must be <expected>, got <value>"`` if it is NaN, infinite or ``ok`` is false.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float in ``[0, 1)`` (an int or float, not a bool): a dropout or drop-path rate.

    Raises:
        TypeError: ``"<name> must be a float in [0, 1), got <type> <value>"``. ValueError: ``"<name> must be
            in [0, 1), got <value>"`` (NaN included).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__} {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


# ------------------------------------------------------------------------------------ other values
def check_bool(name: str, value: object, *, expected: str = "a bool") -> bool:
    """``value`` as a bool (a ``bool`` or a numpy bool; ints such as 0 and 1 are refused).

    Raises:
        TypeError: ``"<name> must be <expected>, got <type> <value>"``.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(name: str, value: object, choices: Sequence[T]) -> T:
    """The element of ``choices`` that ``value`` equals, compared within one kind of value: a string
    matches a string choice, an integer (numpy integers included, bools never) an int choice.

    Raises:
        ValueError: ``"<name> must be one of <choices>, got <value>"`` (``choices`` printed as given: pass a
            list or a tuple).
    """
    for choice in choices:
        if isinstance(choice, int) and not isinstance(choice, bool):
            same = (
                isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) == choice
            )
        else:
            same = isinstance(value, type(choice)) and value == choice
        if same:
            return choice
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_path(name: str, value: object, *, what: str = "a file or folder") -> str:
    """``value`` (a ``str`` or ``os.PathLike`` of text, not empty) as a ``str``; ``what`` says what the
    path is for the message about an empty path (``"the dataset folder"``).

    Raises:
        TypeError: ``"<name> must be a path (str or os.PathLike), got <type> <value>"``, or ``"<name> must be
            a text path, got bytes ..."``. ValueError: ``"<name> must be a path to <what>, got an empty
            string"``.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__} {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a text path, got bytes {path!r}")
    if not path:
        raise ValueError(f"{name} must be a path to {what}, got an empty string")
    return path


@overload
def check_type(name: str, value: object, types: type[T], expected: str) -> T: ...
@overload
def check_type(name: str, value: object, types: tuple[type, ...], expected: str) -> Any: ...
def check_type(name: str, value: object, types: type | tuple[type, ...], expected: str) -> Any:
    """``value`` if it is an instance of ``types`` (a type or a tuple of types); ``expected`` names them
    (``"a torch.nn.Module"``, ``"None or a torch.Generator"``).

    Raises:
        TypeError: ``"<name> must be <expected>, got <type of value>"``.
    """
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return value


def check_callable(name: str, value: object, expected: str = "callable") -> Callable[..., Any]:
    """``value`` if it is callable; ``expected`` may say more (``"callable (points (B, N, 3) -> logits)"``).

    Raises:
        TypeError: ``"<name> must be <expected>, got <type of value>"``.
    """
    if not callable(value):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return value


# -------------------------------------------------------------------------------- inputs of models
def check_adapter_name(adapter_name: Any) -> str:
    """``adapter_name`` if it is a non-empty string without ``.`` (adapter names are parts of module paths)
    or a path separator (:func:`pointpeft.save_adapter` writes an adapter to a sub-folder of that name).

    Raises:
        ValueError: naming the value otherwise.
    """
    if not isinstance(adapter_name, str) or not adapter_name or any(c in adapter_name for c in "./\\"):
        raise ValueError(
            f"adapter_name must be a non-empty string without '.', '/' or '\\', got {adapter_name!r}"
        )
    return adapter_name


def reference_parameter(module: nn.Module) -> torch.Tensor | None:
    """The first floating-point parameter of ``module`` (whose dtype and device the inputs must have), or
    None when it has none."""
    return next((p for p in module.parameters() if p.is_floating_point()), None)


def check_input_dtype(name: str, value: Any, module: nn.Module) -> None:
    """Check that ``value``, when it is a floating-point tensor (e.g. points ``(B, N, 3)``), has the dtype
    of ``module``'s parameters.

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
    """Check that the tensor ``value`` (any shape) is on the device of ``module``'s parameters; other
    values, and modules without floating-point parameters, pass.

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
