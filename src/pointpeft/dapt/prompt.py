"""Internal prompts, and the wrappers that splice them into each block and through the final norm."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pointpeft.dapt.backbone_copies import CopiesLink
from pointpeft.dapt.call_context import CallContext, close_call, current_call, open_call
from pointpeft.dapt.execution import compiling, run_checkpointed
from pointpeft.dapt.functional import pooled_prompt
from pointpeft.dapt.tfts import TFTS, AdapterModules, DAPTWrapper, folded_layer_norm


class InternalPrompt(nn.Module):
    """Turns a block's adapter output into one prompt token: ``TFTS(mean over tokens of GELU(A))``.

    The mean runs over every token of the block's sequence (global tokens, earlier prompts and patches),
    as in the reference. The prompt has no parameters besides its TFTS.

    Args:
        tfts: the prompt's TFTS, or None to use the pooled activation as is.

    Shapes:
        forward: adapter output ``A (B, L, C)`` → prompt ``(B, 1, C)``.
    """

    def __init__(self, tfts: TFTS | None) -> None:
        super().__init__()
        self.tfts = tfts

    def forward(self, adapter_out: torch.Tensor) -> torch.Tensor:
        return self.from_pooled(pooled_prompt(adapter_out))

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The prompt from the pooled activation ``mean over tokens of GELU(A)`` ``(B, 1, C)``."""
        return pooled if self.tfts is None else self.tfts(pooled)


_KEY_PADDING_NAMES = ("key_padding_mask", "src_key_padding_mask")


def _insert(t: torch.Tensor, dim: int, at: int, new: torch.Tensor) -> torch.Tensor:
    return torch.cat((t.narrow(dim, 0, at), new, t.narrow(dim, at, t.shape[dim] - at)), dim=dim)


def pad_square_mask(mask: torch.Tensor, at: int, count: int) -> torch.Tensor:
    """Open ``count`` rows and columns at ``at`` of an attention mask ``(..., T, T)``: the prompts attend
    to every token and every token attends to them. "Allowed" is 0 for a float mask and, for a boolean
    mask, the value of entry ``(0, 0)`` (a token attending to itself), which covers both conventions
    (``nn.MultiheadAttention``: True = blocked; ``scaled_dot_product_attention``: True = allowed)."""
    fill = mask[..., :1, :1] if mask.dtype == torch.bool else torch.zeros_like(mask[..., :1, :1])
    rows = fill.expand(*mask.shape[:-2], count, mask.shape[-1])
    mask = _insert(mask, -2, at, rows)
    cols = fill.expand(*mask.shape[:-2], mask.shape[-2], count)
    return _insert(mask, -1, at, cols)


