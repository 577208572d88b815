"""Counting trainable parameters, in the format peft users know."""

from __future__ import annotations

import sys
from typing import TextIO

from torch import nn

from pointpeft.checks import check_type


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Count the parameters of ``model``.

    Each parameter tensor is counted once, even if shared. Buffers (BatchNorm running statistics) are not
    parameters and are not counted.

    Returns:
        ``(trainable, total)``: elements of parameters with ``requires_grad=True``, and of all parameters.
    """
    check_type("model", model, nn.Module, "a torch.nn.Module")
    trainable = total = 0
    for parameter in model.parameters():
        n = parameter.numel()
        total += n
        if parameter.requires_grad:
            trainable += n
    return trainable, total


def format_trainable_parameters(model: nn.Module) -> str:
    """The peft summary line, e.g. ``trainable params: 1,087,771 || all params: 22,912,795 || trainable%:
    4.7474``."""
    trainable, total = count_parameters(model)
    percent = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}"


def print_trainable_parameters(model: nn.Module, file: TextIO | None = None) -> None:
    """Print :func:`format_trainable_parameters` of ``model`` (to stdout unless ``file`` is given)."""
    print(format_trainable_parameters(model), file=file if file is not None else sys.stdout)
