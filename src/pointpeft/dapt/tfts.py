"""TFTS: the per-channel scale-and-shift that DAPT places after the frozen operations."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TFTS(nn.Module):
    """Task-agnostic Feature Transform: ``y = x * gamma + beta`` over the last (channel) dimension.

    Initialised as the reference does: ``gamma ~ N(1, std²)``, ``beta ~ N(0, std²)`` elementwise.

    Args:
        dim: number of channels D.
        init_std: standard deviation of the initialisation.

    Shapes:
        forward: ``(..., D)`` → ``(..., D)``.
    """

    def __init__(self, dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.dim = dim
        self.gamma = nn.Parameter(torch.empty(dim))
        self.beta = nn.Parameter(torch.empty(dim))
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std: float = 0.02) -> None:
        nn.init.normal_(self.gamma, mean=1.0, std=init_std)
        nn.init.normal_(self.beta, mean=0.0, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"TFTS expects inputs with last dimension {self.dim}, got shape {tuple(x.shape)}"
            )
        return x * self.gamma + self.beta

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class _Wrapper(nn.Module):
    """Base for modules that wrap a frozen ``base_layer`` (peft's convention).

    Attributes the wrapper lacks are looked up on ``base_layer``, so backbone code that reads, for example,
    ``self.qkv.out_features`` keeps working. Removing every ``.base_layer`` segment from a parameter name of
    the wrapped model gives the backbone's original name.
    """

    base_layer: nn.Module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)


class ScaleShiftAfter(_Wrapper):
    """Runs a frozen module, then a :class:`TFTS` on its output: ``tfts(base_layer(*args, **kwargs))``.

    Shapes:
        forward: whatever ``base_layer`` takes → the output of ``base_layer``, ``(..., D)``.
    """

    def __init__(self, base_layer: nn.Module, tfts: TFTS) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.tfts = tfts

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.tfts(self.base_layer(*args, **kwargs))
