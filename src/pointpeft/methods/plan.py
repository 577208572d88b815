"""What one adapter of a method places in a wrapped backbone (:class:`AdapterPlan`), and the methods known.

A wrapped backbone has the same sites whatever its adapters are (a scale-and-shift site after each frozen
operation, a site beside each block's FFN, a site on the residual stream before each block's FFN branch, a
prompt site at each block (carried prompts, tokens of that block alone, a prompt made from the patch tokens),
the final norm; see
:func:`pointpeft.get_peft_model`). Each adapter's method says, through its plan, which modules it puts at
those sites; a site without a module of the active adapter runs its frozen module bare. So adapters of
different methods live on one backbone, and a new method of this kind is a config and a plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pointpeft.config import DAPTConfig
from pointpeft.dapt.adapter import DynamicAdapter
from pointpeft.methods.adapter import AdapterConfig, AdaptFormerAdapter
from pointpeft.methods.bitfit import BitFitConfig, is_bias
from pointpeft.methods.full_finetune import FullFinetuneConfig, every_parameter
from pointpeft.methods.idpt import IDPTConfig, InstancePrompt, positions_every_block
from pointpeft.methods.linear_probe import LinearProbeConfig
from pointpeft.methods.lora import LoRA, LoRAConfig
from pointpeft.methods.pointgst import PCSA, GraphBasesMaker, PointGSTConfig
from pointpeft.methods.pointlora import PointLoRAConfig, PointLoRAShared
from pointpeft.methods.ssf import SSFConfig
from pointpeft.methods.vpt import DeepPrompts, ShallowPrompts, VPTConfig

#: A config of a method that :func:`pointpeft.get_peft_model` builds.
MethodConfig = (
    DAPTConfig
    | FullFinetuneConfig
    | LinearProbeConfig
    | BitFitConfig
    | SSFConfig
    | LoRAConfig
    | VPTConfig
    | AdapterConfig
    | IDPTConfig
    | PointGSTConfig
    | PointLoRAConfig
)

#: The config classes of the methods, in the order the docs list them.
METHOD_CONFIGS: tuple[type[Any], ...] = (
    DAPTConfig,
    FullFinetuneConfig,
    LinearProbeConfig,
    BitFitConfig,
    SSFConfig,
    LoRAConfig,
    VPTConfig,
    AdapterConfig,
    IDPTConfig,
    PointGSTConfig,
    PointLoRAConfig,
)


@dataclass(frozen=True, kw_only=True)
class AdapterPlan:
    """The modules one adapter places at the sites of a wrapped backbone.

    Attributes:
        tfts: a TFTS (``x * γ + β``) after every scale-and-shift site and after the final norm.
        tfts_init_std: the std of the TFTS init, γ ~ N(1, std²), β ~ N(0, std²).
        adapter: builds the module beside each block's FFN from the token width C (its output, ``(B, L, C)``,
            is added to the FFN's), or None for none.
        prompts: an internal prompt per block (made from the adapter's output: needs ``adapter``).
        train_tokens: the backbone's trainable tokens (its CLS token and CLS position, per-adapter copies)
            train with the adapter.
        beside_linear: builds the module beside a frozen linear projection of a block from the projection's
            ``(in_features, out_features, role)`` (its output, ``(..., out_features)`` from the projection's
            input, is added to the projection's): an ``nn.Linear``, or the packed input projection and the
            ``out_proj`` of an ``nn.MultiheadAttention``; None for none.
        beside_roles: the roles in the block (``"qkv"``, ``"proj"``, ``"fc1"``, ``"fc2"``) of the linear
            layers that get one.
        block_tokens: builds, from the token width C, the module of each block whose ``forward(B)`` gives the
            tokens ``(B, n, C)`` that join the block's input (after the global tokens) and leave its output;
            None for none.
        backbone_parameters: selects, by its own name (``blocks.blocks.0.mlp.fc1.bias``), each backbone
            parameter the adapter trains (a per-adapter copy, from the pre-trained value); None for none.
            The CLS token and position follow ``train_tokens`` instead.
        stream_adapter: builds, from the token width C, the module of each block that reads the residual
            stream before the block's FFN branch (the input of ``layout.block.norm2``, ``(B, L, C)``: in a
            pre-norm block ``X + DropPath(Attn(LN1 X))``, not normalised) and whose output, ``(B, L, C)``, is
            added to the block's output, outside the FFN's DropPath (AdaptFormer's parallel adapter); None
            for none.
        instance_prompt: builds, from the token width C and the backbone (whose position convention it may
            read), the module of block ``instance_prompt_block`` that makes one prompt ``(B, 1, C)`` from the
            patch tokens ``(B, G, C)`` that block receives (IDPT's
            :class:`~pointpeft.methods.idpt.InstancePrompt`); the prompt joins the sequence after the global
            tokens and is carried through the later blocks like DAPT's prompts; None for none.
        instance_prompt_block: the index of that block among the layout's blocks.
        instance_prompt_reads_patches: whether that module reads the patch tokens (IDPT's does; VPT-Shallow's
            fixed prompts read only the batch size, so they need no patch encoder at the first block).
        graph_bases: builds the module that, once per forward, makes the graph bases of the patch centres
            that the backbone's grouping module (``group_divider``) returns, for every block's
            ``stream_adapter`` (PointGST's :class:`~pointpeft.methods.pointgst.GraphBasesMaker`); None for
            none.
        local_size: the centres per local graph of ``graph_bases`` (checked against the number of patches).
        token_selection: builds, from the token width C and the backbone, the module of the first block that
            selects tokens from the raw points before the blocks run (PointLoRA's
            :class:`~pointpeft.methods.pointlora.PointLoRAShared`): they join the sequence after the patch
            tokens at every block, and its shared MLPs are added to the patch and selected tokens at every
            block's input; None for none. Built before ``beside_linear`` is first called (the modules beside
            the linear layers may refer to it).
    """

    train_tokens: bool
    tfts: bool = False
    tfts_init_std: float = 0.0
    adapter: Callable[[int], nn.Module] | None = None
    prompts: bool = False
    beside_linear: Callable[[int, int, str], nn.Module] | None = None
    beside_roles: tuple[str, ...] = ()
    block_tokens: Callable[[int], nn.Module] | None = None
    backbone_parameters: Callable[[str], bool] | None = None
    stream_adapter: Callable[[int], nn.Module] | None = None
    instance_prompt: Callable[[int, nn.Module], nn.Module] | None = None
    instance_prompt_block: int = 0
    instance_prompt_reads_patches: bool = True
    graph_bases: Callable[[], nn.Module] | None = None
    local_size: int = 0
    token_selection: Callable[[int, nn.Module], nn.Module] | None = None


def plan_of(config: MethodConfig) -> AdapterPlan:
    """The :class:`AdapterPlan` of ``config``'s method (``config`` checked by :func:`check_method_config`)."""
    if isinstance(config, DAPTConfig):
        rank, dropout = config.rank, config.adapter_dropout
        return AdapterPlan(
            tfts=config.tfts,
            tfts_init_std=config.tfts_init_std,
            adapter=lambda dim: DynamicAdapter(dim, rank, dropout),
            prompts=config.prompts,
            train_tokens=True,
        )
    if isinstance(config, SSFConfig):
        return AdapterPlan(train_tokens=config.train_cls, tfts=True, tfts_init_std=config.tfts_init_std)
    if isinstance(config, LoRAConfig):
        rank, alpha, dropout = config.rank, config.alpha, config.dropout

        def lora(in_features: int, out_features: int, role: str) -> nn.Module:
            return LoRA(in_features, out_features, rank, alpha, dropout)

        return AdapterPlan(train_tokens=config.train_cls, beside_linear=lora, beside_roles=config.targets)
    if isinstance(config, VPTConfig):
        count = config.num_prompts
        if not config.deep:
            return AdapterPlan(
                train_tokens=config.train_cls,
                instance_prompt=lambda dim, backbone: ShallowPrompts(count, dim),
                instance_prompt_block=0,
                instance_prompt_reads_patches=False,
            )
        return AdapterPlan(train_tokens=config.train_cls, block_tokens=lambda dim: DeepPrompts(count, dim))
    if isinstance(config, AdapterConfig):
        rank, scale, dropout = config.rank, config.scale, config.dropout
        return AdapterPlan(
            train_tokens=config.train_cls,
            stream_adapter=lambda dim: AdaptFormerAdapter(dim, rank, scale, dropout),
        )
    if isinstance(config, IDPTConfig):
        k, trained, mode = config.k, config.train_prompt_pos, config.prompt_pos_mode

        def instance_prompt(dim: int, backbone: nn.Module) -> nn.Module:
            return InstancePrompt(dim, k, trained, positions_every_block(mode, backbone))

        return AdapterPlan(
            train_tokens=config.train_cls,
            instance_prompt=instance_prompt,
            instance_prompt_block=config.prompt_layer,
        )
    if isinstance(config, PointGSTConfig):
        rank, scale, local_size = config.rank, config.scale, config.local_size
        return AdapterPlan(
            train_tokens=config.train_cls,
            stream_adapter=lambda dim: PCSA(dim, rank, scale),
            graph_bases=lambda: GraphBasesMaker(local_size),
            local_size=local_size,
        )
    if isinstance(config, PointLoRAConfig):
        return _pointlora_plan(config)
    if isinstance(config, (BitFitConfig, FullFinetuneConfig)):
        chosen = is_bias if isinstance(config, BitFitConfig) else every_parameter
        return AdapterPlan(train_tokens=config.train_cls, backbone_parameters=chosen)
    return AdapterPlan(train_tokens=config.train_cls)


def _pointlora_plan(config: PointLoRAConfig) -> AdapterPlan:
    """PointLoRA's plan: the shared module (made once per plan, at the first of its uses) at the first
    block, an update beside each targeted linear layer referring to its shared prompt MLP, and the
    backbone modules of ``trained_backbone`` trained."""
    rank, alpha, hidden = config.rank, config.alpha, config.prompt_hidden
    scales, weights, aux, pos_path = config.scales, config.mask_weights, config.aux_weight, config.pos_embed
    prefixes = tuple(f"{path}." for path in config.trained_backbone)
    made: list[PointLoRAShared] = []

    def shared(dim: int, backbone: nn.Module) -> nn.Module:
        if not made:
            from pointpeft.dapt.tfts import DAPTWrapper

            encoder = _group_encoder(backbone, DAPTWrapper)
            pos_embed = backbone.get_submodule(pos_path)
            every = positions_every_block("auto", backbone)
            made.append(PointLoRAShared(dim, hidden, scales, weights, aux, every, encoder, pos_embed))
        return made[0]

    def update(in_features: int, out_features: int, role: str) -> nn.Module:
        if not made:
            raise RuntimeError(
                "PointLoRA's shared module is built before the updates beside the linear layers"
            )
        return made[0].update_for(in_features, out_features, role, rank, alpha)

    def trained(name: str) -> bool:
        return name.startswith(prefixes)

    return AdapterPlan(
        train_tokens=config.train_cls,
        beside_linear=update,
        beside_roles=config.targets,
        backbone_parameters=trained,
        token_selection=shared,
    )


def _group_encoder(backbone: nn.Module, wrapper: type[nn.Module]) -> nn.Module:
    """What turns groups ``(B, S, K, 3)`` into ``(B, S, C)`` tokens in the wrapped ``backbone``: its patch
    encoder (the module of its :class:`PatchEncoderSite`) or, where that module is a linear projection after
    the encoder (Point-BERT's ``reduce_dim``, 256 → 384), the sibling named ``encoder`` followed by it.
    Modules inside a ``wrapper`` (the library's wrappers of frozen modules) are taken unwrapped."""
    path = _encoder_path(backbone)

    def unwrapped(module: nn.Module) -> nn.Module:
        inner = module.base_layer if isinstance(module, wrapper) else module
        assert isinstance(inner, nn.Module)
        return inner

    module = unwrapped(backbone.get_submodule(path))
    if not isinstance(module, nn.Linear):
        return module
    parent = path.rpartition(".")[0]
    holder = backbone.get_submodule(parent)
    encoder = getattr(holder, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(
            f"PointLoRA encodes its extra groupings with the backbone's patch encoder, but the patch tokens of "
            f"{type(backbone).__name__} come from the linear layer {path!r} ({module.in_features} → "
            f"{module.out_features}), which reads features, not groups, and there is no module named "
            f"'encoder' beside it to feed it"
        )
    # Referred to, not registered, by PointLoRAShared: the backbone's own modules, in the backbone's order.
    return nn.Sequential(unwrapped(encoder), module)


def _encoder_path(backbone: nn.Module) -> str:
    """The path of the patch encoder that the wrapped ``backbone`` runs (its :class:`PatchEncoderSite`)."""
    from pointpeft.dapt.tfts import PatchEncoderSite

    for path, module in backbone.named_modules():
        if isinstance(module, PatchEncoderSite):
            return str(path)
    raise ValueError("PointLoRA needs the backbone's patch encoder (layout.patch_encoder), but it has none")


def check_method_config(config: object, name: str = "config") -> MethodConfig:
    """``config`` if it is a config of a known method (:data:`METHOD_CONFIGS`), else a TypeError naming
    ``name``, the accepted classes and the received type."""
    if type(config) not in METHOD_CONFIGS:
        names = ", ".join(f"pointpeft.{cls.__name__}" for cls in METHOD_CONFIGS)
        raise TypeError(f"{name} must be one of {names}, got {type(config).__name__}")
    return config  # type: ignore[return-value]
