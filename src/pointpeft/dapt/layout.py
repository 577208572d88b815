"""Where a backbone keeps its blocks, norms and tokens: found by walking the module tree.

A transformer block is any module with an attention child and an MLP child (the timm / Point-MAE
shape). Inside a block, the norms and linear layers are found by their conventional names. The result is a
:class:`BackboneLayout`, plain data that a user can also write by hand for an unusual model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

ATTENTION_NAMES = ("attn", "self_attn", "attention")
MLP_NAMES = ("mlp", "ffn", "feed_forward")
NORM1_NAMES = ("norm1", "ln_1", "ln1", "norm_1")
NORM2_NAMES = ("norm2", "ln_2", "ln2", "norm_2")
QKV_NAMES = ("qkv", "to_qkv")
PROJ_NAMES = ("proj", "out_proj", "o_proj")
FC1_NAMES = ("fc1", "lin1", "c_fc")
FC2_NAMES = ("fc2", "lin2", "c_proj")
PATCH_ENCODER_NAMES = ("encoder", "patch_encoder", "patch_embed", "tokenizer")
FINAL_NORM_NAMES = ("norm", "final_norm", "norm_f", "ln_f")
TOKEN_PARAMETER_NAMES = ("cls_token", "cls_pos")
_NORM_TYPES = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


@dataclass(frozen=True)
class BlockLayout:
    """Paths of a block's sub-modules, relative to the block.

    ``mlp`` is required (the adapter runs beside it). A ``None`` path means the block has no such module;
    DAPT then skips the TFTS at that place.
    """

    mlp: str = "mlp"
    norm1: str | None = "norm1"
    qkv: str | None = "attn.qkv"
    proj: str | None = "attn.proj"
    norm2: str | None = "norm2"
    fc1: str | None = "mlp.fc1"
    fc2: str | None = "mlp.fc2"

    def tfts_sites(self) -> dict[str, str | None]:
        """The TFTS places of a block, in forward order: role → path."""
        return {
            "norm1": self.norm1,
            "qkv": self.qkv,
            "proj": self.proj,
            "norm2": self.norm2,
            "fc1": self.fc1,
            "fc2": self.fc2,
        }


@dataclass(frozen=True)
class BackboneLayout:
    """Where DAPT goes in a backbone. Paths are dotted module names relative to the backbone.

    Args:
        blocks: the transformer blocks, in forward order (e.g. ``("blocks.blocks.0", ...)``).
        block: the sub-module paths inside every block.
        patch_encoder: the module whose output ``(B, G, C)`` are the patch tokens (TFTS after it), or None.
        final_norm: the norm after the last block (TFTS after it), or None.
        num_global_tokens: leading tokens (CLS) that come before the prompts and patches.
        trainable_tokens: backbone parameters DAPT trains (the CLS token and its positional embedding).
    """

    blocks: tuple[str, ...]
    block: BlockLayout = field(default_factory=BlockLayout)
    patch_encoder: str | None = "encoder"
    final_norm: str | None = "norm"
    num_global_tokens: int = 1
    trainable_tokens: tuple[str, ...] = TOKEN_PARAMETER_NAMES

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "trainable_tokens", tuple(self.trainable_tokens))
        if not self.blocks:
            raise ValueError("blocks must name at least one block, got an empty list")
        if self.num_global_tokens < 0:
            raise ValueError(f"num_global_tokens must be >= 0, got {self.num_global_tokens}")


def _child(module: nn.Module, names: Sequence[str]) -> str | None:
    children = dict(module.named_children())
    return next((name for name in names if name in children), None)


def _is_block(module: nn.Module) -> bool:
    children = dict(module.named_children())
    has_attention = any(n in children for n in ATTENTION_NAMES) or any(
        isinstance(c, nn.MultiheadAttention) for c in children.values()
    )
    return has_attention and any(n in children for n in MLP_NAMES)


def _block_layout(block: nn.Module) -> BlockLayout:
    mlp = _child(block, MLP_NAMES)
    attn = _child(block, ATTENTION_NAMES)
    assert mlp is not None
    mlp_module = block.get_submodule(mlp)
    attn_module = block.get_submodule(attn) if attn is not None else None

    def inside(parent: str | None, module: nn.Module | None, names: Sequence[str]) -> str | None:
        if module is None:
            return None
        name = _child(module, names)
        return None if name is None else f"{parent}.{name}"

    return BlockLayout(
        mlp=mlp,
        norm1=_child(block, NORM1_NAMES),
        qkv=inside(attn, attn_module, QKV_NAMES),
        proj=inside(attn, attn_module, PROJ_NAMES),
        norm2=_child(block, NORM2_NAMES),
        fc1=inside(mlp, mlp_module, FC1_NAMES),
        fc2=inside(mlp, mlp_module, FC2_NAMES),
    )


def _candidates_report(model: nn.Module, limit: int = 25) -> str:
    lines = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0:
            kinds = sorted({type(child).__name__ for child in module.children()})
            lines.append(
                f"  {name or '<root>'}: {type(module).__name__} of {len(module)} ({', '.join(kinds)})"
            )
    if not lines:
        lines = [f"  {name}: {type(m).__name__}" for name, m in model.named_children()]
    return "\n".join(lines[:limit]) + ("\n  ..." if len(lines) > limit else "")


def find_blocks(model: nn.Module) -> tuple[str, ...]:
    """Paths of the transformer blocks of ``model``, in order.

    Takes the outermost modules that have an attention child (``attn``/``self_attn``/``attention`` or an
    ``nn.MultiheadAttention``) and an MLP child (``mlp``/``ffn``/``feed_forward``), grouped by the container
    that holds them, and returns the largest group.

    Raises:
        ValueError: if no block is found (the message lists the containers seen and how to name the blocks
            explicitly), or if two containers hold equally many blocks.
    """
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue
        if _is_block(module):
            found.append(name)
    if not found:
        raise ValueError(
            f"no transformer blocks found in {type(model).__name__}: a block is a module with an attention "
            f"child (one of {ATTENTION_NAMES} or an nn.MultiheadAttention) and an MLP child (one of "
            f"{MLP_NAMES}). Containers seen:\n{_candidates_report(model)}\n"
            "Name the blocks explicitly: wrap_with_dapt(model, config, "
            "layout=BackboneLayout(blocks=('path.to.block0', 'path.to.block1', ...)))"
        )
    groups: dict[str, list[str]] = defaultdict(list)
    for name in found:
        groups[name.rpartition(".")[0]].append(name)
    ranked = sorted(groups.values(), key=len, reverse=True)
    if len(ranked) > 1 and len(ranked[0]) == len(ranked[1]):
        raise ValueError(
            f"ambiguous transformer blocks in {type(model).__name__}: {ranked[0]} and {ranked[1]} are equally "
            "likely; name them explicitly with layout=BackboneLayout(blocks=(...))"
        )
    return tuple(ranked[0])


def detect_layout(model: nn.Module) -> BackboneLayout:
    """Walk ``model`` and return where DAPT goes: the blocks, their sub-modules, the patch encoder, the
    final norm and the CLS parameters.

    Raises:
        ValueError: if no blocks are found, or if the blocks differ in structure.
    """
    blocks = find_blocks(model)
    block_layout = _block_layout(model.get_submodule(blocks[0]))
    for path in blocks[1:]:
        other = _block_layout(model.get_submodule(path))
        if other != block_layout:
            raise ValueError(
                f"blocks differ in structure: {blocks[0]} has {block_layout}, {path} has {other}; "
                "name the layout explicitly with layout=BackboneLayout(...)"
            )
    container = blocks[0].split(".")[0]
    top = dict(model.named_children())
    patch_encoder = next((n for n in PATCH_ENCODER_NAMES if n in top and n != container), None)
    final_norm = next((n for n in FINAL_NORM_NAMES if n in top and isinstance(top[n], _NORM_TYPES)), None)
    own = dict(model.named_parameters(recurse=False))
    tokens = tuple(n for n in TOKEN_PARAMETER_NAMES if n in own)
    return BackboneLayout(
        blocks=blocks,
        block=block_layout,
        patch_encoder=patch_encoder,
        final_norm=final_norm,
        num_global_tokens=1 if "cls_token" in own else 0,
        trainable_tokens=tokens,
    )
