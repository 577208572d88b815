"""Which wrapped blocks the fused execution can run, found from the roles of their modules, and the tensors
it runs them with.

The fused block (:class:`~pointpeft.dapt.fused.FusedBlockFunction`) computes one pre-norm block::

    x = x + DropPath(proj(attention(qkv(norm1(x)))))
    x = x + DropPath(fc2(GELU(fc1(norm2(x)))) + adapter(norm2(x)))

with a TFTS after every frozen operation, without calling the block's modules. It runs a block when the
block's modules play those roles, as the :class:`~pointpeft.dapt.layout.BlockLayout` names them (whatever the
classes: pointpeft's own Point-MAE, the official Point-MAE / ACT / Point-BERT / ReCon model files, timm-like
blocks): ``norm1``/``norm2`` LayerNorms over the token width; an attention module with ``num_heads``
(and ``scale``, default ``head_dim ** -0.5``) holding the ``qkv`` and ``proj`` Linears and nothing but
dropout besides; an FFN holding ``fc1``, one exact GELU, ``fc2`` and dropout; DropPath as ``drop_path``
(or ``drop_path1``/``drop_path2`` of one rate), a module with a ``drop_prob`` or an ``nn.Identity``; no
LayerScale, no hooks, nothing frozen asking for a gradient, no dropout active in train mode. Whether the
block's own forward is that pre-norm function cannot be read from its modules, so every block is also
checked once, when its first adapter is added: the fused block and the block's own forward run on a small
random input and must agree (:meth:`~pointpeft.dapt.prompt.DAPTBlock.check_structure`). Every other block
runs plain; :meth:`pointpeft.DAPTModel.execution_report` says which path each block takes and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pointpeft.dapt.adapter import ParallelAdapter
from pointpeft.dapt.fused import BlockSpec, adapter_tensors, autocast_dtype, hooked
from pointpeft.dapt.layout import BlockLayout
from pointpeft.dapt.tfts import TFTS, ScaleShiftAfter

EXECUTIONS = ("fused", "recompute", "plain")
_DROP_PATH_NAMES = (("drop_path",), ("drop_path1", "drop_path2"))
_LAYER_SCALE_NAMES = ("ls1", "ls2", "gamma_1", "gamma_2")
_NEUTRAL = (nn.Dropout, nn.Identity)


def check_execution(value: Any) -> str:
    """``value`` if it names an execution mode (:data:`EXECUTIONS`), else a ValueError."""
    if value not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {value!r}")
    return str(value)


def frozen(*modules: nn.Module) -> bool:
    """No parameter of ``modules`` (their own, not their children's) asks for a gradient."""
    return not any(p.requires_grad for m in modules for p in m.parameters(recurse=False))


@dataclass(frozen=True)
class BlockParts:
    """The modules of a block in the roles of the fused block (see the module docstring).

    Attributes:
        sites: ``(frozen module, active TFTS or None)`` after norm1, qkv, proj, norm2, fc1, fc2.
        ffn: the FFN wrapper carrying the adapter.
        adapter: the active Dynamic Adapter.
        num_heads: attention heads.
        scale: attention logit scale.
        drop_rate: DropPath probability of both residual branches.
        dropouts: the dropout modules of the attention and the FFN.
    """

    sites: tuple[tuple[nn.Module, TFTS | None], ...]
    ffn: ParallelAdapter
    adapter: nn.Module
    num_heads: int
    scale: float
    drop_rate: float
    dropouts: tuple[nn.Module, ...]


def _role(block: nn.Module, path: str | None, role: str) -> tuple[nn.Module | None, str]:
    if path is None:
        return None, f"the layout names no {role} module"
    try:
        return block.get_submodule(path), ""
    except AttributeError:
        return None, f"the block has no module {path!r} ({role})"


def _site(
    block: nn.Module, path: str | None, role: str, base_type: type[nn.Module], active: str
) -> tuple[tuple[nn.Module, TFTS | None] | None, str]:
    module, why = _role(block, path, role)
    if module is None:
        return None, why
    if type(module) is not ScaleShiftAfter or type(module.base_layer) is not base_type:
        return None, f"{role} ({path}) is not an nn.{base_type.__name__} with a TFTS after it"
    if hooked(module) or hooked(module.base_layer):
        return None, f"{role} ({path}) has hooks"
    tfts = module.tfts[active] if active in module.tfts else None
    if tfts is not None and (type(tfts) is not TFTS or hooked(tfts)):
        return None, f"the TFTS after {role} ({path}) is not a plain TFTS"
    return (module.base_layer, tfts), ""


def _children_besides(module: nn.Module, known: set[str]) -> list[str]:
    return [n for n, c in module.named_children() if n not in known and not isinstance(c, _NEUTRAL)]


def _drop_rate(block: nn.Module) -> tuple[float | None, str]:
    children = dict(block.named_children())
    for names in _DROP_PATH_NAMES:
        if all(n in children for n in names):
            rates = []
            for name in names:
                module = children[name]
                if hooked(module):
                    return None, f"{name} has hooks"
                if type(module) is nn.Identity:
                    rates.append(0.0)
                    continue
                rate = getattr(module, "drop_prob", None)
                if isinstance(rate, bool) or not isinstance(rate, (int, float)) or list(module.children()):
                    return None, f"{name} ({type(module).__name__}) is not a DropPath with a drop_prob"
                rates.append(float(rate))
            if len(set(rates)) != 1:
                return None, f"the two DropPath rates differ ({rates})"
            return rates[0], ""
    return 0.0, ""


def block_parts(
    block: nn.Module, layout: BlockLayout, active: str | None, dim: int
) -> tuple[BlockParts | None, str]:
    """``(parts, "")`` if the modules of ``block`` (the frozen block inside a DAPT block, tokens of width
    ``dim``) can be run by the fused block with adapter ``active``, else ``(None, why not)``. This reads the
    modules only; it does not check the block's forward (see the module docstring) or the train-mode
    conditions (:func:`train_mode_problem`)."""
    if active is None:
        return None, "no adapter is active"
    if hooked(block):
        return None, "the block has hooks"
    if layout.adapter_out is not None and layout.adapter_out != layout.mlp:
        return None, f"the adapter is added after {layout.adapter_out!r}, not beside the FFN"
    for name in _LAYER_SCALE_NAMES:
        scale = getattr(block, name, None)
        if isinstance(scale, nn.Module) and type(scale) is not nn.Identity:
            return None, f"the block has LayerScale ({name}), which the fused block does not compute"
    attn, why = _role(block, layout.attn, "attention")
    if attn is None:
        return None, why
    ffn, why = _role(block, layout.mlp, "FFN")
    if ffn is None:
        return None, why
    if type(ffn) is not ParallelAdapter or hooked(ffn) or hooked(ffn.base_layer):
        return None, f"the FFN ({layout.mlp}) is not a hook-free module carrying the adapter beside it"
    sites: list[tuple[nn.Module, TFTS | None]] = []
    for role, base_type in (
        ("norm1", nn.LayerNorm), ("qkv", nn.Linear), ("proj", nn.Linear),
        ("norm2", nn.LayerNorm), ("fc1", nn.Linear), ("fc2", nn.Linear),
    ):  # fmt: skip
        site, why = _site(block, getattr(layout, role), role, base_type, active)
        if site is None:
            return None, why
        sites.append(site)
    for role in ("norm1", "norm2"):
        norm = sites[0 if role == "norm1" else 3][0]
        if tuple(getattr(norm, "normalized_shape", ())) != (dim,):
            return None, f"{role} does not normalise over the token width {dim}"
    # The roles' modules must sit where the fused block expects them, with nothing else that computes.
    prefix = {
        "qkv": f"{layout.attn}.",
        "proj": f"{layout.attn}.",
        "fc1": f"{layout.mlp}.",
        "fc2": f"{layout.mlp}.",
    }
    for role, want in prefix.items():
        path = getattr(layout, role)
        if not path.startswith(want) or "." in path[len(want) :]:
            return None, f"{role} ({path}) is not a child of the module named {want[:-1]!r}"
    attn_extra = _children_besides(attn, {layout.qkv.rpartition(".")[2], layout.proj.rpartition(".")[2]})
    if attn_extra or hooked(attn):
        return None, f"the attention has modules the fused block does not compute ({attn_extra}) or hooks"
    num_heads = getattr(attn, "num_heads", None)
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
        return None, f"the attention has no num_heads that divides the width {dim}"
    scale = getattr(attn, "scale", (dim // num_heads) ** -0.5)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        return None, "the attention's scale is not a number"
    mlp = ffn.base_layer
    fc_names = {layout.fc1.rpartition(".")[2], layout.fc2.rpartition(".")[2]}
    acts = [c for n, c in mlp.named_children() if n not in fc_names and not isinstance(c, _NEUTRAL)]
    if len(acts) != 1 or type(acts[0]) is not nn.GELU or acts[0].approximate != "none" or hooked(acts[0]):
        return None, "the FFN does not hold exactly fc1, one exact nn.GELU, fc2 and dropout"
    drop_rate, why = _drop_rate(block)
    if drop_rate is None:
        return None, why
    known = {layout.attn, layout.mlp, layout.norm1, layout.norm2, "drop_path", "drop_path1", "drop_path2"}
    extra = [n for n in _children_besides(block, known) if n not in _LAYER_SCALE_NAMES]
    if extra:
        return None, f"the block has modules the fused block does not compute: {extra}"
    if not frozen(*(site[0] for site in sites)):
        return None, "a frozen module of the block asks for a gradient"
    adapter = ffn.adapter[active] if active in ffn.adapter else None
    if adapter is None or not hasattr(adapter, "fused_spec") or adapter.fused_spec() is None:
        return None, "the adapter is not a plain DynamicAdapter"
    dropouts = tuple(m for owner in (attn, mlp) for m in owner.children() if isinstance(m, nn.Dropout))
    parts = BlockParts(tuple(sites), ffn, adapter, num_heads, float(scale), drop_rate, dropouts)
    return parts, ""


def train_mode_problem(parts: BlockParts, training: bool) -> str:
    """Why the fused block cannot run ``parts`` in the given mode ("" if it can): dropout in train mode."""
    if training and any(float(m.p) > 0 for m in parts.dropouts):
        return "dropout is active in the attention or the FFN (train mode with p > 0)"
    return ""


def block_plan(
    parts: BlockParts, x: torch.Tensor, *, training: bool, recompute: bool, prompt: bool
) -> tuple[BlockSpec, list[torch.Tensor | None]]:
    """``(spec, tensors)`` for :class:`~pointpeft.dapt.fused.FusedBlockFunction` on ``x (B, L, C)``."""
    tensors: list[torch.Tensor | None] = []
    for base, tfts in parts.sites:
        tensors += [base.weight, base.bias]
        tensors += [None, None] if tfts is None else [tfts.gamma, tfts.beta]
    norm1, norm2 = parts.sites[0][0], parts.sites[3][0]
    spec = BlockSpec(
        num_heads=parts.num_heads,
        scale=parts.scale,
        eps1=float(norm1.eps),
        eps2=float(norm2.eps),
        keep=1.0 - parts.drop_rate if training else 1.0,
        adapter=parts.adapter.fused_spec(),
        dtype=autocast_dtype(x.device.type) or x.dtype,
        recompute=recompute,
        prompt=prompt,
    )
    return spec, tensors + adapter_tensors(parts.adapter)
