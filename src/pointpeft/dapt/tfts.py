"""TFTS: the per-channel scale-and-shift that DAPT places after the frozen operations, and the wrappers
that put it there."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from pointpeft.dapt.backbone_copies import CopiesLink
from pointpeft.dapt.call_context import current_call
from pointpeft.dapt.functional import fold_tfts_into_norm, tfts


def hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward or backward hooks (a fold that bypasses its forward would skip them)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
    )


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
        return tfts(x, self.gamma, self.beta)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def folded_layer_norm(norm: nn.Module, scale_shift: TFTS | None, x: Any) -> torch.Tensor | None:
    """``TFTS(norm(x))`` as one LayerNorm with the TFTS folded into its affine, which keeps only ``x`` for
    backward; None unless ``norm`` is a plain, frozen, hook-free ``nn.LayerNorm`` and ``scale_shift`` a
    TFTS."""
    if (
        scale_shift is None
        or type(norm) is not nn.LayerNorm
        or type(scale_shift) is not TFTS
        or not isinstance(x, torch.Tensor)
        or hooked(norm)
        or hooked(scale_shift)
        or any(p.requires_grad for p in norm.parameters())
    ):
        return None
    weight, bias = fold_tfts_into_norm(norm.weight, norm.bias, scale_shift.gamma, scale_shift.beta)
    return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)


class AdapterModules(nn.ModuleDict):
    """The DAPT modules of one insertion site, one per adapter name (``"default"``, ...)."""


class DAPTWrapper(nn.Module):
    """Base for modules that wrap a frozen ``base_layer`` (peft's convention).

    Attributes the wrapper lacks are looked up on ``base_layer``, so backbone code that reads, for example,
    ``self.qkv.out_features`` keeps working. Removing every ``.base_layer`` segment from a parameter name of
    the wrapped model gives the backbone's original name.

    Attributes:
        base_layer: the frozen module.
        active_adapter: the adapter whose modules this wrapper runs, or None to run ``base_layer`` bare
            (set on every wrapper by :meth:`pointpeft.DAPTModel.set_adapter`).
        execution: ``"fused"``, ``"recompute"`` or ``"plain"`` (set by
            :attr:`pointpeft.DAPTModel.execution`).
        link: the model's :class:`~pointpeft.dapt.backbone_copies.CopiesLink`, shared by its wrappers.
    """

    base_layer: nn.Module

    def __init__(self, base_layer: nn.Module, link: CopiesLink) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active_adapter: str | None = None
        self.execution = "fused"
        self.link = link

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def active_module(self, modules: AdapterModules) -> Any:
        """The active adapter's module among ``modules``, or None (no adapter active, or none there)."""
        name = self.active_adapter
        return modules[name] if name is not None and name in modules else None


class ScaleShiftAfter(DAPTWrapper):
    """Runs a frozen module, then the active adapter's :class:`TFTS` on its output.

    A tuple output (``nn.MultiheadAttention`` returns ``(out, weights)``) gets the TFTS on its first
    element, which for an ``nn.MultiheadAttention`` is its ``out_proj`` output.

    Args:
        base_layer: the frozen module.
        link: the model's :class:`~pointpeft.dapt.backbone_copies.CopiesLink`.
        width: D, the channels of the output.
        role: the site's role in its block (``"norm1"``, ``"qkv"``, ..., see
            :meth:`pointpeft.BlockLayout.tfts_sites`), or None outside the blocks.

    Shapes:
        forward: whatever ``base_layer`` takes → the output of ``base_layer`` (plus the active adapter's
        module beside it, if any, for an ``nn.Linear``), ``(..., D)``.
    """

    def __init__(self, base_layer: nn.Module, link: CopiesLink, width: int, role: str | None = None) -> None:
        super().__init__(base_layer, link)
        self.tfts = AdapterModules()
        self.beside = AdapterModules()  # per adapter, a module beside a frozen nn.Linear (LoRA's update)
        self.width = width
        self.role = role

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tfts = self.active_module(self.tfts)
        beside = self.active_module(self.beside)
        if (
            tfts is not None
            and beside is None
            and len(args) == 1
            and not kwargs
            and self.execution != "plain"
        ):
            folded = folded_layer_norm(self.base_layer, tfts, args[0])
            if folded is not None:
                return folded
        out = self.base_layer(*args, **kwargs)
        if beside is not None:  # only beside an nn.Linear, whose one input is args[0] (or kwargs["input"])
            out = out + beside(args[0] if args else kwargs["input"])
        if tfts is None:
            return out
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            return (tfts(out[0]), *out[1:])
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"{type(self.base_layer).__name__} returned a {type(out).__name__}, not a tensor of width "
                f"{self.width}, so no TFTS can follow it; name the module that outputs the tokens in the layout "
                "(BackboneLayout.patch_encoder / BlockLayout paths) or None to skip this TFTS"
            )
        return tfts(out)


