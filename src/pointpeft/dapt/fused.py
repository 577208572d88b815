"""Fused execution of DAPT: autograd functions that save only what backward needs.

The plain path (the wrappers calling the backbone's own modules) keeps, for backward, every intermediate
that some op needs: each TFTS keeps its input, each LayerNorm its input and output's consumer, the attention
its probability matrix, the adapter five activations of the token width. With the backbone frozen, most of
that is avoidable: backward needs the frozen matrix products' outputs (for the TFTS gradients and the
GELU), and everything elementwise can be recomputed from them in a pass or two.

:class:`FusedBlockFunction` runs one whole pre-norm DAPT block (the structure of
:class:`pointpeft.backbones.point_mae.Block`) as one autograd node. It saves the block input, the outputs of
the four frozen matrix products (before their TFTS), the adapter's bottleneck pre-activation and its scale
logit, and the dropout masks; backward recomputes the rest (LayerNorm outputs, TFTS outputs, the residual
in between, the adapter output) and runs the attention again through
``torch.nn.functional.scaled_dot_product_attention``. In ``recompute`` mode it saves only the block input
and the masks and recomputes the frozen matrix products as well (activation checkpointing).

Numerically the fused block computes the plain block's function with a different rounding: the TFTS after a
LayerNorm is folded into the LayerNorm's affine (``LN(x)·(w·γ) + (b·γ + β)``) and the attention is fused.
Without gradients (:func:`block_inference`) every TFTS is folded into the frozen operation before it where
that is cheaper than applying it (:func:`fold_pays`). The tests hold the fused and plain paths to a relative
error of 1e-10 in float64 on random models, and of 1e-5 in float32 at a Point-MAE-like width, on the logits
and on every gradient.

Dtypes: under autocast (bf16/fp16) the matrix products run in the autocast dtype and their saved outputs
are kept in it; a TFTS whose output feeds a product or the attention is computed in that dtype too (the
plain path rounds its output to it there); LayerNorm, the other TFTS and the residual stream stay in
float32, as on the plain path.

Nothing derived from the weights outlives one call. The folded weights and the low-precision casts of the
frozen weights are computed inside each forward call from the tensors as they are then (the casts are
saved for that call's backward, as autocast saves its own). No cache key could see every in-place change a
user can make: an edit through ``.data``, a numpy or DLPack view or another alias of the storage bumps no
version counter, and a replaced storage can reuse a freed address. Inside a CUDA graph the casts and folds
are recorded kernels, so every replay redoes them from the live weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pointpeft.dapt.tfts_backward import tfts_backward

_aten = torch.ops.aten


# ------------------------------------------------------------------------------------------------ helpers
def hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward or backward hooks (the fused functions would bypass them)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
    )


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in effect for ``device_type``, or None when autocast is off there."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not enabled:
        return None
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or as it is if wider (float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _sum_tokens(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the last: ``(..., D)`` → ``(D,)``, in float32 or wider."""
    return t.sum(dim=tuple(range(t.dim() - 1)), dtype=torch.promote_types(t.dtype, torch.float32))


def _tfts(x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None) -> torch.Tensor:
    """``x * γ + β`` in the parameters' dtype (float32 for a low-precision ``x``), or ``x`` without TFTS."""
    if gamma is None:
        return x
    return torch.addcmul(beta, x, gamma)


