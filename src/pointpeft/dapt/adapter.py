"""The Dynamic Adapter and the wrappers that run it beside a block's feed-forward network; the site of an
adapter on the residual stream before the FFN branch (AdaptFormer's)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pointpeft.dapt.backbone_copies import CopiesLink
from pointpeft.dapt.call_context import CallContext, current_call
from pointpeft.dapt.tfts import AdapterModules, DAPTWrapper, ScaleShiftAfter


class DynamicAdapter(nn.Module):
    """Bottleneck adapter whose output is scaled per token by a learned, non-negative scalar.

    For each token ``u``: ``ū = LayerNorm(u)``, ``s = ReLU(w_s·ū + b_s)`` (a scalar per token),
    ``h = Dropout(GELU(W_d ū + b_d))``, output ``(W_u h + b_u) * s``. The up-projection starts at zero, so a
    fresh adapter outputs exactly zero.

    Args:
        dim: token width C.
        rank: bottleneck width r.
        dropout: dropout probability on ``h``.

    Shapes:
        forward: ``(B, L, C)`` → ``(B, L, C)``.
    """

    def __init__(self, dim: int, rank: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.scale = nn.Linear(dim, 1)
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.dropout = dropout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's init: default (Kaiming-uniform) weights with zero bias for ``scale`` and ``down``;
        zeros for ``up``; unit LayerNorm."""
        with torch.no_grad():
            for linear in (self.scale, self.down):
                nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
                nn.init.zeros_(linear.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
            self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        scale = F.relu(self.scale(x))
        hidden = F.dropout(F.gelu(self.down(x)), p=self.dropout, training=self.training)
        out: torch.Tensor = self.up(hidden) * scale
        return out

    def extra_repr(self) -> str:
        return f"rank={self.down.out_features}, dropout={self.dropout}"


def run_adapter(adapter: nn.Module, x: torch.Tensor, call: CallContext | None) -> torch.Tensor:
    """The adapter's output for ``x``, left in the call context (when one is open) for the block's prompt."""
    adapted: torch.Tensor = adapter(x)
    if call is not None:
        call.adapter_out = adapted
    return adapted


class ParallelAdapter(DAPTWrapper):
    """Runs the active adapter's :class:`DynamicAdapter` beside a block's frozen FFN on the same input:
    ``mlp(u) + adapter(u)``.

    Replacing the block's ``mlp`` with this wrapper puts the adapter inside the FFN's residual branch, so
    it shares the FFN's DropPath. The adapter output is left in the call context for the block's internal
    prompt.

    Shapes:
        forward: ``u (B, L, C)`` (or ``(L, B, C)``) → same shape.
    """

    def __init__(self, base_layer: nn.Module, link: CopiesLink) -> None:
        super().__init__(base_layer, link)
        self.adapter = AdapterModules()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapter = self.active_module(self.adapter)
        if adapter is None:
            bare: torch.Tensor = self.base_layer(x)
            return bare
        adapted = run_adapter(adapter, x, current_call())  # first: the random draws in the original order
        out: torch.Tensor = self.base_layer(x) + adapted
        return out


class AdapterInput(DAPTWrapper):
    """Records the input of a block's FFN for an adapter whose output is added later (:class:`AdapterOutput`).

    Shapes:
        forward: ``u (B, L, C)`` → the output of ``base_layer``.
    """

    def __init__(self, base_layer: nn.Module, link: CopiesLink) -> None:
        super().__init__(base_layer, link)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        call = current_call()
        if self.active_adapter is not None and call is not None:
            call.adapter_in = x
        return self.base_layer(x, *args, **kwargs)


class AdapterOutput(DAPTWrapper):
    """Adds the active adapter's output, computed from the FFN input that :class:`AdapterInput` recorded,
    to the output of ``base_layer`` (timm's LayerScale ``ls2``, or ``linear2`` of
    ``nn.TransformerEncoderLayer``).

    Shapes:
        forward: ``(B, L, C)`` → ``(B, L, C)``.
    """

    def __init__(self, base_layer: nn.Module, link: CopiesLink) -> None:
        super().__init__(base_layer, link)
        self.adapter = AdapterModules()

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out: torch.Tensor = self.base_layer(*args, **kwargs)
        adapter = self.active_module(self.adapter)
        if adapter is None:
            return out
        call = current_call()
        ffn_in = None
        if call is not None:
            ffn_in, call.adapter_in = call.adapter_in, None
        if ffn_in is None:
            raise RuntimeError(
                "the adapter's output site ran before its input site: the block must call the module named "
                "by layout.block.mlp before the one named by layout.block.adapter_out"
            )
        return out + run_adapter(adapter, ffn_in, call)


class StreamAdapterSite(ScaleShiftAfter):
    """The norm before a block's FFN (``layout.block.norm2``): a scale-and-shift site (:class:`ScaleShiftAfter`,
    role ``"norm2"``) that also runs the active adapter's residual-stream adapter on the norm's input.

    In a pre-norm block the norm's input is the residual stream after the attention residual,
    ``X₁ = X + DropPath(Attn(LN₁ X))``, un-normalised. The adapter's output ``A(X₁)`` is handed, through the
    call context, to the block's wrapper (:class:`~pointpeft.dapt.prompt.DAPTBlock`), which adds it to the
    block's output: ``X_out = X₁ + DropPath(MLP(LN₂ X₁)) + A(X₁)``, outside the FFN's DropPath (AdaptFormer's
    parallel adapter). What the norm itself returns is unchanged. Called outside a model's forward (no call
    open), the adapter's output has nowhere to go and is not computed. An adapter with a true
    ``reads_graph_bases`` attribute (PointGST's :class:`~pointpeft.methods.pointgst.PCSA`) is called as
    ``adapter(stream, bases)`` with the call's ``graph_bases``; it mixes tokens, so it reads the stream
    batch-first: in a sequence-first block (``seq_first``) it gets ``stream.transpose(0, 1)`` and its output
    is transposed back. Other adapters act on each token alone and read the stream as it is.

    Args:
        base_layer: the norm.
        link: the model's shared backbone state.
        width: C, the norm's output width.
        seq_first: the block's tokens are ``(L, B, C)`` (``nn.MultiheadAttention`` blocks, PointGPT).

    Attributes:
        adapter: the residual-stream adapter of each adapter name that has one.

    Shapes:
        forward: ``x (B, L, C)`` (or ``(L, B, C)``) → the norm's output (then the TFTS, if any), same shape;
            the adapter's output ``(B, L, C)`` (or ``(L, B, C)``) goes to the call context.
    """

    def __init__(self, base_layer: nn.Module, link: CopiesLink, width: int, seq_first: bool = False) -> None:
        super().__init__(base_layer, link, width, "norm2")
        self.adapter = AdapterModules()
        self.seq_first = seq_first

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        adapter = self.active_module(self.adapter)
        if adapter is not None:
            call = current_call()
            if call is not None:
                stream = args[0] if args else kwargs["input"]
                # first: the random draws in the block's order
                if getattr(adapter, "reads_graph_bases", False):  # PointGST's PCSA
                    if call.graph_bases is None:
                        raise RuntimeError(
                            f"{type(adapter).__name__} needs the graph bases of the patch centres, which the "
                            "site of the backbone's grouping module (group_divider) computes when the backbone's "
                            "forward calls it; this forward ran no such module before the blocks"
                        )
                    if self.seq_first:
                        call.block_addend = adapter(stream.transpose(0, 1), call.graph_bases).transpose(0, 1)
                    else:
                        call.block_addend = adapter(stream, call.graph_bases)
                else:
                    call.block_addend = adapter(stream)
        return super().forward(*args, **kwargs)