class PatchEncoderSite(ScaleShiftAfter):
    """The patch encoder (``layout.patch_encoder``): a :class:`ScaleShiftAfter` that also leaves its output,
    the patch tokens, in the call context (``patch_tokens``) for a prompt made at block 0 (IDPT with
    ``prompt_layer=0``). Outside a model's forward (no call open) nothing is recorded.

    Shapes:
        forward: whatever ``base_layer`` takes → its output (then the TFTS, if any), ``(B, G, C)``.
    """

    def __init__(self, base_layer: nn.Module, link: CopiesLink, width: int) -> None:
        super().__init__(base_layer, link, width)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)
        call = current_call()
        if call is not None and isinstance(out, torch.Tensor):
            call.patch_tokens = out
        return out


class GroupingSite(DAPTWrapper):
    """The backbone's grouping module (``group_divider``: FPS + kNN, returning ``(neighborhood, centers)``),
    put in place when an adapter of a method that reads the patch centres is added (PointGST). Where the
    active adapter has a maker here, it makes the forward's graph bases from the centres and leaves them in
    the call context (``graph_bases``) for every block. What the module returns is unchanged; outside a
    model's forward (no call open) nothing is made.

    Attributes:
        graph_bases: per adapter, the module whose ``forward(centers (B, G, 3))`` gives the graph bases
            (:class:`~pointpeft.methods.pointgst.GraphBasesMaker`).

    Shapes:
        forward: whatever ``base_layer`` takes → its output, a tuple whose second element is the centres
        ``(B, G, 3)`` in the patch tokens' order.
    """

    def __init__(self, base_layer: nn.Module, link: CopiesLink) -> None:
        super().__init__(base_layer, link)
        self.graph_bases = AdapterModules()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        maker = self.active_module(self.graph_bases)
        call = current_call()
        if maker is not None and call is not None:
            centers = out[1] if isinstance(out, tuple) and len(out) >= 2 else None
            if not isinstance(centers, torch.Tensor) or centers.dim() != 3 or centers.shape[-1] != 3:
                got = type(out).__name__ if centers is None else f"{type(centers).__name__} {_shape(centers)}"
                raise TypeError(
                    f"the grouping module {type(self.base_layer).__name__} must return (neighborhood, centers) "
                    f"with centers (B, G, 3), the patch centres in the tokens' order, got {got}"
                )
            call.graph_bases = maker(centers)
        return out


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else repr(value)[:40]


