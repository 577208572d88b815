"""The backward of a TFTS (``y = x·γ + β``), optionally through a GELU after it, in one pass.

For d/d(output) ``g`` it returns ``(dx, dγ, dβ)``: ``dx = g'·γ``, ``dγ = Σ g'·x`` and ``dβ = Σ g'`` over
every token, where ``g' = g`` or, with ``gelu=True`` (output ``GELU(x·γ + β)``), ``g' = g·GELU'(x·γ + β)``.
Computed in plain torch by :func:`tfts_backward_reference` (four or five passes over the activations), or
on a CUDA device by one Triton kernel that reads ``g`` and ``x`` once and writes ``dx`` once, with the sums
over tokens finished from per-program partial sums. Both compute in float32 (float64 for float64 inputs);
they agree to float32 rounding.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

_aten = torch.ops.aten
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK_N = 32
_ROWS_PER_PROGRAM = 256


def _wide_dtype(*dtypes: torch.dtype) -> torch.dtype:
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


def _check(
    grad: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None, gelu: bool
) -> None:
    if grad.shape != x.shape:
        raise ValueError(f"grad and x must have the same shape, got {tuple(grad.shape)} and {tuple(x.shape)}")
    if gamma.shape != (x.shape[-1],):
        raise ValueError(f"gamma must have shape ({x.shape[-1]},), got {tuple(gamma.shape)}")
    if gelu and (beta is None or beta.shape != gamma.shape):
        got = None if beta is None else tuple(beta.shape)
        raise ValueError(f"with gelu=True, beta must have shape ({x.shape[-1]},), got {got}")


def tfts_backward_reference(
    grad: torch.Tensor,
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor | None = None,
    gelu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain-torch twin. Shapes: ``grad, x (..., C)``, ``gamma, beta (C,)`` → ``dx (..., C)`` in the
    promoted dtype of ``grad`` and ``gamma``, ``dγ, dβ (C,)`` in float32 (float64 for float64 inputs)."""
    _check(grad, x, gamma, beta, gelu)
    wide = _wide_dtype(grad.dtype, x.dtype, gamma.dtype)
    g, xw, gw = grad.to(wide), x.to(wide), gamma.to(wide)
    if gelu:
        g = _aten.gelu_backward(g, torch.addcmul(beta.to(wide), xw, gw))
    dims = tuple(range(x.dim() - 1))
    dx = (g * gw).to(torch.promote_types(grad.dtype, gamma.dtype))
    return dx, (g * xw).sum(dim=dims), g.sum(dim=dims)


def tfts_backward_triton(
    grad: torch.Tensor,
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor | None = None,
    gelu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one-kernel version, same contract as :func:`tfts_backward_reference` for float16/bfloat16/float32
    inputs (on a CUDA device, or on the CPU under ``TRITON_INTERPRET=1``)."""
    _check(grad, x, gamma, beta, gelu)
    for name, t in (("grad", grad), ("x", x), ("gamma", gamma)):
        if t.dtype not in _KERNEL_DTYPES:
            raise TypeError(
                f"{name} must be float16, bfloat16 or float32 for the Triton kernel, got {t.dtype}"
            )
    import triton

    from pointpeft.dapt._tfts_kernels import tfts_backward_kernel

    c = x.shape[-1]
    g2, x2 = grad.reshape(-1, c).contiguous(), x.reshape(-1, c).contiguous()
    n = g2.shape[0]
    dx = torch.empty((n, c), dtype=torch.promote_types(grad.dtype, gamma.dtype), device=x.device)
    programs = max(1, triton.cdiv(n, _ROWS_PER_PROGRAM))
    part_gamma = torch.empty((programs, c), dtype=torch.float32, device=x.device)
    part_beta = torch.empty((programs, c), dtype=torch.float32, device=x.device)
    block_c = 128 if c >= 128 else triton.next_power_of_2(c)
    if n:
        grid = (programs, triton.cdiv(c, block_c))
        tfts_backward_kernel[grid](
            g2, x2, gamma.contiguous(), (gamma if beta is None else beta).contiguous(), dx,
            part_gamma, part_beta, n, c, _ROWS_PER_PROGRAM,
            GELU=gelu, BLOCK_N=_BLOCK_N, BLOCK_C=block_c,
        )  # fmt: skip
    else:
        part_gamma.zero_()
        part_beta.zero_()
    return dx.reshape(x.shape), part_gamma.sum(dim=0), part_beta.sum(dim=0)


@functools.lru_cache(maxsize=1)
def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _kernel_runs(grad: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor) -> bool:
    return grad.is_cuda and all(t.dtype in _KERNEL_DTYPES for t in (grad, x, gamma)) and _have_triton()


def tfts_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor | None = None,
    gelu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dγ, dβ)`` (see the module docstring): the Triton kernel on CUDA tensors where triton is
    installed, else the plain-torch twin."""
    if _kernel_runs(grad, x, gamma):
        return tfts_backward_triton(grad, x, gamma, beta, gelu)
    return tfts_backward_reference(grad, x, gamma, beta, gelu)
