"""wrap_with_dapt: freeze a backbone, insert DAPT, add the pooled head."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pointpeft.config import DAPTConfig
from pointpeft.counting import count_parameters, print_trainable_parameters
from pointpeft.dapt.adapter import DynamicAdapter, ParallelAdapter
from pointpeft.dapt.head import PooledHead
from pointpeft.dapt.layout import BackboneLayout, detect_layout
from pointpeft.dapt.prompt import DAPTBlock, FinalNorm, InternalPrompt
from pointpeft.dapt.stash import PromptStash
from pointpeft.dapt.tfts import TFTS, ScaleShiftAfter, _Wrapper


class DAPTFeatures(NamedTuple):
    """Final features of a DAPT model.

    Attributes:
        tokens: ``(B, T, C)`` global and patch tokens after the final norm and TFTS.
        prompts: ``(B, P, C)`` internal prompts after the final norm and TFTS (newest first), or None when
            prompts are off.
    """

    tokens: torch.Tensor
    prompts: torch.Tensor | None


class DAPTModel(nn.Module):
    """A frozen backbone with DAPT inserted, and a pooled head. Made by :func:`wrap_with_dapt`.

    Attributes:
        base_model: the backbone, modified in place (its blocks, norms and patch encoder are wrapped).
        head: the :class:`~pointpeft.dapt.head.PooledHead`.
        config: the :class:`~pointpeft.DAPTConfig`.
        layout: the :class:`~pointpeft.BackboneLayout` found or given.

    Shapes:
        forward: ``points (B, N, 3)`` (and any further arguments of the backbone) → logits ``(B, K)``.
    """

    def __init__(
        self,
        base_model: nn.Module,
        head: PooledHead,
        config: DAPTConfig,
        layout: BackboneLayout,
        stash: PromptStash,
        output_norm: FinalNorm | None = None,
    ) -> None:
        super().__init__()
        self.base_model = base_model
        self.head = head
        self.output_norm = output_norm
        self.config = config
        self.layout = layout
        self._stash = stash

    def forward_features(self, points: torch.Tensor, *args: Any, **kwargs: Any) -> DAPTFeatures:
        """Run the backbone with DAPT and return the final tokens and prompts (see :class:`DAPTFeatures`)."""
        stash = self._stash
        stash.reset()
        try:
            self.base_model(points, *args, **kwargs)
            if self.output_norm is not None:
                if stash.block_out is None:
                    raise RuntimeError("the backbone's forward did not run its transformer blocks")
                self.output_norm(stash.block_out)
            tokens, prompts = stash.final_tokens, stash.final_prompts
        finally:
            stash.reset()
        if tokens is None:
            raise RuntimeError(
                f"the backbone's forward did not call its final norm ({self.layout.final_norm!r}) "
                "after the blocks; DAPT reads the final tokens there"
            )
        return DAPTFeatures(tokens, prompts)

    def forward(self, points: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        tokens, prompts = self.forward_features(points, *args, **kwargs)
        return self.head(tokens, prompts)

    def train(self, mode: bool = True) -> DAPTModel:
        super().train(mode)
        if mode and not self.config.update_bn_stats:
            for module in self.base_model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts, as :func:`pointpeft.count_parameters`."""
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        """Print the peft summary line (see :func:`pointpeft.print_trainable_parameters`)."""
        print_trainable_parameters(self)


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def _width(module: nn.Module, path: str) -> int:
    for attr in ("out_features", "normalized_shape", "embed_dim"):
        value = getattr(module, attr, None)
        if value is not None:
            return int(value[-1]) if isinstance(value, (tuple, list, torch.Size)) else int(value)
    raise ValueError(
        f"cannot tell the output width of {path} ({type(module).__name__}) to place a TFTS there"
    )


def _model_width(block: nn.Module, layout: BackboneLayout) -> int:
    for path in (layout.block.norm1, layout.block.norm2, layout.block.proj, layout.block.fc2):
        if path is not None:
            return _width(block.get_submodule(path), path)
    raise ValueError("cannot tell the token width C: the layout names no norm or projection in the blocks")


def _check_layout(model: nn.Module, layout: BackboneLayout) -> None:
    paths = list(layout.blocks) + [p for p in (layout.patch_encoder, layout.final_norm) if p is not None]
    for path in paths:
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"layout names {path!r}, which is not a module of {type(model).__name__}"
            ) from None
    for block_path in layout.blocks:
        block = model.get_submodule(block_path)
        for role, path in [("mlp", layout.block.mlp), *layout.block.tfts_sites().items()]:
            if path is None:
                continue
            try:
                block.get_submodule(path)
            except AttributeError:
                raise ValueError(
                    f"layout.block.{role} = {path!r}, but block {block_path} has no such module"
                ) from None
    own = dict(model.named_parameters())
    for name in layout.trainable_tokens:
        if name not in own:
            raise ValueError(f"layout.trainable_tokens names {name!r}, which is not a parameter of the model")