class PackedQKVScaleShift(DAPTWrapper):
    """The active adapter's modules at the projections of an ``nn.MultiheadAttention``: a TFTS on its packed
    query/key/value projection, and modules beside that projection and beside ``out_proj`` (LoRA's updates).

    torch computes both projections from their weights inside ``F.multi_head_attention_forward``, so:

    - A TFTS alone is folded into the packed projection: ``(x Wᵀ + b) * γ + β = x (W * γ[:, None])ᵀ +
      (b * γ + β)``, run through the attention's own forward with the projection replaced
      (``torch.func.functional_call``). Equal to a TFTS after a separate qkv Linear up to float rounding.
    - With a module beside a projection, this wrapper computes the projections itself,
      ``q, k, v = chunks of TFTS(x Wᵀ + b + beside(x))`` (each of query, key and value through its third),
      and runs the attention's forward on them with identity projections, whose products are exact (one
      term of each sum is ``1 · x``, the others ``0 · x``), and then ``out = h W_oᵀ + b_o + beside_out(h)``
      on the attention's heads output ``h``. Masks, dropout, ``need_weights`` and the layout stay torch's.

    Attributes:
        tfts: per adapter, the TFTS of the packed projection's ``3C`` outputs.
        beside: per adapter, a module ``(..., C) → (..., 3C)`` added to the packed projection's output.
        beside_out: per adapter, a module ``(..., C) → (..., C)`` added to ``out_proj``'s output.

    Shapes:
        forward: the arguments of ``nn.MultiheadAttention`` → its ``(out, weights)``.
    """

    def __init__(self, base_layer: nn.MultiheadAttention, link: CopiesLink, width: int) -> None:
        super().__init__(base_layer, link)
        self.tfts = AdapterModules()
        self.beside = AdapterModules()
        self.beside_out = AdapterModules()
        self.width = width

    def multihead_attention(self) -> nn.MultiheadAttention:
        """The wrapped ``nn.MultiheadAttention``."""
        attention = self.base_layer
        assert isinstance(attention, nn.MultiheadAttention)
        return attention

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tfts = self.active_module(self.tfts)
        beside, beside_out = self.active_module(self.beside), self.active_module(self.beside_out)
        attention = self.multihead_attention()
        if beside is not None or beside_out is not None:
            return self._with_updates(tfts, beside, beside_out, args, kwargs)
        if tfts is None:
            return attention(*args, **kwargs)
        weight = attention.in_proj_weight * tfts.gamma[:, None]
        bias = (
            tfts.beta if attention.in_proj_bias is None else attention.in_proj_bias * tfts.gamma + tfts.beta
        )
        return functional_call(attention, {"in_proj_weight": weight, "in_proj_bias": bias}, args, kwargs)

    def _with_updates(
        self,
        tfts: TFTS | None,
        beside: nn.Module | None,
        beside_out: nn.Module | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention = self.multihead_attention()
        bound = inspect.signature(attention.forward).bind(*args, **kwargs)
        inputs = [bound.arguments[name] for name in ("query", "key", "value")]
        weight, bias = attention.in_proj_weight, attention.in_proj_bias
        projected: dict[int, torch.Tensor] = {}  # by id: self-attention projects its one input once
        for x in inputs:
            if id(x) not in projected:
                full = F.linear(x, weight, bias)  # (..., 3C)
                if beside is not None:
                    full = full + beside(x)
                projected[id(x)] = full if tfts is None else tfts(full)
        for index, name in enumerate(("query", "key", "value")):
            bound.arguments[name] = projected[id(inputs[index])].chunk(3, dim=-1)[index]
        dim = attention.embed_dim
        eye = torch.eye(dim, dtype=weight.dtype, device=weight.device)
        identity: dict[str, torch.Tensor] = {"in_proj_weight": eye.repeat(3, 1), "out_proj.weight": eye}
        if bias is not None:
            identity["in_proj_bias"] = torch.zeros(3 * dim, dtype=bias.dtype, device=bias.device)
        out_proj = attention.out_proj
        if out_proj.bias is not None:
            identity["out_proj.bias"] = torch.zeros_like(out_proj.bias)
        heads, weights = functional_call(attention, identity, bound.args, bound.kwargs)
        out = F.linear(heads, out_proj.weight, out_proj.bias)
        if beside_out is not None:
            out = out + beside_out(heads)
        return out, weights