def _tfts_in(
    x: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """``x * γ + β`` computed and returned in ``dtype`` (the input of a matrix product or the attention:
    under autocast the plain path rounds it to that dtype there as well)."""
    if gamma is None:
        return x.to(dtype)
    return torch.addcmul(beta.to(dtype), x.to(dtype), gamma.to(dtype))


def frozen_cast(weight: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``weight`` in ``dtype``, as a new tensor outside autograd (``weight`` itself if already in
    ``dtype``). Computed at each call from the weight as it is now: nothing is kept."""
    if weight is None or weight.dtype == dtype:
        return weight
    return weight.detach().to(dtype)


def _tfts_backward(
    grad: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward of :func:`_tfts`: ``(dx, dγ, dβ)`` for ``grad`` = d/d(output) (one Triton kernel on a GPU,
    see :mod:`pointpeft.dapt.tfts_backward`)."""
    if gamma is None:
        return grad, None, None
    return tfts_backward(grad, x, gamma)


def fold_norm(
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The affine of ``TFTS(LayerNorm(x))`` as one LayerNorm affine: ``(w·γ, b·γ + β)``."""
    if gamma is None:
        return weight, bias
    w = gamma if weight is None else weight * gamma
    b = beta if bias is None else torch.addcmul(beta, bias, gamma)
    return w, b


def _unfold_norm_grads(
    dw: torch.Tensor | None,
    db: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    gamma: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(dγ, dβ)`` from the gradients of the folded affine (:func:`fold_norm`)."""
    if gamma is None:
        return None, None
    dgamma = dw if weight is None else dw * weight
    if bias is not None:
        dgamma = dgamma + db * bias
    return dgamma, db


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    return F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


def _matmul(grad: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grad @ weight``: the input gradient of a linear layer, ``(..., out)`` → ``(..., in)``."""
    return torch.matmul(grad.to(dtype), weight.to(dtype))


def _weight_grad(grad: torch.Tensor, inputs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``gradᵀ @ inputs`` over all tokens: the weight gradient ``(out, in)`` of a linear layer, in float32 or wider."""
    g = grad.reshape(-1, grad.shape[-1]).to(dtype)
    i = inputs.reshape(-1, inputs.shape[-1]).to(dtype)
    return _wide(torch.matmul(g.t(), i))


def _layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return out, mean, rstd


def _layer_norm_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    mask = [True, weight is not None, bias is not None]
    dx, dw, db = _aten.native_layer_norm_backward(
        grad.to(x.dtype), x, (x.shape[-1],), mean, rstd, weight, bias, mask
    )
    return dx, dw, db


def _attention(qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """Multi-head self-attention of a packed ``qkv (B, L, 3C)`` → ``(B, L, C)``, fused (SDPA)."""
    b, length, c3 = qkv.shape
    c = c3 // 3
    q, k, v = qkv.view(b, length, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, H, L, D)
    return out.transpose(1, 2).reshape(b, length, c)


def _attention_backward(
    qkv: torch.Tensor, grad_out: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """``d/d qkv`` of :func:`_attention`, by running the fused attention again with autograd."""
    leaf = qkv.detach().requires_grad_(True)
    with torch.enable_grad():
        out = _attention(leaf, num_heads, scale)
    (grad,) = torch.autograd.grad(out, leaf, grad_out.to(out.dtype))
    return grad


# ------------------------------------------------------------------------------------- the Dynamic Adapter
@dataclass(frozen=True)
class AdapterSpec:
    """Non-tensor settings of a Dynamic Adapter: LayerNorm eps, dropout probability, training mode."""

    eps: float
    dropout: float
    training: bool

    @property
    def drops(self) -> bool:
        return self.training and self.dropout > 0.0


# Order of the adapter's tensors in the functions' argument lists.
ADAPTER_TENSORS = (
    "norm.weight",
    "norm.bias",
    "scale.weight",
    "scale.bias",
    "down.weight",
    "down.bias",
    "up.weight",
    "up.bias",
)


def adapter_tensors(adapter: nn.Module) -> list[torch.Tensor]:
    """The tensors of a :class:`~pointpeft.dapt.adapter.DynamicAdapter`, in :data:`ADAPTER_TENSORS` order."""
    norm, scale, down, up = adapter.norm, adapter.scale, adapter.down, adapter.up
    return [norm.weight, norm.bias, scale.weight, scale.bias, down.weight, down.bias, up.weight, up.bias]


def _adapter_forward(
    spec: AdapterSpec,
    u: torch.Tensor,
    p: Sequence[torch.Tensor],
    dtype: torch.dtype,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(a, s0, d, mask, up0, s)``: output, scale logit, bottleneck pre-activation, dropout mask (drawn
    here unless given), up-projection output and scale, for ``u (B, L, C)``."""
    ln_w, ln_b, s_w, s_b, d_w, d_b, u_w, u_b = p
    ub = _layer_norm(u, ln_w, ln_b, spec.eps)[0]
    s0 = _linear(ub, s_w, s_b, dtype)  # (B, L, 1)
    d = _linear(ub, d_w, d_b, dtype)  # (B, L, r)
    hidden = F.gelu(d)
    if spec.drops:
        if mask is None:
            hidden, mask = torch.native_dropout(hidden, spec.dropout, True)
        else:
            hidden = _aten.native_dropout_backward(hidden, mask, 1.0 / (1.0 - spec.dropout))
    up0 = _linear(hidden, u_w, u_b, dtype)
    s = F.relu(s0)
    return up0 * s, s0, d, mask, up0, s


def _adapter_backward(
    spec: AdapterSpec,
    grad: torch.Tensor,
    grad_pooled: torch.Tensor | None,
    u: torch.Tensor,
    s0: torch.Tensor,
    d: torch.Tensor,
    mask: torch.Tensor | None,
    p: Sequence[torch.Tensor],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(du, [grads of the adapter tensors])`` for ``grad`` = d/d(adapter output) and, if not None,
    ``grad_pooled`` = d/d(pooled prompt activation, :func:`pooled_prompt` of the output)."""
    ln_w, ln_b, s_w, s_b, d_w, d_b, u_w, u_b = p
    ub, mean, rstd = _layer_norm(u, ln_w, ln_b, spec.eps)
    hidden = F.gelu(d)
    if spec.drops:
        hidden = _aten.native_dropout_backward(hidden, mask, 1.0 / (1.0 - spec.dropout))
    up0 = _linear(hidden, u_w, u_b, dtype)
    s = F.relu(s0)
    if grad_pooled is not None:
        grad = grad + _pooled_prompt_backward(grad_pooled, up0 * s).to(grad.dtype)
    grad_up = grad * s  # (B, L, C)
    grad_s = (grad * up0).sum(dim=-1, keepdim=True)  # (B, L, 1)
    grad_s0 = grad_s.masked_fill(s0 <= 0, 0)
    g_uw, g_ub = _weight_grad(grad_up, hidden, dtype), _sum_tokens(grad_up)
    grad_hidden = _matmul(grad_up, u_w, dtype)  # (B, L, r)
    if spec.drops:
        grad_hidden = _aten.native_dropout_backward(grad_hidden, mask, 1.0 / (1.0 - spec.dropout))
    grad_d = _aten.gelu_backward(grad_hidden, d)
    g_dw, g_db = _weight_grad(grad_d, ub, dtype), _sum_tokens(grad_d)
    g_sw, g_sb = _weight_grad(grad_s0, ub, dtype), _sum_tokens(grad_s0)
    grad_ub = _wide(_matmul(grad_d, d_w, dtype)) + _wide(_matmul(grad_s0, s_w, dtype))
    du, g_lnw, g_lnb = _layer_norm_backward(grad_ub, u, mean, rstd, ln_w, ln_b)
    return du, [g_lnw, g_lnb, g_sw, g_sb, g_dw, g_db, g_uw, g_ub]


def pooled_prompt(a: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens of ``GELU(a)``: ``(B, L, C)`` → ``(B, 1, C)``."""
    return F.gelu(a).mean(dim=1, keepdim=True)


def _pooled_prompt_backward(grad: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    expanded = (grad / a.shape[1]).to(a.dtype).expand_as(a)
    return _aten.gelu_backward(expanded, a)


class AdapterFunction(torch.autograd.Function):
    """A Dynamic Adapter and its pooled prompt activation as one autograd node.

    ``apply(spec, dtype, u, *adapter_tensors)`` → ``(a, pooled)``: the adapter output ``(B, L, C)`` and
    ``mean over tokens of GELU(a)`` ``(B, 1, C)``. Saves ``u``, the scale logit ``(B, L, 1)``, the
    bottleneck pre-activation ``(B, L, r)`` and the dropout mask; recomputes the rest.
    """

    @staticmethod
    def forward(ctx: Any, spec: AdapterSpec, dtype: torch.dtype, u: torch.Tensor, *p: torch.Tensor) -> Any:
        with torch.autocast(u.device.type, enabled=False):
            a, s0, d, mask, _, _ = _adapter_forward(spec, u, p, dtype, None)
            pooled = pooled_prompt(a)
        ctx.spec, ctx.dtype = spec, dtype
        ctx.save_for_backward(u, s0, d, mask, *p)
        ctx.set_materialize_grads(False)
        return a, pooled

    @staticmethod
    def backward(ctx: Any, grad_a: torch.Tensor | None, grad_pooled: torch.Tensor | None) -> Any:
        u, s0, d, mask, *p = ctx.saved_tensors
        spec, dtype = ctx.spec, ctx.dtype
        with torch.autocast(u.device.type, enabled=False):
            grad = _wide(torch.zeros_like(u) if grad_a is None else grad_a)
            du, grads = _adapter_backward(spec, grad, grad_pooled, u, s0, d, mask, p, dtype)
        return (None, None, du.to(u.dtype), *(g.to(t.dtype) for g, t in zip(grads, p, strict=True)))


# --------------------------------------------------------------------------------------------- the block
@dataclass(frozen=True)
class BlockSpec:
    """Non-tensor settings of a fused pre-norm block.

    Attributes:
        num_heads: attention heads.
        scale: attention logit scale.
        eps1, eps2: LayerNorm eps of ``norm1`` and ``norm2``.
        keep: DropPath keep probability of both residual branches (1.0: no DropPath).
        adapter: the adapter's settings.
        dtype: the dtype of the matrix products (float32/float64, or the autocast dtype).
        recompute: save only the block input and recompute the frozen products in backward.
        prompt: compute the pooled prompt activation.
    """

    num_heads: int
    scale: float
    eps1: float
    eps2: float
    keep: float
    adapter: AdapterSpec
    dtype: torch.dtype
    recompute: bool
    prompt: bool


# Order of a block's tensors after x: 6 TFTS sites (gamma, beta) and the frozen modules they follow.
BLOCK_TENSORS = (
    "ln1_w", "ln1_b", "g_n1", "b_n1",
    "qkv_w", "qkv_b", "g_qkv", "b_qkv",
    "proj_w", "proj_b", "g_p", "b_p",
    "ln2_w", "ln2_b", "g_n2", "b_n2",
    "fc1_w", "fc1_b", "g_f1", "b_f1",
    "fc2_w", "fc2_b", "g_f2", "b_f2",
)  # fmt: skip
_N_BLOCK = len(BLOCK_TENSORS)
# The weights and biases of the four frozen matrix products (qkv, proj, fc1, fc2) among them.
_PRODUCT_TENSORS = tuple(
    BLOCK_TENSORS.index(n) for n in ("qkv_w", "qkv_b", "proj_w", "proj_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b")
)


def cast_products(t: Sequence[torch.Tensor | None], dtype: torch.dtype) -> list[torch.Tensor | None]:
    """The block tensors ``t`` (:data:`BLOCK_TENSORS` order) with the frozen products' weights and biases
    cast to ``dtype`` (:func:`frozen_cast`), once for this call; the other tensors as they are."""
    cast = list(t)
    for i in _PRODUCT_TENSORS:
        cast[i] = frozen_cast(cast[i], dtype)
    return cast


def _drop_path_mask(x: torch.Tensor, keep: float) -> torch.Tensor | None:
    """The mask :class:`~pointpeft.backbones.point_mae.DropPath` draws (same RNG use), already scaled."""
    if keep >= 1.0:
        return None
    return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)


def _residual(x: torch.Tensor, branch: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x + mask * branch`` (DropPath), or ``x + branch``."""
    return x + branch if mask is None else torch.addcmul(x, branch, mask)


def _block_forward(
    spec: BlockSpec,
    x: torch.Tensor,
    t: Sequence[torch.Tensor | None],
    a: Sequence[torch.Tensor],
    masks: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] | None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """The block's forward: ``(out, pooled prompt or None, saved)`` for ``x (B, L, C)``. ``masks``
    (DropPath 1, adapter dropout, DropPath 2) are drawn here, in the plain path's order, unless given. The
    frozen products' tensors in ``t`` are best given already in ``spec.dtype`` (:func:`cast_products`)."""
    (ln1_w, ln1_b, g_n1, b_n1, qkv_w, qkv_b, g_qkv, b_qkv, proj_w, proj_b, g_p, b_p,
     ln2_w, ln2_b, g_n2, b_n2, fc1_w, fc1_b, g_f1, b_f1, fc2_w, fc2_b, g_f2, b_f2) = t  # fmt: skip
    dt = spec.dtype
    w1, b1 = fold_norm(ln1_w, ln1_b, g_n1, b_n1)
    z, mean1, rstd1 = _layer_norm(x, w1, b1, spec.eps1)
    qkv0 = _linear(z, qkv_w, qkv_b, dt)
    del z
    attn = _attention(_tfts_in(qkv0, g_qkv, b_qkv, dt), spec.num_heads, spec.scale)
    proj0 = _linear(attn, proj_w, proj_b, dt)
    del attn
    branch = _tfts(proj0, g_p, b_p)
    m1 = _drop_path_mask(branch, spec.keep) if masks is None else masks[0]
    x1 = _residual(x, branch, m1)
    del branch

    w2, b2 = fold_norm(ln2_w, ln2_b, g_n2, b_n2)
    u = _layer_norm(x1, w2, b2, spec.eps2)[0]
    adapted, s0, d, dmask, _, _ = _adapter_forward(
        spec.adapter, u, a, dt, None if masks is None else masks[1]
    )
    h1 = _linear(u, fc1_w, fc1_b, dt)
    del u
    y2 = _linear(F.gelu(_tfts_in(h1, g_f1, b_f1, dt)), fc2_w, fc2_b, dt)
    branch = _tfts(y2, g_f2, b_f2) + adapted
    m2 = _drop_path_mask(branch, spec.keep) if masks is None else masks[2]
    out = _residual(x1, branch, m2)
    pooled = pooled_prompt(adapted) if spec.prompt else None
    saved = dict(mean1=mean1, rstd1=rstd1, qkv0=qkv0, proj0=proj0, h1=h1, y2=y2, s0=s0, d=d)
    return out, pooled, dict(saved, m1=m1, dmask=dmask, m2=m2)


def _fold_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TFTS(linear(x))`` as one linear layer in ``dtype``: ``(W·γ[:, None], b·γ + β)``, computed in the
    weight's dtype and rounded once to ``dtype``, in one pass over ``W (out, in)``."""
    w = torch.mul(weight, gamma[:, None], out=weight.new_empty(weight.shape, dtype=dtype))
    b = beta if bias is None else torch.addcmul(beta, bias, gamma)
    return w, b.to(dtype)


def fold_pays(tokens: int, weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether folding a TFTS into ``weight (out, in)`` costs less than applying it to the product's
    output ``(tokens, out)``: when the weight is cast to ``dtype`` anyway (the fold then costs no extra
    pass) or the output has at least as many rows as the weight has columns."""
    return weight.dtype != dtype or tokens >= weight.shape[1]


def _linear_tfts(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``TFTS(linear(x))`` for ``x (..., in)`` → ``(..., out)`` in ``dtype``, without gradients: the TFTS
    folded into the weight where that pays (:func:`fold_pays`), else applied to the output. The fold is
    computed here, from the tensors as they are now."""
    if gamma is None or beta is None:
        return _linear(x, weight, bias, dtype)
    if fold_pays(x.numel() // x.shape[-1], weight, dtype):
        return F.linear(x.to(dtype), *_fold_linear(weight, bias, gamma, beta, dtype))
    return _tfts_in(_linear(x, weight, bias, dtype), gamma, beta, dtype)


def block_inference(
    spec: BlockSpec, x: torch.Tensor, t: Sequence[torch.Tensor | None], a: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The block's forward for ``x (B, L, C)`` when nothing needs a gradient: ``(out (B, L, C), pooled
    prompt (B, 1, C) or None)``. Every TFTS after a LayerNorm is folded into its affine, and every TFTS
    after a frozen product into the product where that pays (:func:`_linear_tfts`), so that TFTS costs
    no pass over the activations. The folds are computed in this call: none is kept for the next."""
    (ln1_w, ln1_b, g_n1, b_n1, qkv_w, qkv_b, g_qkv, b_qkv, proj_w, proj_b, g_p, b_p,
     ln2_w, ln2_b, g_n2, b_n2, fc1_w, fc1_b, g_f1, b_f1, fc2_w, fc2_b, g_f2, b_f2) = t  # fmt: skip
    dt = spec.dtype
    with torch.no_grad():
        w1, b1 = fold_norm(ln1_w, ln1_b, g_n1, b_n1)
        z = _layer_norm(x, w1, b1, spec.eps1)[0]
        qkv = _linear_tfts(z, qkv_w, qkv_b, g_qkv, b_qkv, dt)
        del z
        attn = _attention(qkv, spec.num_heads, spec.scale)
        del qkv
        branch = _linear_tfts(attn, proj_w, proj_b, g_p, b_p, dt)
        del attn
        x1 = _residual(x, branch, _drop_path_mask(branch, spec.keep))
        w2, b2 = fold_norm(ln2_w, ln2_b, g_n2, b_n2)
        u = _layer_norm(x1, w2, b2, spec.eps2)[0]
        adapted = _adapter_forward(spec.adapter, u, a, dt, None)[0]
        hidden = F.gelu(_linear_tfts(u, fc1_w, fc1_b, g_f1, b_f1, dt))
        del u
        branch = _linear_tfts(hidden, fc2_w, fc2_b, g_f2, b_f2, dt) + adapted
        del hidden
        out = _residual(x1, branch, _drop_path_mask(branch, spec.keep))
        return out.to(x.dtype), pooled_prompt(adapted) if spec.prompt else None


def _block_backward(
    spec: BlockSpec,
    grad_out: torch.Tensor,
    grad_pooled: torch.Tensor | None,
    x: torch.Tensor,
    t: Sequence[torch.Tensor | None],
    a: Sequence[torch.Tensor],
    s: dict[str, Any],
) -> tuple[torch.Tensor, list[torch.Tensor | None], list[torch.Tensor]]:
    """``(dx, grads of the block tensors, grads of the adapter tensors)``."""
    (ln1_w, ln1_b, g_n1, b_n1, qkv_w, qkv_b, g_qkv, b_qkv, proj_w, proj_b, g_p, b_p,
     ln2_w, ln2_b, g_n2, b_n2, fc1_w, fc1_b, g_f1, b_f1, fc2_w, fc2_b, g_f2, b_f2) = t  # fmt: skip
    dt = spec.dtype
    m1, m2 = s["m1"], s["m2"]
    # Recompute the residual between the branches and the FFN input, bit for bit as the forward did.
    x1 = _residual(x, _tfts(s["proj0"], g_p, b_p), m1)
    w2, b2 = fold_norm(ln2_w, ln2_b, g_n2, b_n2)
    u, mean2, rstd2 = _layer_norm(x1, w2, b2, spec.eps2)

    # FFN branch and adapter: out = x1 + m2 * (TFTS_f2(fc2(GELU(TFTS_f1(fc1(u))))) + adapter(u)).
    grad_out = grad_out.to(x.dtype)
    grad_branch = grad_out if m2 is None else grad_out * m2
    grad_y2, g_gf2, g_bf2 = _tfts_backward(grad_branch, s["y2"], g_f2)
    grad_gelu = _matmul(grad_y2, fc2_w, dt)
    del grad_y2
    if g_f1 is None:
        grad_h1, g_gf1, g_bf1 = _aten.gelu_backward(grad_gelu, s["h1"]), None, None
    else:  # through GELU(TFTS_f1(h1)) in one pass; GELU' is evaluated at TFTS_f1(h1) in float32
        grad_h1, g_gf1, g_bf1 = tfts_backward(grad_gelu, s["h1"], g_f1, b_f1, gelu=True)
    del grad_gelu
    grad_u = _matmul(grad_h1, fc1_w, dt).to(x.dtype)
    del grad_h1
    du_adapter, g_adapter = _adapter_backward(
        spec.adapter, grad_branch, grad_pooled, u, s["s0"], s["d"], s["dmask"], a, dt
    )
    grad_u = grad_u + du_adapter
    dx1, dw2, db2 = _layer_norm_backward(grad_u, x1, mean2, rstd2, w2, b2)
    del grad_u, u, x1
    g_gn2, g_bn2 = _unfold_norm_grads(dw2, db2, ln2_w, ln2_b, g_n2)
    dx1 = dx1 + grad_out

    # Attention branch: x1 = x + m1 * TFTS_p(proj(attention(TFTS_qkv(qkv(LN1'(x)))))).
    grad_p = dx1 if m1 is None else dx1 * m1
    grad_proj0, g_gp, g_bp = _tfts_backward(grad_p, s["proj0"], g_p)
    del grad_p
    grad_attn = _matmul(grad_proj0, proj_w, dt)
    del grad_proj0
    grad_qkvt = _attention_backward(
        _tfts_in(s["qkv0"], g_qkv, b_qkv, dt), grad_attn, spec.num_heads, spec.scale
    )
    del grad_attn
    grad_qkv0, g_gqkv, g_bqkv = _tfts_backward(_wide(grad_qkvt), s["qkv0"], g_qkv)
    del grad_qkvt
    grad_z = _matmul(grad_qkv0, qkv_w, dt)
    del grad_qkv0
    w1, b1 = fold_norm(ln1_w, ln1_b, g_n1, b_n1)
    dx, dw1, db1 = _layer_norm_backward(grad_z, x, s["mean1"], s["rstd1"], w1, b1)
    g_gn1, g_bn1 = _unfold_norm_grads(dw1, db1, ln1_w, ln1_b, g_n1)
    dx = dx + dx1

    grads: list[torch.Tensor | None] = [None] * _N_BLOCK
    for name, value in (
        ("g_n1", g_gn1), ("b_n1", g_bn1), ("g_qkv", g_gqkv), ("b_qkv", g_bqkv), ("g_p", g_gp), ("b_p", g_bp),
        ("g_n2", g_gn2), ("b_n2", g_bn2), ("g_f1", g_gf1), ("b_f1", g_bf1), ("g_f2", g_gf2), ("b_f2", g_bf2),
    ):  # fmt: skip
        grads[BLOCK_TENSORS.index(name)] = value
    return dx, grads, g_adapter


_SAVED = ("mean1", "rstd1", "qkv0", "proj0", "h1", "y2", "s0", "d")
_MASKS = ("m1", "dmask", "m2")


class FusedBlockFunction(torch.autograd.Function):
    """One pre-norm DAPT block as one autograd node (see the module docstring).

    ``apply(spec, x, *block_tensors, *adapter_tensors)`` → ``(out, pooled)``: the block output
    ``(B, L, C)`` and the pooled prompt activation ``(B, 1, C)`` (None without a prompt).
    ``block_tensors`` are the 24 tensors of :data:`BLOCK_TENSORS` (None where a site has no TFTS or the
    projection no bias); ``adapter_tensors`` the 8 of :data:`ADAPTER_TENSORS`.
    """

    @staticmethod
    def forward(ctx: Any, spec: BlockSpec, x: torch.Tensor, *tensors: torch.Tensor | None) -> Any:
        t, a = tensors[:_N_BLOCK], tensors[_N_BLOCK:]
        with torch.autocast(x.device.type, enabled=False):
            cast = cast_products(t, spec.dtype)
            out, pooled, saved = _block_forward(spec, x, cast, a, None)
        # fused: backward uses this call's casts; recompute keeps the least and casts again in backward
        kept = [saved[k] for k in _MASKS] if spec.recompute else [saved[k] for k in _SAVED + _MASKS]
        ctx.spec = spec
        ctx.save_for_backward(x, *(t if spec.recompute else cast), *a, *kept)
        ctx.set_materialize_grads(False)
        return out, pooled

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor | None, grad_pooled: torch.Tensor | None) -> Any:
        spec: BlockSpec = ctx.spec
        x, *rest = ctx.saved_tensors
        tensors, kept = rest[: _N_BLOCK + len(ADAPTER_TENSORS)], rest[_N_BLOCK + len(ADAPTER_TENSORS) :]
        t, a = tensors[:_N_BLOCK], tensors[_N_BLOCK:]
        with torch.autocast(x.device.type, enabled=False):
            if spec.recompute:
                t = cast_products(t, spec.dtype)
                with torch.no_grad():
                    _, _, saved = _block_forward(spec, x, t, a, tuple(kept))
            else:
                saved = dict(zip(_SAVED + _MASKS, kept, strict=True))
            if grad_out is None:
                grad_out = torch.zeros_like(x)
            dx, g_block, g_adapter = _block_backward(spec, grad_out, grad_pooled, x, t, a, saved)
        grads = [None if g is None else g.to(p.dtype) for g, p in zip(g_block, t, strict=True)]
        grads += [g.to(p.dtype) for g, p in zip(g_adapter, a, strict=True)]
        return (None, dx.to(x.dtype), *grads)