def wrap_with_dapt(
    model: nn.Module, config: DAPTConfig, *, layout: BackboneLayout | None = None
) -> DAPTModel:
    """Freeze ``model`` and insert DAPT: TFTS, a Dynamic Adapter and an internal prompt per block, and a
    pooled head.

    The backbone is modified in place: every one of its parameters gets ``requires_grad=False`` (except the
    CLS token and CLS positional embedding, which DAPT trains), and its blocks, norms, linear layers and
    patch encoder are wrapped. The blocks are found by walking the module tree (see
    :func:`pointpeft.dapt.layout.detect_layout`) unless ``layout`` names them.

    Args:
        model: a point-cloud transformer, e.g. :class:`pointpeft.backbones.PointMAE`. Its forward must run
            the blocks in order and end with the final norm.
        config: the DAPT settings.
        layout: where the blocks and other parts are; detected when None.

    Returns:
        a :class:`DAPTModel` whose ``forward(points (B, N, 3))`` returns logits ``(B, num_classes)``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``config`` not a :class:`~pointpeft.DAPTConfig`.
        ValueError: if the model is already wrapped, no blocks are found, or ``layout`` does not match it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, DAPTConfig):
        raise TypeError(f"config must be a pointpeft.DAPTConfig, got {type(config).__name__}")
    if isinstance(model, DAPTModel) or any(isinstance(m, _Wrapper) for m in model.modules()):
        raise ValueError("model already has DAPT inserted; wrap the original backbone once")
    if layout is None:
        layout = detect_layout(model)
    elif not isinstance(layout, BackboneLayout):
        raise TypeError(f"layout must be a pointpeft.BackboneLayout or None, got {type(layout).__name__}")
    _check_layout(model, layout)
    if "cls" in config.pool and layout.num_global_tokens < 1:
        raise ValueError(f"config.pool contains 'cls' but {type(model).__name__} has no CLS token")

    first_block = model.get_submodule(layout.blocks[0])
    dim = _model_width(first_block, layout)
    reference = next(first_block.parameters(), None)
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}

    def new(module: nn.Module) -> nn.Module:
        return module.to(**factory)

    def new_tfts(width: int) -> TFTS | None:
        return new(TFTS(width, config.tfts_init_std)) if config.tfts else None

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    stash = PromptStash()

    skipped = [role for role, path in layout.block.tfts_sites().items() if path is None]
    if config.tfts and skipped:
        warnings.warn(
            f"{type(model).__name__} blocks have no module for {skipped}; the TFTS at those places is skipped",
            stacklevel=2,
        )
    for block_path in layout.blocks:
        block = model.get_submodule(block_path)
        if config.tfts:
            for path in layout.block.tfts_sites().values():
                if path is not None:
                    site = block.get_submodule(path)
                    _replace(block, path, ScaleShiftAfter(site, new_tfts(_width(site, path))))
        adapter = new(DynamicAdapter(dim, config.rank, config.adapter_dropout))
        _replace(
            block, layout.block.mlp, ParallelAdapter(block.get_submodule(layout.block.mlp), adapter, stash)
        )
        prompt = InternalPrompt(new_tfts(dim)) if config.prompts else None
        _replace(model, block_path, DAPTBlock(block, prompt, layout.num_global_tokens, stash))

    if config.tfts:
        if layout.patch_encoder is None:
            warnings.warn(
                f"no patch encoder found in {type(model).__name__}; the TFTS on the patch tokens is skipped",
                stacklevel=2,
            )
        else:
            encoder = model.get_submodule(layout.patch_encoder)
            _replace(model, layout.patch_encoder, ScaleShiftAfter(encoder, new_tfts(dim)))
    output_norm = None
    if layout.final_norm is not None:
        norm = model.get_submodule(layout.final_norm)
        _replace(model, layout.final_norm, FinalNorm(norm, new_tfts(dim), stash))
    else:
        output_norm = FinalNorm(nn.Identity(), new_tfts(dim), stash)

    for name in layout.trainable_tokens:
        model.get_parameter(name).requires_grad_(True)
    head = new(
        PooledHead(
            dim,
            config.num_classes,
            config.pool,
            layout.num_global_tokens,
            config.head_hidden,
            config.head_dropout,
        )
    )
    dapt = DAPTModel(model, head, config, layout, stash, output_norm)
    dapt.train(model.training)
    return dapt
