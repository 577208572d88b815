"""wrap_with_dapt: freeze a backbone, insert DAPT, add the pooled head; several named adapters."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pointpeft.checks import check_adapter_name, check_input_dtype, reference_parameter
from pointpeft.config import DEFAULT_ADAPTER, DAPTConfig
from pointpeft.counting import count_parameters, print_trainable_parameters
from pointpeft.dapt.adapter import AdapterInput, AdapterOutput, ParallelAdapter, StreamAdapterSite
from pointpeft.dapt.adapter_files import add_adapter_from, write_adapters
from pointpeft.dapt.backbone_copies import BackboneCopies, CopiesLink, get_tensor
from pointpeft.dapt.backbone_state import (
    backbone_tensors,
    keep_python_forward,
    module_width,
    own_parameter_paths,
    restore_plain_backbone,
    token_width,
)
from pointpeft.dapt.call_context import close_call, open_call
from pointpeft.dapt.execution import allow_checkpointed_side_effects, check_execution
from pointpeft.dapt.head import PooledHead
from pointpeft.dapt.layout import BackboneLayout, detect_layout, transformer_root
from pointpeft.dapt.presets import preset_layout
from pointpeft.dapt.prompt import DAPTBlock, FinalNorm, InternalPrompt
from pointpeft.dapt.tfts import (
    TFTS,
    AdapterModules,
    DAPTWrapper,
    GroupingSite,
    PackedQKVScaleShift,
    PatchEncoderSite,
    ScaleShiftAfter,
)
from pointpeft.methods.plan import MethodConfig, check_method_config, plan_of

_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class DAPTFeatures(NamedTuple):
    """Final features of a DAPT model.

    Attributes:
        tokens: ``(B, T, C)`` global and patch tokens after the final norm and TFTS (for PointLoRA, the
            selected tokens follow the patches: ``T = global + G + Σ selected``).
        prompts: ``(B, P, C)`` internal prompts after the final norm and TFTS (newest first), or None when
            the adapter has no prompts.
    """

    tokens: torch.Tensor
    prompts: torch.Tensor | None


class BlockExecution(NamedTuple):
    """How one block of a DAPT model runs (see :meth:`DAPTModel.execution_report`).

    Attributes:
        block: the block's path in the backbone (``"blocks.blocks.0"``).
        execution: ``"fused"`` (checkpointed: under ``torch.compile`` the block keeps its matrix products'
            outputs, eagerly its input), ``"recompute"`` (it keeps its input) or ``"plain"`` (it keeps every
            intermediate).
        reason: why the block runs plain; empty otherwise.
    """

    block: str
    execution: str
    reason: str


class DAPTModel(nn.Module):
    """A frozen backbone with DAPT inserted, and a pooled head. Made by :func:`wrap_with_dapt`.

    One backbone can carry several named adapters (each with its own TFTS, Dynamic Adapters, prompts,
    head, CLS token copy and BatchNorm statistics); one is active at a time.

    Attributes:
        base_model: the backbone, modified in place (its blocks, norms and patch encoder are wrapped).
        heads: the :class:`~pointpeft.dapt.head.PooledHead` of each adapter.
        configs: the :class:`~pointpeft.DAPTConfig` of each adapter.
        layout: the :class:`~pointpeft.BackboneLayout` found or given.

    Shapes:
        forward: ``points (B, N, 3)`` (and any further arguments of the backbone) → logits ``(B, K)``.
    """

    def __init__(
        self,
        base_model: nn.Module,
        layout: BackboneLayout,
        dim: int,
        link: CopiesLink,
        requires_grad: Mapping[str, bool] | None = None,
    ) -> None:
        super().__init__()
        self.base_model = base_model
        self.heads = nn.ModuleDict()
        self.output_norm = FinalNorm(nn.Identity(), link) if layout.final_norm is None else None
        buffers = tuple(
            f"{name}.{buffer}" if name else buffer
            for name, module in base_model.named_modules()
            if isinstance(module, _BatchNorm)
            for buffer in _BN_BUFFERS
            if getattr(module, buffer, None) is not None
        )
        self.backbone_copies = BackboneCopies(base_model, layout.trainable_tokens, buffers)
        # What unload() puts back: the backbone's own tensor objects at the places where each adapter
        # installs its copies (kept outside the module tree, so not in state_dict() or parameters()), and
        # each parameter's requires_grad before wrapping.
        self._originals: nn.Module | None = None
        object.__setattr__(self, "_originals", self.backbone_copies.take(base_model))
        self._requires_grad = dict(
            requires_grad
            if requires_grad is not None
            else {name: p.requires_grad for name, p in backbone_tensors(base_model, buffers=False).items()}
        )
        self._unloaded = False
        self.configs: dict[str, MethodConfig] = {}
        self._trained: dict[str, tuple[str, ...]] = {}  # each adapter's trained backbone parameters
        self.layout = layout
        self.dim = dim
        self._link = link
        link.copies = self.backbone_copies
        self._active: str | None = None
        self._execution = "fused"
        self._last_forward = _LastForward()

    @property
    def auxiliary_loss(self) -> torch.Tensor | None:
        """The auxiliary loss the active adapter made in the last forward (PointLoRA's weighted mask loss, a
        scalar tensor on that forward's graph), for a training loop to add to its task loss; None after a
        forward of an adapter that makes none, and in a copy (``copy.deepcopy``, pickling) of the model.
        ``pointpeft train`` adds it to the cross-entropy (docs/training.md). Assign None to clear it."""
        return self._last_forward.auxiliary_loss

    @auxiliary_loss.setter
    def auxiliary_loss(self, value: torch.Tensor | None) -> None:
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"auxiliary_loss must be a tensor or None, got {type(value).__name__}")
        self._last_forward.auxiliary_loss = value

    # ------------------------------------------------------------------------------------------ adapters
    @property
    def active_adapter(self) -> str | None:
        """The name of the adapter that runs, or None inside :meth:`disable_adapter`."""
        return self._active

    @property
    def execution(self) -> str:
        """How the DAPT model computes; any of the three gives the same function.

        * ``"fused"`` (default): every block whose backward will run is checkpointed. Under
          ``torch.compile`` selectively: it keeps for backward only its matrix products' outputs, and the
          norms, TFTS, activations and attention it recomputes in backward fuse into few kernels (about
          half the memory of ``"plain"``): compile the model for speed. Run eagerly, it keeps only its
          input, as ``"recompute"`` does (eagerly the faster of the two). Every TFTS after a frozen
          LayerNorm is folded into its affine.
        * ``"recompute"``: plain activation checkpointing: each block keeps only its input.
        * ``"plain"``: the wrappers call the backbone's modules as they are, the reference computation.

        Set it at any time: ``model.execution = "recompute"``.
        """
        return self._execution

    @execution.setter
    def execution(self, value: str) -> None:
        self._execution = check_execution(value)
        for wrapper in self.wrappers():
            wrapper.execution = self._execution

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the adapters, in the order they were added."""
        return tuple(self.configs)

    @property
    def config(self) -> MethodConfig:
        """The active adapter's config (a :class:`~pointpeft.DAPTConfig`, :class:`~pointpeft.SSFConfig`, ...)."""
        return self.configs[self._require_active()]

    @property
    def head(self) -> PooledHead:
        """The active adapter's head."""
        head = self.heads[self._require_active()]
        assert isinstance(head, PooledHead)
        return head

    def _require_wrapped(self) -> None:
        if self._unloaded:
            raise RuntimeError(
                "this DAPTModel was unloaded (unload() gave its backbone back); wrap the backbone again "
                "with pointpeft.wrap_with_dapt"
            )

    def _require_active(self) -> str:
        name = self._active
        if name is None:
            raise RuntimeError(
                "adapters are disabled here (inside disable_adapter()); there is no active head"
            )
        return name

    def wrappers(self) -> Iterator[DAPTWrapper]:
        """Every wrapper DAPT inserted (blocks, norms, linear layers, patch encoder, FFNs)."""
        for site in self._sites():
            if isinstance(site, DAPTWrapper):
                yield site

    def execution_report(self) -> tuple[BlockExecution, ...]:
        """For each block, in order: how it runs in a training step (gradients on) now, and why.

        In the ``"fused"`` and ``"recompute"`` executions every block is checkpointed
        (:mod:`pointpeft.dapt.execution`), whatever its class or forward: it needs no known structure. A block
        runs plain in the ``"plain"`` execution, and wherever nothing in it or before it asks for a gradient.
        Example::

            for block, execution, reason in model.execution_report():
                print(block, execution, reason)
        """
        self._require_wrapped()
        report = []
        for path in self.layout.blocks:
            if self._execution == "plain":
                report.append(BlockExecution(path, "plain", "the model's execution is 'plain'"))
            elif self._active is None:
                report.append(BlockExecution(path, "plain", "adapters are disabled"))
            else:
                report.append(BlockExecution(path, self._execution, ""))
        return tuple(report)

    def _sites(self) -> Iterator[nn.Module]:
        yield from self.base_model.modules()
        if self.output_norm is not None:
            yield self.output_norm

    def add_adapter(self, adapter_name: str, config: MethodConfig) -> None:
        """Add a new adapter with fresh modules of its method and a head (not activated; see
        :meth:`set_adapter`). Adapters of different methods (a :class:`~pointpeft.DAPTConfig` and an
        :class:`~pointpeft.SSFConfig`, say) live on one backbone.

        Its CLS token copy and BatchNorm statistics start from the backbone's pre-trained values.

        Raises:
            TypeError / ValueError: if the name is not a new non-empty string without dots, or the config
                is not the config of a known method or asks for something the backbone lacks.
        """
        self._require_wrapped()
        check_adapter_name(adapter_name)
        if adapter_name in self.configs:
            raise ValueError(f"an adapter named {adapter_name!r} exists already; adapters: {self.adapters}")
        check_method_config(config)
        layout = self.layout
        if "cls" in config.pool and layout.num_global_tokens < 1:
            raise ValueError(
                f"config.pool contains 'cls' but {type(self.base_model).__name__} has no CLS token"
            )
        if plan_of(config).stream_adapter is not None:
            self._check_stream_adapter(config)
        if plan_of(config).instance_prompt is not None:
            self._check_instance_prompt(config)
        if plan_of(config).graph_bases is not None:
            self._check_graph_bases(config)
        if plan_of(config).token_selection is not None:
            self._check_token_selection(config)
        try:
            self._build_adapter(adapter_name, config)
        except BaseException:  # e.g. out of memory: leave no part of the adapter behind
            self._drop(adapter_name)
            raise

    def _check_stream_adapter(self, config: MethodConfig) -> None:
        """Check that the blocks have the site of a residual-stream adapter: a norm before the FFN
        (``layout.block.norm2``) that reads the residual stream, as in a pre-norm block."""
        name = type(config).__name__
        if self.layout.block.norm2 is None:
            raise ValueError(
                f"{name} reads the input of each block's norm before its FFN, but layout.block.norm2 is None "
                f"for {type(self.base_model).__name__}; name that norm in the layout "
                "(BlockLayout(norm2='path.to.norm'))"
            )
        for path in self.layout.blocks:
            block = self.base_model.get_submodule(path)
            inner = block.base_layer if isinstance(block, DAPTWrapper) else block
            if isinstance(inner, nn.TransformerEncoderLayer) and not inner.norm_first:
                raise ValueError(
                    f"{name} needs pre-norm blocks (its input is the residual stream before the FFN's norm), "
                    f"but block {path} is an nn.TransformerEncoderLayer with norm_first=False (post-norm); "
                    "build the encoder layers with norm_first=True"
                )

    def _check_instance_prompt(self, config: MethodConfig) -> None:
        """Check that the block of an instance prompt (IDPT's ``prompt_layer``) exists, and that a prompt at
        the first block has the patch encoder's output to read."""
        name = type(config).__name__
        block = plan_of(config).instance_prompt_block
        depth = len(self.layout.blocks)
        if not 0 <= block < depth:
            raise ValueError(
                f"{name}.prompt_layer must be in [0, {depth}) for {type(self.base_model).__name__}, which has "
                f"{depth} blocks, got {block}"
            )
        if block == 0 and self.layout.patch_encoder is None and plan_of(config).instance_prompt_reads_patches:
            raise ValueError(
                f"{name}.prompt_layer = 0 makes the prompt from the patch encoder's output, but "
                f"layout.patch_encoder is None for {type(self.base_model).__name__}; name the module whose "
                "output (B, G, C) are the patch tokens, or use a prompt_layer >= 1"
            )

    def _grouping_path(self) -> str | None:
        """The path of the backbone's grouping module: a child named ``group_divider`` (Point-MAE,
        Point-BERT, PointGPT, ReCon) of the module that holds the transformer, or None."""
        root = transformer_root(self.base_model, self.layout.blocks)
        holder = self.base_model.get_submodule(root)
        if "group_divider" not in dict(holder.named_children()):
            return None
        return f"{root}.group_divider" if root else "group_divider"

    def _check_graph_bases(self, config: MethodConfig) -> None:
        """Check that the backbone has what graph bases of the patch centres need (PointGST): a grouping
        module that returns the centres, and a number of patches that the local graphs divide (where the
        grouping module says it, as ``num_group``). Sequence-first blocks are read through a transpose
        (:class:`~pointpeft.dapt.adapter.StreamAdapterSite`)."""
        name = type(config).__name__
        backbone = type(self.base_model).__name__
        path = self._grouping_path()
        if path is None:
            raise ValueError(
                f"{name} builds graphs of the patch centres, which it reads from the backbone's grouping module "
                f"(a child named 'group_divider' returning (neighborhood, centers)), but {backbone} has none"
            )
        grouping = self.base_model.get_submodule(path)
        inner = grouping.base_layer if isinstance(grouping, DAPTWrapper) else grouping
        groups = getattr(inner, "num_group", None)
        size = plan_of(config).local_size
        if isinstance(groups, int) and not isinstance(groups, bool) and groups % size:
            raise ValueError(
                f"{name}.local_size must divide the number of patches G, got local_size = {size}, and "
                f"{backbone}'s {path} makes num_group = {groups} patches; choose a local_size that divides {groups}"
            )

    def _grouping_site(self) -> GroupingSite:
        """The site of the backbone's grouping module, put in place the first time it is needed."""
        path = self._grouping_path()
        assert path is not None
        site = self.base_model.get_submodule(path)
        if not isinstance(site, GroupingSite):
            site = GroupingSite(site, self._link)
            site.active_adapter = self._active
            site.execution = self._execution
            _replace(self.base_model, path, site)
        return site

    def _check_token_selection(self, config: MethodConfig) -> None:
        """Check what PointLoRA's token selection reads: a layout with a patch encoder, the position MLP it
        names, and the backbone modules it trains."""
        name, backbone = type(config).__name__, type(self.base_model).__name__
        if self.layout.patch_encoder is None:
            raise ValueError(
                f"{name} encodes its extra groupings with the patch encoder, but layout.patch_encoder is None for "
                f"{backbone}; name the module that turns (B, G, K, 3) groups into (B, G, C) tokens"
            )
        pos_embed = getattr(config, "pos_embed", "pos_embed")
        try:
            self.base_model.get_submodule(pos_embed)
        except AttributeError:
            raise ValueError(
                f"{name}.pos_embed must name the position MLP of {backbone} (centres (B, S, 3) -> (B, S, C)), "
                f"got {pos_embed!r}, which is not a module of it"
            ) from None
        names = list(own_parameter_paths(self.base_model).values())
        for path in getattr(config, "trained_backbone", ()):
            if any(n.startswith(f"{path}.") for n in names):
                continue
            try:
                self.base_model.get_submodule(path)
            except AttributeError:
                raise ValueError(
                    f"{name}.trained_backbone must name modules of {backbone} that hold parameters, got {path!r}, "
                    "which is not a module of it"
                ) from None
            # PointGPT's positions are sines: the released recipe's "train the position MLP" trains nothing
            warnings.warn(
                f"{name}.trained_backbone names {path!r}, which holds no parameters in {backbone}: nothing of "
                "it is trained",
                UserWarning,
                stacklevel=4,
            )

    def _build_adapter(self, adapter_name: str, config: MethodConfig) -> None:
        layout = self.layout
        plan = plan_of(config)
        reference = reference_parameter(self.base_model)
        factory: dict[str, Any] = (
            {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
        )
        last_block = self.base_model.get_submodule(layout.blocks[-1])
        # A prompt made by the last block is used only if the head pools prompts; otherwise it would hold
        # parameters that never get a gradient (which DistributedDataParallel rejects), so none is made.
        last_prompt = "prompt" in config.pool

        def tfts(width: int) -> TFTS:
            return TFTS(width, plan.tfts_init_std).to(**factory)

        selection = None
        if plan.token_selection is not None:  # first: the modules beside the linear layers refer to it
            selection = plan.token_selection(self.dim, self.base_model)
        skipped = []
        for site in list(self._sites()):
            if isinstance(site, ScaleShiftAfter) and site.role in plan.beside_roles:
                base = site.base_layer
                if plan.beside_linear is None:
                    pass
                elif isinstance(base, nn.Linear):
                    update = plan.beside_linear(base.in_features, base.out_features, site.role)
                    site.beside[adapter_name] = update.to(**factory)
                elif isinstance(base, PackedQKVScaleShift) and site.role == "proj":
                    # nn.MultiheadAttention's out_proj (the attention is also the qkv site, wrapped first)
                    out_proj = base.multihead_attention().out_proj
                    update = plan.beside_linear(out_proj.in_features, out_proj.out_features, "proj")
                    base.beside_out[adapter_name] = update.to(**factory)
                else:
                    skipped.append(f"{site.role} ({type(base).__name__})")
            elif (
                isinstance(site, PackedQKVScaleShift)
                and "qkv" in plan.beside_roles
                and plan.beside_linear is not None
            ):
                dim = site.multihead_attention().embed_dim
                site.beside[adapter_name] = plan.beside_linear(dim, 3 * dim, "qkv").to(**factory)
            if isinstance(site, DAPTBlock) and plan.block_tokens is not None:
                site.tokens[adapter_name] = plan.block_tokens(self.dim).to(**factory)
            if isinstance(site, (ScaleShiftAfter, PackedQKVScaleShift)) and plan.tfts:
                site.tfts[adapter_name] = tfts(site.width)
            elif isinstance(site, FinalNorm) and plan.tfts:
                site.tfts[adapter_name] = tfts(self.dim)
            elif isinstance(site, (ParallelAdapter, AdapterOutput)) and plan.adapter is not None:
                site.adapter[adapter_name] = plan.adapter(self.dim).to(**factory)
            elif isinstance(site, DAPTBlock) and plan.prompts and (site is not last_block or last_prompt):
                site.prompt[adapter_name] = InternalPrompt(tfts(self.dim) if plan.tfts else None)
            if isinstance(site, StreamAdapterSite) and plan.stream_adapter is not None:
                site.adapter[adapter_name] = plan.stream_adapter(self.dim).to(**factory)
        if plan.graph_bases is not None:
            self._grouping_site().graph_bases[adapter_name] = plan.graph_bases()
        if plan.instance_prompt is not None:
            site = self.base_model.get_submodule(layout.blocks[plan.instance_prompt_block])
            assert isinstance(site, DAPTBlock)
            site.instance_prompt[adapter_name] = plan.instance_prompt(self.dim, self.base_model).to(**factory)
        if selection is not None:
            first = self.base_model.get_submodule(layout.blocks[0])
            assert isinstance(first, DAPTBlock)
            first.selection[adapter_name] = selection.to(**factory)
        if skipped:
            warnings.warn(
                f"adapter {adapter_name!r}: {type(config).__name__} targets layers that are not nn.Linear here, "
                f"left without an update: {sorted(set(skipped))}",
                stacklevel=3,
            )
        self.heads[adapter_name] = PooledHead(
            self.dim,
            config.num_classes,
            config.pool,
            layout.num_global_tokens,
            config.head_hidden,
            config.head_dropout,
            cls_index=layout.cls_index,
        ).to(**factory)
        trained = self._chosen_parameters(plan.backbone_parameters)
        assert self._originals is not None
        self.backbone_copies.add_trained(self.base_model, trained, self._originals)
        self.backbone_copies.stored[adapter_name] = self.backbone_copies.new_copies(trained)
        self._trained[adapter_name] = trained
        self.configs[adapter_name] = config
        self._update_trainable()

    def _chosen_parameters(self, chosen: Callable[[str], bool] | None) -> tuple[str, ...]:
        """The paths in the wrapped backbone of the backbone parameters whose own names ``chosen`` selects,
        the CLS token and position left out (they train per adapter already)."""
        if chosen is None:
            return ()
        tokens = set(self.backbone_copies.token_paths)
        return tuple(
            path
            for path, name in own_parameter_paths(self.base_model).items()
            if path not in tokens and chosen(name)
        )

    def trained_backbone_parameters(self, adapter_name: str) -> tuple[str, ...]:
        """The paths in ``base_model`` of the backbone parameters that adapter ``adapter_name`` trains (its own
        copies: BitFit's biases, every parameter of full fine-tuning), besides the CLS token and position.

        Raises:
            ValueError: if there is no adapter of that name.
        """
        if adapter_name not in self.configs:
            raise ValueError(f"no adapter named {adapter_name!r}; adapters: {self.adapters}")
        return self._trained[adapter_name]

    def _adapter_modules(self, adapter_name: str) -> Iterator[nn.Module]:
        for site in self._sites():
            for modules in site.children():
                if isinstance(modules, AdapterModules) and adapter_name in modules:
                    yield modules[adapter_name]
        if adapter_name in self.heads:
            yield self.heads[adapter_name]

    def _switch(self, adapter_name: str | None) -> None:
        copies = self.backbone_copies
        if self._active == adapter_name:
            return
        if self._active is not None:
            copies.stored[self._active] = copies.take(self.base_model, self._trained[self._active])
        copies.install(self.base_model, None if adapter_name is None else copies.stored.pop(adapter_name))
        self._active = adapter_name
        for wrapper in self.wrappers():
            wrapper.active_adapter = adapter_name

    def _update_trainable(self) -> None:
        active = self._active
        for name in self.configs:
            for module in self._adapter_modules(name):
                module.requires_grad_(name == active)
        for holder in self.backbone_copies.stored.values():
            holder.requires_grad_(False)
        if active is not None:
            train_tokens = plan_of(self.configs[active]).train_tokens
            for path in self.layout.trainable_tokens:
                self.base_model.get_parameter(path).requires_grad_(train_tokens)
            for path in self._trained[active]:
                self.base_model.get_parameter(path).requires_grad_(True)
        self.train(self.training)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter: its modules run and train, the others are frozen.

        Raises:
            ValueError: if there is no adapter of that name.
        """
        self._require_wrapped()
        if adapter_name not in self.configs:
            raise ValueError(f"no adapter named {adapter_name!r}; adapters: {self.adapters}")
        self._switch(adapter_name)
        self._update_trainable()

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter's modules, head and tensors.

        Raises:
            ValueError: if there is no adapter of that name, or it is the active one.
        """
        self._require_wrapped()
        if adapter_name not in self.configs:
            raise ValueError(f"no adapter named {adapter_name!r}; adapters: {self.adapters}")
        if adapter_name == self._active:
            raise ValueError(
                f"cannot delete the active adapter {adapter_name!r}; set_adapter() another first"
            )
        self._drop(adapter_name)

    def _drop(self, adapter_name: str) -> None:
        """Remove whatever exists of an adapter (its modules, head, tensors and config)."""
        for site in list(self._sites()):
            for modules in site.children():
                if isinstance(modules, AdapterModules) and adapter_name in modules:
                    del modules[adapter_name]
        for holder in (self.heads, self.backbone_copies.stored):
            if adapter_name in holder:
                del holder[adapter_name]
        self.configs.pop(adapter_name, None)
        self._trained.pop(adapter_name, None)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[DAPTModel]:
        """Context manager: inside it the model runs the bare backbone, with its pre-trained CLS token and
        BatchNorm statistics, and ``model(points)`` returns the backbone's own output.

        Example::

            with model.disable_adapter():
                tokens = model(points)  # what the backbone returned before wrapping
        """
        self._require_wrapped()
        previous = self._active
        self._switch(None)
        self.train(self.training)
        try:
            yield self
        finally:
            if not self._unloaded:  # unload() inside the block gave the backbone back already
                self._switch(previous)
                self.train(self.training)

    # ------------------------------------------------------------------------------------------- unload
    def unload(self) -> nn.Module:
        """Remove DAPT and give the original backbone back, as it was before :func:`wrap_with_dapt`.

        Every wrapper DAPT inserted (blocks, norms, linear layers, patch encoder) is replaced by the module
        it wraps; the backbone's own CLS token / positional embedding and BatchNorm statistics objects are
        put back with their pre-trained values (those of wrapping time, or of the last
        :func:`pointpeft.load_pretrained` into the wrapped model), not an adapter's trained ones; each
        parameter's ``requires_grad`` is restored; the hooks DAPT added are removed. The backbone is left
        in this model's train/eval mode (every module alike, as before wrapping). The returned module is
        the object that was wrapped: its ``state_dict()`` equals the one before wrapping bit for bit and it
        can be wrapped again. This model is unusable afterwards (its adapters are dropped; save them
        first).

        Returns:
            the backbone.

        Raises:
            RuntimeError: if the model was unloaded already.
        """
        self._require_wrapped()
        backbone = self.base_model
        self._restore_backbone_tensors()
        restore_plain_backbone(backbone, self._requires_grad)
        backbone.train(self.training)
        self._unloaded = True
        self._active = None
        self._link.copies = None
        self.heads.clear()
        self.configs.clear()
        self._trained.clear()
        self.backbone_copies.stored.clear()
        self.output_norm = None
        object.__setattr__(self, "_originals", None)
        del self._modules["base_model"]
        return backbone

    def _restore_backbone_tensors(self) -> None:
        """Put the backbone's own tensor objects back where the adapters' copies are installed, holding the
        kept pre-trained values, in the dtype and on the device of the installed copies (the model may
        have been moved since wrapping)."""
        copies, backbone = self.backbone_copies, self.base_model
        assert self._originals is not None
        installed = {path: get_tensor(backbone, path) for path in copies.paths}
        copies.install(backbone, self._originals)
        with torch.no_grad():
            for path, current in installed.items():
                original = get_tensor(backbone, path)
                if (original.dtype, original.device) != (current.dtype, current.device):
                    if isinstance(original, nn.Parameter):
                        original.data = original.data.to(current)  # the same Parameter object
                    else:
                        original = original.to(current)
                        owner, _, attr = path.rpartition(".")
                        setattr(backbone.get_submodule(owner) if owner else backbone, attr, original)
                original.copy_(copies.base_value(path))

    # ------------------------------------------------------------------------------------------- forward
    def forward_features(self, points: torch.Tensor, *args: Any, **kwargs: Any) -> DAPTFeatures:
        """Run the backbone with the active adapter and return the final tokens and prompts (see
        :class:`DAPTFeatures`).

        Raises:
            TypeError: if ``points`` is a floating tensor of another dtype than the backbone's parameters
                (convert it with ``points.float()``, or the model with ``model.double()``).
        """
        self._require_wrapped()
        self._require_active()
        check_input_dtype("points", points, self.base_model)
        call = open_call()
        call.points = points
        try:
            self.base_model(points, *args, **kwargs)
            if self.output_norm is not None:
                if call.block_out is None:
                    raise RuntimeError("the backbone's forward did not run its transformer blocks")
                self.output_norm(call.block_out)
            tokens, prompts = call.final_tokens, call.final_prompts
            self._last_forward.auxiliary_loss = call.auxiliary_loss
        finally:
            close_call(call)
        if tokens is None:
            raise RuntimeError(
                f"the backbone's forward did not call its final norm ({self.layout.final_norm!r}) "
                "after the blocks; DAPT reads the final tokens there. Wrap the backbone again with "
                "wrap_with_dapt(backbone, config, example_input=points) to find the norm its forward runs, "
                "or name it: layout=BackboneLayout(..., final_norm='path.to.norm')"
            )
        return DAPTFeatures(tokens, prompts)

    def forward(self, points: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Logits ``(B, K)`` for ``points (B, N, 3)``, or the backbone's own output inside
        :meth:`disable_adapter`; ``points`` is checked as by :meth:`forward_features`."""
        self._require_wrapped()
        if self._active is None:
            check_input_dtype("points", points, self.base_model)
            return self.base_model(points, *args, **kwargs)
        tokens, prompts = self.forward_features(points, *args, **kwargs)
        return self.head(tokens, prompts)

    def train(self, mode: bool = True) -> DAPTModel:
        super().train(mode)
        if self._unloaded:
            return self
        active = self._active
        # Frozen BatchNorm layers keep their statistics when the adapter says so, and always while adapters
        # are disabled (the statistics installed then are the kept pre-trained ones).
        if mode and (active is None or not self.configs[active].update_bn_stats):
            for module in _backbone_modules(self.base_model):
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # ------------------------------------------------------------------------------------------ counting
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts, as :func:`pointpeft.count_parameters`."""
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        """Print the peft summary line (see :func:`pointpeft.print_trainable_parameters`)."""
        print_trainable_parameters(self)

    # ---------------------------------------------------------------------------------------- save/load
    def save_adapter(self, directory: str, adapter_names: list[str] | None = None) -> None:
        """Save adapters in the peft layout (see :func:`pointpeft.save_adapter`)."""
        self._require_wrapped()
        write_adapters(self, directory, adapter_names)

    def load_adapter(self, directory: str, adapter_name: str) -> None:
        """Add a saved adapter under a new name (see :func:`pointpeft.load_adapter`)."""
        self._require_wrapped()
        add_adapter_from(self, directory, adapter_name)


def add_auxiliary_loss(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """``loss`` plus the auxiliary loss that ``model``'s last forward made, where it made one.

    The training objective of a method with an auxiliary loss (PointLoRA's weighted mask loss, see
    :attr:`DAPTModel.auxiliary_loss`) is the task loss plus that loss; ``pointpeft train`` and
    :class:`pointpeft.CUDAGraphStep` both add it here. Any other module, or a forward that made none,
    leaves ``loss`` as it is. A ``DistributedDataParallel`` wrapper is looked through (``model.module``); a
    ``torch.compile`` wrapper passes the attribute on by itself.

    Args:
        model: the module whose forward made ``loss`` (a :class:`DAPTModel`, or any module).
        loss: the task loss, a scalar tensor ``()``.

    Returns:
        The scalar ``loss + auxiliary`` in float32 where the forward made an auxiliary loss, else ``loss``.
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    auxiliary = getattr(inner, "auxiliary_loss", None)
    if not isinstance(auxiliary, torch.Tensor):
        return loss
    return loss + auxiliary.float()


def clear_auxiliary_loss(model: nn.Module) -> None:
    """Forget the auxiliary loss of ``model``'s last forward (before the next one, so that a forward that
    makes none is not given the previous one's); no-op for a module without one."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if isinstance(getattr(inner, "auxiliary_loss", None), torch.Tensor):
        inner.auxiliary_loss = None


class _LastForward:
    """What a model's last forward leaves for the training loop (its auxiliary loss). It holds a tensor of
    that forward's graph, which ``copy.deepcopy`` and pickling refuse: a copy of the model starts empty."""

    def __init__(self) -> None:
        self.auxiliary_loss: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _LastForward:
        return _LastForward()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.auxiliary_loss = None


def _backbone_modules(module: nn.Module) -> Iterator[nn.Module]:
    """The modules of a wrapped backbone, leaving out the adapters' own (those inside
    :class:`~pointpeft.dapt.tfts.AdapterModules`: IDPT's generator has BatchNorms that always train)."""
    yield module
    for child in module.children():
        if not isinstance(child, AdapterModules):
            yield from _backbone_modules(child)


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def check_plain_backbone(model: nn.Module) -> None:
    """Check that ``model`` has no DAPT inserted (it is not a DAPTModel, nor a backbone inside one).

    Raises:
        ValueError: otherwise, saying how to get the plain backbone back.
    """
    if isinstance(model, DAPTModel) or any(isinstance(m, DAPTWrapper) for m in model.modules()):
        raise ValueError(
            "model already has DAPT inserted; wrap the original backbone once (DAPTModel.unload() gives "
            "it back, or add a further adapter with DAPTModel.add_adapter / load_adapter)"
        )


def _check_layout(model: nn.Module, layout: BackboneLayout) -> None:
    nested = [(a, b) for a in layout.blocks for b in layout.blocks if b.startswith(a + ".")]
    if nested:
        raise ValueError(
            f"layout.blocks must not name a block inside another, got {layout.blocks} "
            f"({nested[0][1]} is inside {nested[0][0]})"
        )
    paths = list(layout.blocks) + [p for p in (layout.patch_encoder, layout.final_norm) if p is not None]
    for path in paths:
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"layout names {path!r}, which is not a module of {type(model).__name__}"
            ) from None
    block_layout = layout.block
    roles = [
        ("mlp", block_layout.mlp),
        ("adapter_out", block_layout.adapter_out),
        ("attn", block_layout.attn),
    ]
    for block_path in layout.blocks:
        block = model.get_submodule(block_path)
        for role, sub in [*roles, *block_layout.tfts_sites().items()]:
            if sub is None:
                continue
            try:
                block.get_submodule(sub)
            except AttributeError:
                raise ValueError(
                    f"layout.block.{role} = {sub!r}, but block {block_path} has no such module"
                ) from None
        qkv = block.get_submodule(block_layout.qkv) if block_layout.qkv is not None else None
        if isinstance(qkv, nn.MultiheadAttention) and not qkv._qkv_same_embed_dim:
            raise ValueError(
                f"layout.block.qkv = {block_layout.qkv!r} is an nn.MultiheadAttention with separate q/k/v "
                "projections, which has no packed projection for the TFTS; set qkv=None to skip it"
            )
        for role, sub in block_layout.tfts_sites().items():
            if sub is not None and not (role == "qkv" and isinstance(qkv, nn.MultiheadAttention)):
                module_width(
                    block.get_submodule(sub), f"{block_path}.{sub}"
                )  # raises before anything changes
    own = dict(model.named_parameters())
    for name in layout.trainable_tokens:
        if name not in own:
            raise ValueError(f"layout.trainable_tokens names {name!r}, which is not a parameter of the model")


def _insert_block(block: nn.Module, layout: BackboneLayout, link: CopiesLink, dim: int) -> list[str]:
    """Wrap a block's TFTS sites and FFN; returns the roles skipped for lack of a module."""
    block_layout = layout.block
    for role, path in block_layout.tfts_sites().items():
        if path is None:
            continue
        site = block.get_submodule(path)
        if role == "qkv" and isinstance(site, nn.MultiheadAttention):
            _replace(block, path, PackedQKVScaleShift(site, link, 3 * site.embed_dim))
        elif role == "norm2":  # also the site of a residual-stream adapter (AdaptFormer's)
            width = module_width(site, path)
            _replace(block, path, StreamAdapterSite(site, link, width, seq_first=layout.seq_first))
        else:
            _replace(block, path, ScaleShiftAfter(site, link, module_width(site, path), role))
    mlp = block.get_submodule(block_layout.mlp)
    if block_layout.adapter_out is None or block_layout.adapter_out == block_layout.mlp:
        _replace(block, block_layout.mlp, ParallelAdapter(mlp, link))
    else:
        _replace(block, block_layout.mlp, AdapterInput(mlp, link))
        out = block.get_submodule(block_layout.adapter_out)
        _replace(block, block_layout.adapter_out, AdapterOutput(out, link))
    if isinstance(block, nn.TransformerEncoderLayer):
        block.register_forward_pre_hook(keep_python_forward)
    return [role for role, path in block_layout.tfts_sites().items() if path is None]


def wrap_with_dapt(
    model: nn.Module,
    config: DAPTConfig,
    *,
    layout: BackboneLayout | str | None = None,
    adapter_name: str = DEFAULT_ADAPTER,
    execution: str = "fused",
    example_input: Any = None,
) -> DAPTModel:
    """Freeze ``model`` and insert DAPT: TFTS, a Dynamic Adapter and an internal prompt per block, and a
    pooled head.

    The backbone is modified in place: every one of its parameters gets ``requires_grad=False`` (except the
    CLS token and CLS positional embedding, which DAPT trains), and its blocks, norms, linear layers and
    patch encoder are wrapped. The blocks are found by walking the module tree (see
    :func:`pointpeft.detect_layout`) unless ``layout`` names them or names a preset.

    Args:
        model: a point-cloud transformer, e.g. :class:`pointpeft.backbones.PointMAE`. Its forward must run
            the blocks in order and then the final norm.
        config: the DAPT settings of the first adapter.
        layout: where the blocks and other parts are: a :class:`~pointpeft.BackboneLayout`, a preset name
            (``"point_mae"``, ``"point_bert"``, ``"recon"``, ``"pointgpt"``, ``"openpoints_pointvit"``,
            ``"timm_vit"``, ``"torch_transformer_encoder"``), or None to detect.
        adapter_name: the name of the first adapter.
        execution: ``"fused"``, ``"recompute"`` or ``"plain"``: how the model computes (the same
            function; see :attr:`DAPTModel.execution`).
        example_input: inputs of the backbone's forward (``points (B, N, 3)``, or a tuple), used only when
            ``layout`` is None: one forward on them shows which norm follows the blocks
            (:func:`pointpeft.dapt.layout.resolve_final_norm`). Optional.

    Returns:
        a :class:`DAPTModel` whose ``forward(points (B, N, 3))`` returns logits ``(B, num_classes)``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``config`` not a :class:`~pointpeft.DAPTConfig`.
        ValueError: if the model is already wrapped, no blocks are found, or ``layout`` does not match it.
    """
    if not isinstance(config, DAPTConfig):
        raise TypeError(f"config must be a pointpeft.DAPTConfig, got {type(config).__name__}")
    return get_peft_model(
        model,
        config,
        layout=layout,
        adapter_name=adapter_name,
        execution=execution,
        example_input=example_input,
    )


def get_peft_model(
    model: nn.Module,
    config: MethodConfig,
    *,
    layout: BackboneLayout | str | None = None,
    adapter_name: str = DEFAULT_ADAPTER,
    execution: str = "fused",
    example_input: Any = None,
) -> DAPTModel:
    """Freeze ``model`` and insert the PEFT method that ``config``'s type names, with a pooled head.

    The methods: :class:`~pointpeft.DAPTConfig` (DAPT, as :func:`wrap_with_dapt`),
    :class:`~pointpeft.SSFConfig` (scale-and-shift after the frozen operations),
    :class:`~pointpeft.LinearProbeConfig` (the head), :class:`~pointpeft.LoRAConfig` (low-rank updates beside
    the blocks' linear layers), :class:`~pointpeft.VPTConfig` (VPT-Deep: prompt tokens per block; VPT-Shallow
    with ``deep=False``: prompt tokens joining once, at the first block),
    :class:`~pointpeft.AdapterConfig` (AdaptFormer's adapter on the residual stream beside each FFN branch),
    :class:`~pointpeft.IDPTConfig` (IDPT: one prompt made from the patch tokens by a DGCNN at one block),
    :class:`~pointpeft.PointGSTConfig` (PointGST: a spectral adapter on the residual stream, in graph bases
    of the patch centres),
    :class:`~pointpeft.BitFitConfig` and :class:`~pointpeft.FullFinetuneConfig`, the
    classes of :data:`pointpeft.methods.plan.METHOD_CONFIGS`. Whatever the method, the backbone is wrapped the
    same way (see :func:`wrap_with_dapt`), so :meth:`DAPTModel.add_adapter` can add adapters of the other
    methods, and saving, loading and counting work alike.

    Args:
        model: a point-cloud transformer, e.g. :class:`pointpeft.backbones.PointMAE`.
        config: the first adapter's config; its type picks the method.
        layout, adapter_name, execution, example_input: as :func:`wrap_with_dapt`.

    Returns:
        a :class:`DAPTModel` whose ``forward(points (B, N, 3))`` returns logits ``(B, num_classes)``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``config`` not a config of a known method.
        ValueError: if the model is already wrapped, no blocks are found, or ``layout`` does not match it.

    Example::

        model = pointpeft.get_peft_model(PointMAE(), pointpeft.SSFConfig(num_classes=15))
        model.add_adapter("dapt", pointpeft.DAPTConfig(num_classes=15))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_method_config(config)
    check_plain_backbone(model)
    check_adapter_name(adapter_name)
    check_execution(execution)
    if layout is None:
        layout = detect_layout(model, example_input=example_input)
    elif isinstance(layout, str):
        layout = preset_layout(layout, model)
    elif not isinstance(layout, BackboneLayout):
        raise TypeError(
            f"layout must be a pointpeft.BackboneLayout, a preset name or None, got {type(layout).__name__}"
        )
    _check_layout(model, layout)
    if "cls" in config.pool and layout.num_global_tokens < 1:
        raise ValueError(f"config.pool contains 'cls' but {type(model).__name__} has no CLS token")
    dim = token_width(model.get_submodule(layout.blocks[0]), layout)
    # Everything was checked; from here on a failure (out of memory, a module that breaks) takes DAPT out
    # again, so that the caller's backbone is as it was.
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        return _insert(model, config, layout, dim, adapter_name, execution, requires_grad)
    except BaseException:
        restore_plain_backbone(model, requires_grad)  # a no-op where _insert unloaded already
        raise


def _insert(
    model: nn.Module,
    config: MethodConfig,
    layout: BackboneLayout,
    dim: int,
    adapter_name: str,
    execution: str,
    requires_grad: Mapping[str, bool],
) -> DAPTModel:
    """The mutating part of :func:`wrap_with_dapt`, on checked arguments."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    link = CopiesLink()
    allow_checkpointed_side_effects()

    skipped: list[str] = []
    for block_path in layout.blocks:
        block = model.get_submodule(block_path)
        skipped = _insert_block(block, layout, link, dim)
        _replace(model, block_path, DAPTBlock(block, layout.num_global_tokens, link, layout.seq_first))
    tfts = plan_of(config).tfts
    if tfts and skipped:
        warnings.warn(
            f"{type(model).__name__} blocks have no module for {skipped}; the TFTS at those places is skipped",
            stacklevel=3,
        )
    if layout.patch_encoder is None:
        if tfts:
            warnings.warn(
                f"no patch encoder found in {type(model).__name__}; the TFTS on the patch tokens is skipped",
                stacklevel=3,
            )
    else:
        encoder = model.get_submodule(layout.patch_encoder)
        _replace(model, layout.patch_encoder, PatchEncoderSite(encoder, link, dim))
    if layout.final_norm is not None:
        norm = model.get_submodule(layout.final_norm)
        _replace(model, layout.final_norm, FinalNorm(norm, link, layout.seq_first))

    dapt = DAPTModel(model, layout, dim, link, requires_grad=requires_grad)
    try:
        dapt.execution = execution
        dapt.add_adapter(adapter_name, config)
        dapt.set_adapter(adapter_name)
        dapt.train(model.training)
    except BaseException:
        dapt.unload()
        raise
    return dapt
