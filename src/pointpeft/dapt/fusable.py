"""Which wrapped blocks and sites the fused execution can run, and the tensors it runs them with.

The fused functions (:mod:`pointpeft.dapt.fused`) compute a known function without calling the backbone's
modules, so they run only where the module classes are exactly the ones whose forward they reproduce, no
hook is attached, and nothing frozen asks for a gradient. Everywhere else the plain wrappers run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pointpeft.backbones.point_mae import Attention, Block, DropPath, Mlp
from pointpeft.dapt.adapter import ParallelAdapter
from pointpeft.dapt.fused import BlockSpec, adapter_tensors, autocast_dtype, hooked
from pointpeft.dapt.tfts import TFTS, ScaleShiftAfter

EXECUTIONS = ("fused", "recompute", "plain")


def check_execution(value: Any) -> str:
    """``value`` if it names an execution mode (:data:`EXECUTIONS`), else a ValueError."""
    if value not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {value!r}")
    return value


def _site(module: nn.Module, base_type: type[nn.Module], active: str) -> tuple[nn.Module, TFTS | None] | None:
    """``(frozen base module, active TFTS or None)`` for a :class:`ScaleShiftAfter` over ``base_type``."""
    if type(module) is not ScaleShiftAfter or type(module.base_layer) is not base_type:
        return None
    if hooked(module) or hooked(module.base_layer):
        return None
    tfts = module.tfts[active] if active in module.tfts else None
    if tfts is not None and (type(tfts) is not TFTS or hooked(tfts)):
        return None
    return module.base_layer, tfts


def frozen(*modules: nn.Module) -> bool:
    """No parameter of ``modules`` (their own, not their children's) asks for a gradient."""
    return not any(p.requires_grad for m in modules for p in m.parameters(recurse=False))


def _layer_norm_ok(norm: nn.Module, dim: int) -> bool:
    return tuple(norm.normalized_shape) == (dim,)


def block_plan(
    block: nn.Module, active: str, x: torch.Tensor, *, recompute: bool, prompt: bool
) -> tuple[BlockSpec, list[torch.Tensor | None]] | None:
    """``(spec, tensors)`` for :class:`~pointpeft.dapt.fused.FusedBlockFunction` if ``block`` (the frozen
    block inside a DAPT block) is a :class:`pointpeft.backbones.point_mae.Block` wrapped at the standard
    sites, else None."""
    if type(block) is not Block or hooked(block) or x.dim() != 3:
        return None
    training = block.training
    attn, mlp, drop_path = block.attn, block.mlp, block.drop_path
    if type(attn) is not Attention or type(drop_path) is not DropPath or hooked(attn) or hooked(drop_path):
        return None
    if type(mlp) is not ParallelAdapter or type(mlp.base_layer) is not Mlp or hooked(mlp):
        return None
    ffn = mlp.base_layer
    if hooked(ffn) or type(ffn.act) is not nn.GELU or ffn.act.approximate != "none" or hooked(ffn.act):
        return None
    if training and (attn.attn_drop.p > 0 or attn.proj_drop.p > 0 or ffn.drop.p > 0):
        return None
    sites = [
        _site(block.norm1, nn.LayerNorm, active),
        _site(attn.qkv, nn.Linear, active),
        _site(attn.proj, nn.Linear, active),
        _site(block.norm2, nn.LayerNorm, active),
        _site(ffn.fc1, nn.Linear, active),
        _site(ffn.fc2, nn.Linear, active),
    ]
    if any(site is None for site in sites):
        return None
    dim = x.shape[-1]
    norm1, norm2 = sites[0][0], sites[3][0]
    if not (_layer_norm_ok(norm1, dim) and _layer_norm_ok(norm2, dim)):
        return None
    if not frozen(*(site[0] for site in sites)):
        return None
    adapter = mlp.adapter[active] if active in mlp.adapter else None
    spec_a = None if adapter is None else adapter.fused_spec()
    if spec_a is None:
        return None
    tensors: list[torch.Tensor | None] = []
    for base, tfts in sites:
        tensors += [base.weight, base.bias]
        tensors += [None, None] if tfts is None else [tfts.gamma, tfts.beta]
    dtype = autocast_dtype(x.device.type) or x.dtype
    spec = BlockSpec(
        num_heads=attn.num_heads,
        scale=float(attn.scale),
        eps1=norm1.eps,
        eps2=norm2.eps,
        keep=1.0 - drop_path.drop_prob if training else 1.0,
        adapter=spec_a,
        dtype=dtype,
        recompute=recompute,
        prompt=prompt,
    )
    return spec, tensors + adapter_tensors(adapter)
