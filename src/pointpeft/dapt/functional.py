"""DAPT's formulas, each written once; the modules (:class:`~pointpeft.dapt.tfts.TFTS`,
:class:`~pointpeft.dapt.prompt.InternalPrompt`, the LayerNorm wrappers) call them.

* TFTS: ``y = x * γ + β`` over the channel dimension (:func:`tfts`).
* Dynamic Adapter: ``ū = LayerNorm(u)``, ``s = ReLU(w_s·ū + b_s)``, output ``(W_u Dropout(GELU(W_d ū + b_d))
  + b_u) · s``: written once, in :meth:`pointpeft.dapt.adapter.DynamicAdapter.forward` (it calls its
  sub-modules, so their hooks run).
* Internal prompt: ``mean over tokens of GELU(adapter output)`` (:func:`pooled_prompt`), then its TFTS.
* A TFTS after a LayerNorm folded into the LayerNorm's affine (:func:`fold_tfts_into_norm`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def tfts(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``x * γ + β``: ``x (..., D)``, ``γ, β (D,)`` → ``(..., D)``."""
    return x * gamma + beta


def pooled_prompt(adapter_out: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens of ``GELU(A)``: ``(B, L, C)`` → ``(B, 1, C)`` (an internal prompt before its TFTS)."""
    return F.gelu(adapter_out).mean(dim=1, keepdim=True)


def fold_tfts_into_norm(
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine of ``TFTS(LayerNorm(x))`` as one LayerNorm affine: ``(w·γ, b·γ + β)`` (``w``/``b`` None:
    a LayerNorm without affine)."""
    w = gamma if weight is None else weight * gamma
    b = beta if bias is None else torch.addcmul(beta, bias, gamma)
    return w, b
