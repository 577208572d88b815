"""Named layouts of the backbones users bring: Point-MAE / ACT, Point-BERT, ReCon, PointGPT, openpoints'
PointViT, timm's ViT and ``nn.TransformerEncoder``.

A preset fixes where the blocks are and what is inside them; the patch encoder and the global tokens are
then found as :func:`~pointpeft.dapt.layout.detect_layout` finds them, and the final norm by structure
alone (:func:`~pointpeft.dapt.layout.find_final_norm`: no forward runs), unless the preset names it
(PointGPT's ``blocks.ln_f``). Pass the name as
``wrap_with_dapt(model, config, layout="pointgpt")``; a model that does not have the preset's structure gets
a ValueError saying what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from pointpeft.dapt.layout import (
    BackboneLayout,
    BlockLayout,
    find_final_norm,
    find_global_tokens,
    find_patch_encoder,
    trainable_token_paths,
)

# Point-MAE's block: norm1, attn.qkv, attn.proj, drop_path, norm2, mlp.fc1, mlp.fc2 (timm 0.4-style).
_POINT_MAE_BLOCK = BlockLayout()
_MHA_BLOCK = BlockLayout(
    mlp="mlp", attn="attn", norm1="ln_1", qkv="attn", proj="attn", norm2="ln_2", fc1="mlp.0", fc2="mlp.2"
)
_TIMM_BLOCK = BlockLayout(adapter_out="ls2")
_TORCH_LAYER = BlockLayout(
    mlp="linear1",
    adapter_out="linear2",
    attn="self_attn",
    norm1="norm1",
    qkv="self_attn",
    proj="self_attn",
    norm2="norm2",
    fc1="linear1",
    fc2="linear2",
)


def _stack(model: nn.Module, path: str, preset: str) -> tuple[str, ...]:
    try:
        container = model.get_submodule(path)
    except AttributeError:
        raise ValueError(
            f"layout preset {preset!r} expects the blocks at {path!r}, which {type(model).__name__} does not "
            "have; use layout=None to detect them or a BackboneLayout to name them"
        ) from None
    if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) == 0:
        raise ValueError(
            f"layout preset {preset!r} expects a non-empty nn.ModuleList/nn.Sequential of blocks at {path!r}, "
            f"got {type(container).__name__}"
        )
    return tuple(f"{path}.{i}" for i in range(len(container)))


def _finish(
    model: nn.Module, preset: str, blocks: tuple[str, ...], block: BlockLayout, **fixed: Any
) -> BackboneLayout:
    num_global, cls_index = find_global_tokens(model, blocks)
    values: dict[str, Any] = dict(
        blocks=blocks,
        block=block,
        patch_encoder=find_patch_encoder(model, blocks),
        final_norm=find_final_norm(model, blocks),
        num_global_tokens=num_global,
        cls_index=cls_index,
        trainable_tokens=trainable_token_paths(model, blocks),
        preset=preset,
    )
    values.update(fixed)
    return BackboneLayout(**values)


def point_mae(model: nn.Module) -> BackboneLayout:
    """Point-MAE / ACT fine-tune model (and :class:`pointpeft.backbones.PointMAE`): blocks at
    ``blocks.blocks.i``, patch encoder ``encoder``, final ``norm``, one CLS token."""
    return _finish(model, "point_mae", _stack(model, "blocks.blocks", "point_mae"), _POINT_MAE_BLOCK)


def point_bert(model: nn.Module) -> BackboneLayout:
    """Point-BERT: as Point-MAE, with the patch tokens taken after ``reduce_dim`` (256 → 384)."""
    layout = _finish(model, "point_bert", _stack(model, "blocks.blocks", "point_bert"), _POINT_MAE_BLOCK)
    if layout.patch_encoder != "reduce_dim":
        raise ValueError(
            f"layout preset 'point_bert' expects a 'reduce_dim' module in {type(model).__name__}"
        )
    return layout


def recon(model: nn.Module) -> BackboneLayout:
    """ReCon: Point-MAE blocks (plus a ``*_contrast`` stream that DAPT leaves alone) and three global
    tokens (CLS, image, text); prompts go after them, in the patch stream."""
    return _finish(
        model,
        "recon",
        _stack(model, "blocks.blocks", "recon"),
        _POINT_MAE_BLOCK,
        num_global_tokens=3,
        cls_index=0,
    )


def pointgpt(model: nn.Module) -> BackboneLayout:
    """PointGPT: ``nn.MultiheadAttention`` blocks at ``blocks.layers.i``, sequence-first, with an attention
    mask; tokens ``[sos, cls, patches]``; final norm ``blocks.ln_f`` (the extractor's own norm: the
    fine-tuning model's top-level ``norm`` is never called by its forward)."""
    blocks = _stack(model, "blocks.layers", "pointgpt")
    if not isinstance(getattr(model.get_submodule("blocks"), "ln_f", None), nn.LayerNorm):
        raise ValueError(
            f"layout preset 'pointgpt' expects the final norm at 'blocks.ln_f' (an nn.LayerNorm), which "
            f"{type(model).__name__} does not have"
        )
    return _finish(
        model,
        "pointgpt",
        blocks,
        _MHA_BLOCK,
        seq_first=True,
        num_global_tokens=2,
        cls_index=1,
        final_norm="blocks.ln_f",
    )


def _pointvit_path(model: nn.Module) -> str:
    """Where the PointViT is: the root, or the first module with ``patch_embed`` and ``blocks`` children
    (``encoder`` of openpoints' ``BaseCls``)."""
    for name, module in model.named_modules():
        children = dict(module.named_children())
        if "patch_embed" in children and isinstance(children.get("blocks"), (nn.ModuleList, nn.Sequential)):
            path: str = name
            return path
    raise ValueError(
        f"layout preset 'openpoints_pointvit' expects a PointViT (a module with 'patch_embed' and a 'blocks' "
        f"list), alone or inside a wrapper such as BaseCls.encoder; {type(model).__name__} has none"
    )


def openpoints_pointvit(model: nn.Module) -> BackboneLayout:
    """openpoints' PointViT, alone or inside ``BaseCls`` (as ``encoder``): blocks at ``blocks.i``, tokens
    after ``proj``, ``n_tokens`` global tokens."""
    root = _pointvit_path(model)
    prefix = f"{root}." if root else ""
    blocks = _stack(model, f"{prefix}blocks", "openpoints_pointvit")
    # patch_embed returns (points, features); the tokens come out of proj (absent when the widths agree).
    vit = model.get_submodule(root)
    patch_encoder = f"{prefix}proj" if isinstance(getattr(vit, "proj", None), nn.Module) else None
    return _finish(model, "openpoints_pointvit", blocks, _POINT_MAE_BLOCK, patch_encoder=patch_encoder)


def timm_vit(model: nn.Module) -> BackboneLayout:
    """timm's ``VisionTransformer`` blocks (``blocks.i``): the adapter's output is added after the
    LayerScale ``ls2``, so the frozen LayerScale (init 1e-5) does not mute it."""
    return _finish(model, "timm_vit", _stack(model, "blocks", "timm_vit"), _TIMM_BLOCK)


def torch_transformer_encoder(model: nn.Module) -> BackboneLayout:
    """The first ``nn.TransformerEncoder`` in the model (its ``layers.i``), batch-first or not; the final
    norm is the encoder's ``norm`` if it has one."""
    path = next((n for n, m in model.named_modules() if isinstance(m, nn.TransformerEncoder)), None)
    if path is None:
        raise ValueError(
            f"layout preset 'torch_transformer_encoder' found no nn.TransformerEncoder in {type(model).__name__}"
        )
    prefix = f"{path}." if path else ""
    blocks = _stack(model, f"{prefix}layers", "torch_transformer_encoder")
    attention = model.get_submodule(blocks[0]).get_submodule("self_attn")
    return _finish(
        model, "torch_transformer_encoder", blocks, _TORCH_LAYER, seq_first=not attention.batch_first
    )


PRESETS: dict[str, Callable[[nn.Module], BackboneLayout]] = {
    "point_mae": point_mae,
    "point_bert": point_bert,
    "recon": recon,
    "pointgpt": pointgpt,
    "openpoints_pointvit": openpoints_pointvit,
    "timm_vit": timm_vit,
    "torch_transformer_encoder": torch_transformer_encoder,
}


def preset_layout(name: str, model: nn.Module) -> BackboneLayout:
    """The layout of ``model`` by the preset ``name`` (one of :data:`PRESETS`).

    Raises:
        ValueError: if ``name`` is not a preset, or ``model`` lacks the preset's structure.
    """
    if name not in PRESETS:
        raise ValueError(
            f"layout must be a BackboneLayout or one of the presets {sorted(PRESETS)}, got {name!r}"
        )
    return PRESETS[name](model)


__all__ = ["PRESETS", "preset_layout", *PRESETS]