class DAPTBlock(DAPTWrapper):
    """Wraps one frozen transformer block; adds its internal prompt to the sequence.

    The backbone calls this module with the sequence it knows, ``x (B, T, C)`` (``(T, B, C)`` for a
    sequence-first block; ``T`` = global tokens + patches). The prompts made by earlier blocks are spliced
    in right after the ``num_global`` leading tokens, the block runs on ``T + P`` tokens (its FFN carries
    the adapter), the new prompt is computed from the adapter output and put first among the prompts, and
    the prompts are taken out again, so the backbone gets back ``T`` tokens. The result equals the
    reference, where the sequence itself grows: ``[CLS, P_l, …, P_0, patches]``.

    Further tensor arguments of the block are extended to the longer sequence: an attention mask
    ``(..., T, T)`` gets rows and columns that let prompts and tokens see each other, a key padding mask
    ``(B, T)`` marks the prompts as real tokens, a tensor shaped like ``x`` (a positional embedding) gets
    zeros for the prompts, and ``is_causal=True`` becomes False (the padded mask is no longer causal).

    Where the active adapter has an instance prompt at this block (IDPT's
    :class:`~pointpeft.methods.idpt.InstancePrompt`), it makes one prompt ``(B, 1, C)`` from the patch tokens
    this block receives (the previous block's output after the ``num_global`` leading tokens, before the
    backbone adds its positions; at the first block, the patch encoder's output), and the prompt is carried
    from here on like the internal prompts. Its position is added to it at the input of this block and
    every later one (``every_block``), or once, here.

    Where the active adapter selects tokens (PointLoRA's :class:`~pointpeft.methods.pointlora.PointLoRAShared`,
    held by the first block), the first block makes them from the points the model got, and every block
    appends them after the patch tokens: its patch tokens ``x[:, g:]`` (positions added by the backbone) get
    ``+ patch_mlp(x[:, g:])``, the appended tokens their positions (every block, or once) and then
    ``+ selected_mlp(·)``, the block runs on ``T + K`` tokens, and the appended tokens are carried to the next
    block and the final norm.

    Where the active adapter has a residual-stream adapter (AdaptFormer's, held by the block's norm before
    the FFN, :class:`~pointpeft.dapt.adapter.StreamAdapterSite`), its output is added to the block's output,
    outside the FFN's DropPath.

    The carried prompts live in the call context that the model's forward opens
    (:mod:`pointpeft.dapt.call_context`); a block called on its own, outside a model's forward, carries no
    earlier prompts.

    In the ``"fused"`` and ``"recompute"`` executions, a block whose backward will run is checkpointed
    (:mod:`pointpeft.dapt.execution`): it runs its own forward, whatever it computes, and keeps for backward
    only its matrix products' outputs (or only its input).

    Args:
        base_layer: the frozen block.
        num_global: number of leading global tokens (CLS) before which no prompt goes.
        link: the model's :class:`~pointpeft.dapt.backbone_copies.CopiesLink`.
        seq_first: the block takes ``(T, B, C)``.

    Attributes:
        prompt: the :class:`InternalPrompt` of each adapter (none for an adapter without prompts, or for
            the last block when the head does not pool prompts).
        tokens: per adapter, the module whose ``forward(B)`` gives the tokens ``(B, n, C)`` that join this
            block only (VPT-Deep's prompts).
        instance_prompt: per adapter, the module that makes a prompt from the patch tokens at this block
            (IDPT's).
        selection: per adapter, at the first block, the module that selects tokens from the raw points
            (PointLoRA's :class:`~pointpeft.methods.pointlora.PointLoRAShared`).
    """

    def __init__(
        self, base_layer: nn.Module, num_global: int, link: CopiesLink, seq_first: bool = False
    ) -> None:
        super().__init__(base_layer, link)
        self.prompt = AdapterModules()
        self.tokens = AdapterModules()  # per adapter, tokens that join this block only (VPT-Deep's prompts)
        self.instance_prompt = AdapterModules()  # per adapter, a prompt made here from the patches (IDPT's)
        self.selection = AdapterModules()  # per adapter, tokens selected before the first block (PointLoRA's)
        self.num_global = num_global
        self.seq_first = seq_first

    def _extend(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        x: torch.Tensor,
        count: int,
        at: int | None = None,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The block's further arguments for ``count`` tokens inserted at ``at`` (default: after the global
        tokens)."""
        g, seq_dim = self.num_global if at is None else at, 0 if self.seq_first else 1
        length, batch = x.shape[seq_dim], x.shape[1 - seq_dim]

        def extend(value: Any, name: str | None) -> Any:
            if name == "is_causal" and value is True:
                return False
            if not isinstance(value, torch.Tensor):
                return value
            if name in _KEY_PADDING_NAMES or (
                name is None
                and value.dim() == 2
                and tuple(value.shape) == (batch, length)
                and batch != length
            ):
                return _insert(value, 1, g, torch.zeros_like(value[:, :1]).expand(batch, count))
            if value.dim() >= 2 and tuple(value.shape[-2:]) == (length, length):
                return pad_square_mask(value, g, count)
            if value.shape == x.shape:
                shape = list(value.shape)
                shape[seq_dim] = count
                return _insert(value, seq_dim, g, value.new_zeros(shape))
            return value

        return (
            tuple(extend(a, None) for a in args),
            {k: extend(v, k) for k, v in kwargs.items()},
        )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.active_adapter is None:
            bare: torch.Tensor = self.base_layer(x, *args, **kwargs)
            return bare
        call = current_call()
        if call is None:  # called on its own: a call of this block only, with no earlier prompts
            context = open_call()
            try:
                return self._forward(x, args, kwargs, context)
            finally:
                close_call(context)
        return self._forward(x, args, kwargs, call)

    def _forward(
        self, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], call: CallContext
    ) -> torch.Tensor:
        g = self.num_global
        seq_dim = 0 if self.seq_first else 1
        selector = self.active_module(self.selection)
        if selector is not None:
            self._select_tokens(selector, call)
        if call.selection is not None:
            return self._forward_with_appended(x, args, kwargs, call)
        joining = self.active_module(self.tokens)
        if joining is not None:
            return self._forward_with_tokens(x, args, kwargs, call, joining)
        maker = self.active_module(self.instance_prompt)
        if maker is not None:
            self._make_instance_prompt(maker, x, call)
        carried = call.prompts  # (B, P, C)
        n_carried = 0 if carried is None else carried.shape[1]
        if carried is not None and n_carried:
            args, kwargs = self._extend(args, kwargs, x, n_carried)
            positions = call.prompt_positions
            joining = carried if positions is None else carried + positions
            x = _insert(x, seq_dim, g, joining.transpose(0, 1) if self.seq_first else joining)
        prompt = self.active_module(self.prompt)
        out, pooled = self._run_block(x, args, kwargs, prompt is not None)
        batch_first = out.transpose(0, 1) if self.seq_first else out
        carried_out = batch_first[:, g : g + n_carried]
        if prompt is not None:
            call.prompts = torch.cat((prompt.from_pooled(pooled), carried_out), dim=1)
        else:
            call.prompts = carried_out if n_carried else None
        if n_carried:
            batch_first = torch.cat((batch_first[:, :g], batch_first[:, g + n_carried :]), dim=1)
            out = batch_first.transpose(0, 1) if self.seq_first else batch_first
        call.block_out = batch_first
        return out

    def _make_instance_prompt(self, maker: nn.Module, x: torch.Tensor, call: CallContext) -> None:
        """Make the call's prompt with ``maker`` (``forward(patches (B, G, C)) → (B, P, C)``, a ``prompt_pos``
        ``(1, 1, C)`` or None and an ``every_block`` flag) from this block's patch tokens; its position goes
        into ``call.prompt_positions`` (added at this and every later block) or, added once, into the prompt.
        A maker whose ``reads_patches`` is False gets this block's input ``(B, L, C)`` instead (it reads only
        the batch size)."""
        g = self.num_global
        if not getattr(maker, "reads_patches", True):  # fixed prompts (VPT-Shallow): only the batch size
            patches = x.transpose(0, 1) if self.seq_first else x
        elif call.block_out is not None:  # the previous block's output, without the positions
            patches = call.block_out[:, g:]
        elif call.patch_tokens is not None:  # the first block: the patch encoder's output
            patches = call.patch_tokens
        else:
            raise RuntimeError(
                "the prompt made at the first block reads the patch encoder's output, but the backbone's "
                "forward ran no patch encoder (layout.patch_encoder) before it; name the module whose output "
                "(B, G, C) are the patch tokens, or make the prompt at a later block (IDPTConfig.prompt_layer)"
            )
        if call.prompts is not None or call.prompt_positions is not None:
            raise RuntimeError(
                "an instance prompt joins a sequence that carries prompts already; one adapter makes either"
            )
        prompt = maker(patches).to(x.dtype)  # (B, P, C)
        position = maker.prompt_pos
        if position is None:  # prompts without a position (VPT-Shallow)
            call.prompts = prompt
            return
        assert isinstance(position, torch.Tensor)
        position = position.to(x.dtype)  # (1, 1, C)
        if maker.every_block:
            call.prompt_positions = position
        else:
            prompt = prompt + position
        call.prompts = prompt

    def _select_tokens(self, selector: Any, call: CallContext) -> None:
        """Select the tokens that join after the patches (``selector.select(points)``), from the points the
        model's forward got; record them, their positions and the auxiliary loss in the call."""
        if call.points is None:
            raise RuntimeError(
                "PointLoRA's token selection reads the points the model's forward got; call the model "
                "(DAPTModel.forward / forward_features), not its first block on its own"
            )
        tokens, positions, scores = selector.select(call.points)
        call.auxiliary_loss = selector.auxiliary_loss(scores)
        if selector.every_block:
            call.appended, call.appended_positions = tokens, positions
        else:
            call.appended, call.appended_positions = tokens + positions, None
        call.selection = selector

    def _forward_with_appended(
        self, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], call: CallContext
    ) -> torch.Tensor:
        """The block on ``[global; patches + patch_mlp(patches); S + selected_mlp(S)]`` with ``S`` the
        appended tokens (their positions added), and its output without them (carried in the call)."""
        g, appended = self.num_global, call.appended
        selector: Any = call.selection
        assert appended is not None
        if call.prompts is not None:
            raise RuntimeError(
                "appended tokens join a sequence that carries prompts already; one adapter makes either"
            )
        tokens = x.transpose(0, 1) if self.seq_first else x  # (B, T, C)
        length = tokens.shape[1]
        appended = appended.to(x.dtype)
        if call.appended_positions is not None:
            appended = appended + call.appended_positions.to(x.dtype)
        patches = tokens[:, g:]
        patches = patches + selector.patch_mlp(patches).to(x.dtype)
        appended = appended + selector.selected_mlp(appended).to(x.dtype)
        args, kwargs = self._extend(args, kwargs, x, appended.shape[1], at=length)
        joined = torch.cat((tokens[:, :g], patches, appended), dim=1)
        out, _ = self._run_block(joined.transpose(0, 1) if self.seq_first else joined, args, kwargs, False)
        out = out.transpose(0, 1) if self.seq_first else out  # (B, T + K, C)
        call.appended = out[:, length:]
        out = out[:, :length]
        call.block_out = out
        return out.transpose(0, 1) if self.seq_first else out

    def _forward_with_tokens(
        self,
        x: torch.Tensor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        call: CallContext,
        joining: nn.Module,
    ) -> torch.Tensor:
        """The block on its sequence with ``joining(B)`` ``(B, n, C)`` inserted after the global tokens, and
        its output without them (VPT-Deep: each block's own prompts; the method has no carried prompts)."""
        g, seq_dim = self.num_global, 0 if self.seq_first else 1
        tokens = joining(x.shape[1 - seq_dim]).to(x.dtype)  # (B, n, C)
        count = tokens.shape[1]
        args, kwargs = self._extend(args, kwargs, x, count)
        x = _insert(x, seq_dim, g, tokens.transpose(0, 1) if self.seq_first else tokens)
        out, _ = self._run_block(x, args, kwargs, False)
        batch_first = out.transpose(0, 1) if self.seq_first else out
        batch_first = torch.cat((batch_first[:, :g], batch_first[:, g + count :]), dim=1)
        call.prompts = None
        call.block_out = batch_first
        return batch_first.transpose(0, 1) if self.seq_first else batch_first

    def _run_block(
        self, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], prompt: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(block output, pooled prompt activation (B, 1, C) or None)`` for the sequence with prompts:
        the block's own forward through the wrappers, checkpointed where a backward will run."""
        if self.execution != "plain" and self.checkpointed(x):
            # "fused" keeps the matrix products only under torch.compile, which fuses what backward then
            # recomputes; eager, the selective policy runs per operation in Python and was measured slower
            # than keeping the block input alone, for no less memory (docs/benchmarks.md).
            save = self.execution == "fused" and compiling()
            # The forward's graph bases (PointGST's) go in as an argument: the recomputation in backward
            # runs in a call of its own, which has none.
            call = current_call()
            bases = None if call is None else call.graph_bases
            out, pooled = run_checkpointed(
                self._plain_block, x, args, kwargs, prompt, bases, save_products=save
            )
            return out, pooled
        return self._plain_block(x, args, kwargs, prompt)

    def checkpointed(self, x: torch.Tensor) -> bool:
        """Whether this block's forward on ``x`` runs checkpointed: a backward will run through it (grad
        mode on, and ``x`` or a parameter of the block asks for a gradient), and no CUDA graph records
        (checkpointing saves the random state to redraw dropout in backward, which a capture forbids: a
        :class:`pointpeft.CUDAGraphStep` records the plain blocks)."""
        if not torch.is_grad_enabled():
            return False
        if x.is_cuda and not compiling() and torch.cuda.is_current_stream_capturing():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def _plain_block(
        self,
        x: torch.Tensor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        prompt: bool,
        bases: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's own forward through the wrappers: ``(output, pooled prompt activation or None)``.

        Run again in backward under checkpointing, when no call is open: it then opens one of its own, with
        the forward's graph bases ``bases`` (PointGST's, computed without gradient), if any. (The call context
        is not an argument: the saved graph would hold it, and it holds the graph's outputs, a cycle through
        autograd that the garbage collector cannot free.)"""
        call = current_call()
        if call is None:
            context = open_call()
            try:
                return self._plain_block(x, args, kwargs, prompt, bases)
            finally:
                close_call(context)
        if bases is not None:
            call.graph_bases = bases
        call.adapter_out = call.block_addend = None
        out = self.base_layer(x, *args, **kwargs)
        adapter_out, call.adapter_out = call.adapter_out, None
        addend, call.block_addend = call.block_addend, None
        if addend is not None:  # a residual-stream adapter's output, outside the FFN's DropPath
            out = self._add_to_output(out, addend)
        if not prompt:
            return out, None
        if adapter_out is None:
            raise RuntimeError(
                "the block ran without calling its adapter: DAPT needs the block's forward to call its "
                "FFN module (layout.block.mlp), which pointpeft replaced"
            )
        batch_first = adapter_out.transpose(0, 1) if self.seq_first else adapter_out
        return out, pooled_prompt(batch_first)

    def _add_to_output(self, out: Any, addend: torch.Tensor) -> torch.Tensor:
        """``out + addend``, the block's output ``(B, L, C)`` (or ``(L, B, C)``) plus what its residual-stream
        adapter computed from the input of its norm before the FFN, of the same shape.

        A block whose norm reads the tokens after the global ones only (ReCon's patch stream: its global
        tokens have a norm and an FFN of their own) gets the addend ``(B, L - num_global, C)`` on those
        tokens, the last of its output."""
        seq_dim = 0 if self.seq_first else 1
        if (
            isinstance(out, torch.Tensor)
            and self.num_global > 0
            and out.dim() == addend.dim() == 3
            and out.shape[seq_dim] == addend.shape[seq_dim] + self.num_global
            and out.shape[2] == addend.shape[2]
            and out.shape[1 - seq_dim] == addend.shape[1 - seq_dim]
        ):
            head = out.narrow(seq_dim, 0, self.num_global)
            tail = out.narrow(seq_dim, self.num_global, addend.shape[seq_dim])
            return torch.cat((head, tail + addend), dim=seq_dim)
        if not isinstance(out, torch.Tensor) or out.shape != addend.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(
                f"the block's output ({got}) and the input of its norm before the FFN "
                f"({tuple(addend.shape)}) differ: a residual-stream adapter (pointpeft.AdapterConfig) needs a "
                "pre-norm block whose layout.block.norm2 reads the residual stream that the block returns "
                "(x + DropPath(Attn(norm1(x))), then x + DropPath(MLP(norm2(x)))), or all of it after the "
                "global tokens"
            )
        summed: torch.Tensor = out + addend
        return summed

    def extra_repr(self) -> str:
        return f"num_global={self.num_global}, seq_first={self.seq_first}"


class FinalNorm(DAPTWrapper):
    """Wraps the backbone's final norm: applies it (then the active adapter's output TFTS) to the tokens
    and the prompts.

    The normalised tokens are returned to the backbone; tokens and prompts are both left in the call context
    (batch-first) for the pooled head.

    Shapes:
        forward: ``x (B, T, C)`` (or ``(T, B, C)``) → same; the call's prompts ``(B, P, C)`` → ``(B, P, C)``.
    """

    def __init__(self, base_layer: nn.Module, link: CopiesLink, seq_first: bool = False) -> None:
        super().__init__(base_layer, link)
        self.tfts = AdapterModules()
        self.seq_first = seq_first

    def _transform(self, x: torch.Tensor, tfts: TFTS | None) -> torch.Tensor:
        if self.execution != "plain":
            folded = folded_layer_norm(self.base_layer, tfts, x)
            if folded is not None:
                return folded
        x = self.base_layer(x)
        return x if tfts is None else tfts(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_adapter is None:
            bare: torch.Tensor = self.base_layer(x)
            return bare
        call = current_call()
        tfts = self.active_module(self.tfts)
        out = self._transform(x, tfts)
        if call is None:  # called on its own: nothing to record
            return out
        call.final_tokens = out.transpose(0, 1) if self.seq_first else out
        if call.appended is not None:  # PointLoRA's selected tokens follow the patches (the head pools them)
            call.final_tokens = torch.cat((call.final_tokens, self._transform(call.appended, tfts)), dim=1)
        call.final_prompts = None if call.prompts is None else self._transform(call.prompts, tfts)
        return out
