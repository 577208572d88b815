"""Where a backbone keeps its blocks, norms and tokens: found by walking the module tree.

A transformer block is any module with an attention child and an MLP child (the timm / Point-MAE shape, or
``nn.TransformerEncoderLayer``'s ``self_attn`` + ``linear1``/``linear2``). Inside a block, the norms and
linear layers are found by their conventional names. The result is a :class:`BackboneLayout`, plain data
that a user can also write by hand for an unusual model, or get from a named preset
(:mod:`pointpeft.dapt.presets`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ATTENTION_NAMES = ("attn", "self_attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "ffn", "feed_forward")
NORM1_NAMES = ("norm1", "ln_1", "ln1", "norm_1")
NORM2_NAMES = ("norm2", "ln_2", "ln2", "norm_2")
QKV_NAMES = ("qkv", "to_qkv")
PROJ_NAMES = ("proj", "out_proj", "o_proj")
FC1_NAMES = ("fc1", "lin1", "c_fc")
FC2_NAMES = ("fc2", "lin2", "c_proj")
LAYER_SCALE_NAMES = ("ls2", "gamma_2")
PATCH_ENCODER_NAMES = ("encoder", "patch_encoder", "patch_embed", "tokenizer")
FINAL_NORM_NAMES = ("norm", "final_norm", "norm_f", "ln_f")
TOKEN_PARAMETER_NAMES = ("cls_token", "cls_pos")
# Leading tokens that models put before the patches (ReCon: img/text; DeiT-style: dist; timm: reg).
GLOBAL_TOKEN_NAMES = ("cls_token", "img_token", "text_token", "dist_token", "reg_token")
_NORM_TYPES = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _check_module_path(name: str, value: Any, *, optional: bool = False) -> str | None:
    """``value`` checked to be a dotted module path (``"blocks.0.attn"``: non-empty names joined by dots), or
    None when ``optional``.

    Raises:
        TypeError: if ``value`` is not a str (or None when allowed). ValueError: if it is empty or has an
            empty name between dots. The messages name ``name``.
    """
    if value is None and optional:
        return None
    if not isinstance(value, str):
        allowed = "a module path (str) or None" if optional else "a module path (str)"
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    if not value or "" in value.split("."):
        hint = "; use None for no module" if optional else ""
        raise ValueError(f"{name} must be a dotted module path such as 'blocks.0.mlp', got {value!r}{hint}")
    return value


def _check_paths(name: str, value: Any) -> tuple[str, ...]:
    """``value`` as a tuple of distinct module paths (a list or tuple; a single str is refused)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a list or tuple of module paths, got {type(value).__name__} {value!r}"
        )
    paths = tuple(value)
    for i, path in enumerate(paths):
        _check_module_path(f"{name}[{i}]", path)
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"{name} must not repeat a path, got {repeated} more than once in {paths}")
    return paths


def _check_count(name: str, value: Any) -> int:
    """``value`` checked to be an int >= 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return value


@dataclass(frozen=True)
class BlockLayout:
    """Paths of a block's sub-modules, relative to the block.

    Args:
        mlp: the feed-forward module; the Dynamic Adapter takes the same input. Required.
        adapter_out: the module after whose output the adapter's output is added; None means ``mlp``
            itself (the adapter runs beside the FFN, inside its residual branch). Name another module when
            something sits between the FFN and the residual add that should not scale the adapter (timm's
            LayerScale ``ls2``), or when the FFN is not one module (``nn.TransformerEncoderLayer``:
            ``mlp="linear1"``, ``adapter_out="linear2"``).
        attn: the attention module (informational; used to tell the sequence layout).
        norm1, qkv, proj, norm2, fc1, fc2: the modules after which DAPT puts a TFTS, in forward order.
            ``qkv`` may name an ``nn.MultiheadAttention``: the TFTS is then applied to its packed input
            projection. ``proj`` may name a module that returns a tuple (``nn.MultiheadAttention``): the
            TFTS is applied to the first element. None means the block has no such module; DAPT then skips
            the TFTS there (with a warning).
    """

    mlp: str = "mlp"
    adapter_out: str | None = None
    attn: str | None = "attn"
    norm1: str | None = "norm1"
    qkv: str | None = "attn.qkv"
    proj: str | None = "attn.proj"
    norm2: str | None = "norm2"
    fc1: str | None = "mlp.fc1"
    fc2: str | None = "mlp.fc2"

    def __post_init__(self) -> None:
        _check_module_path("BlockLayout.mlp", self.mlp)
        for f in dataclasses.fields(self)[1:]:
            _check_module_path(f"BlockLayout.{f.name}", getattr(self, f.name), optional=True)

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
        final_norm: the norm after the last block (TFTS after it), or None (then the output of the last
            block is used, with a TFTS).
        num_global_tokens: leading tokens (CLS, and e.g. ReCon's image/text tokens or PointGPT's start
            token) that come before the prompts and patches. The head pools patches after them.
        cls_index: position of the CLS token among the global tokens (PointGPT: 1, after its start token).
        seq_first: the blocks take ``(T, B, C)`` instead of ``(B, T, C)`` (``nn.MultiheadAttention``
            without ``batch_first``).
        trainable_tokens: backbone parameters DAPT trains (the CLS token and its positional embedding).
        preset: the name of the preset the layout came from, if any (informational).
    """

    blocks: tuple[str, ...]
    block: BlockLayout = field(default_factory=BlockLayout)
    patch_encoder: str | None = "encoder"
    final_norm: str | None = "norm"
    num_global_tokens: int = 1
    cls_index: int = 0
    seq_first: bool = False
    trainable_tokens: tuple[str, ...] = TOKEN_PARAMETER_NAMES
    preset: str | None = None

    def __post_init__(self) -> None:
        """Check every field (types, paths, counts) so that a hand-written or loaded layout fails here,
        naming the field, instead of deep inside the wrapping."""
        object.__setattr__(self, "blocks", _check_paths("blocks", self.blocks))
        if not self.blocks:
            raise ValueError("blocks must name at least one block, got an empty list")
        if not isinstance(self.block, BlockLayout):
            raise TypeError(f"block must be a BlockLayout, got {type(self.block).__name__}")
        _check_module_path("patch_encoder", self.patch_encoder, optional=True)
        _check_module_path("final_norm", self.final_norm, optional=True)
        _check_count("num_global_tokens", self.num_global_tokens)
        _check_count("cls_index", self.cls_index)
        if self.num_global_tokens and not 0 <= self.cls_index < self.num_global_tokens:
            raise ValueError(
                f"cls_index must be in [0, num_global_tokens={self.num_global_tokens}), got {self.cls_index}"
            )
        if not self.num_global_tokens and self.cls_index:
            raise ValueError(f"cls_index must be 0 when num_global_tokens is 0, got {self.cls_index}")
        if not isinstance(self.seq_first, bool):
            raise TypeError(
                f"seq_first must be a bool, got {type(self.seq_first).__name__} {self.seq_first!r}"
            )
        object.__setattr__(self, "trainable_tokens", _check_paths("trainable_tokens", self.trainable_tokens))
        if self.preset is not None and not isinstance(self.preset, str):
            raise TypeError(f"preset must be a str or None, got {type(self.preset).__name__} {self.preset!r}")

    def to_dict(self) -> dict[str, Any]:
        """The layout as plain JSON-ready data (see :meth:`from_dict`)."""
        data = dataclasses.asdict(self)
        data["blocks"] = list(self.blocks)
        data["trainable_tokens"] = list(self.trainable_tokens)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneLayout:
        """Rebuild a layout written by :meth:`to_dict`.

        Raises:
            TypeError: if ``data`` (or its ``block``) is not a mapping, or a value has the wrong type.
            ValueError: if a key is unknown, ``blocks`` is missing, or a value is invalid. The messages
                name the key.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"not a BackboneLayout: expected a dict of its fields, got {type(data).__name__}")
        _check_keys("BackboneLayout", data, {f.name for f in dataclasses.fields(cls)})
        if "blocks" not in data:
            raise ValueError("not a BackboneLayout: no 'blocks'")
        values = dict(data)
        try:
            if "block" in values:
                block = values["block"]
                if not isinstance(block, Mapping):
                    raise TypeError(f"block must be a dict of BlockLayout fields, got {type(block).__name__}")
                _check_keys("BlockLayout", block, {f.name for f in dataclasses.fields(BlockLayout)})
                values["block"] = BlockLayout(**block)
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise type(error)(f"BackboneLayout.from_dict: {error}") from None


def _check_keys(kind: str, data: Mapping[Any, Any], known: set[str]) -> None:
    unknown = sorted(repr(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"not a {kind}: unknown keys [{', '.join(unknown)}] (its keys are {sorted(known)})")


def _child(module: nn.Module, names: Sequence[str]) -> str | None:
    children = dict(module.named_children())
    return next((name for name in names if name in children), None)


def _attention_child(module: nn.Module) -> str | None:
    name = _child(module, ATTENTION_NAMES)
    if name is not None:
        return name
    return next((n for n, c in module.named_children() if isinstance(c, nn.MultiheadAttention)), None)


def _is_block(module: nn.Module) -> bool:
    children = dict(module.named_children())
    has_mlp = any(n in children for n in MLP_NAMES) or ("linear1" in children and "linear2" in children)
    return has_mlp and _attention_child(module) is not None


def _linear_ends(module: nn.Module) -> tuple[str | None, str | None]:
    """First and last ``nn.Linear`` children of an ``nn.Sequential`` FFN (``Linear, GELU, Linear``)."""
    linears = [name for name, child in module.named_children() if isinstance(child, nn.Linear)]
    return (linears[0], linears[-1]) if len(linears) >= 2 else (None, None)


def _block_layout(block: nn.Module) -> BlockLayout:
    attn = _attention_child(block)
    attn_module = block.get_submodule(attn) if attn is not None else None

    def inside(parent: str | None, module: nn.Module | None, names: Sequence[str]) -> str | None:
        if module is None:
            return None
        name = _child(module, names)
        return None if name is None else f"{parent}.{name}"

    if isinstance(attn_module, nn.MultiheadAttention):
        # No qkv Linear: the TFTS goes on the packed in-projection (when q, k, v share it) and on the
        # attention's output, which is out_proj's output.
        qkv = attn if attn_module._qkv_same_embed_dim else None
        proj = attn
    else:
        qkv = inside(attn, attn_module, QKV_NAMES)
        proj = inside(attn, attn_module, PROJ_NAMES)

    mlp = _child(block, MLP_NAMES)
    adapter_out: str | None = None
    fc1: str | None
    fc2: str | None
    if mlp is None:  # nn.TransformerEncoderLayer: linear1 -> activation -> dropout -> linear2
        mlp, adapter_out, fc1, fc2 = "linear1", "linear2", "linear1", "linear2"
    else:
        mlp_module = block.get_submodule(mlp)
        fc1, fc2 = inside(mlp, mlp_module, FC1_NAMES), inside(mlp, mlp_module, FC2_NAMES)
        if fc1 is None and fc2 is None and isinstance(mlp_module, nn.Sequential):
            first, last = _linear_ends(mlp_module)
            if first is not None:
                fc1, fc2 = f"{mlp}.{first}", f"{mlp}.{last}"
        adapter_out = _child(block, LAYER_SCALE_NAMES)
    return BlockLayout(
        mlp=mlp,
        adapter_out=adapter_out,
        attn=attn,
        norm1=_child(block, NORM1_NAMES),
        qkv=qkv,
        proj=proj,
        norm2=_child(block, NORM2_NAMES),
        fc1=fc1,
        fc2=fc2,
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
    ``nn.MultiheadAttention``) and an MLP child (``mlp``/``ffn``/``feed_forward``, or ``linear1`` and
    ``linear2``), grouped by the container that holds them, and returns the largest group.

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
            f"{MLP_NAMES}, or linear1 and linear2). Containers seen:\n{_candidates_report(model)}\n"
            "Name the blocks explicitly: wrap_with_dapt(model, config, layout=BackboneLayout("
            "blocks=('path.to.block0', 'path.to.block1', ...), block=BlockLayout(mlp='ffn', "
            "norm1='ln_a', ...)))"
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


def block_list(blocks: Sequence[str]) -> str:
    """The path of the container that holds the blocks (``blocks.blocks.0`` → ``blocks.blocks``; ``""``
    when the blocks are children of the root)."""
    return blocks[0].rpartition(".")[0]


def ancestors(path: str) -> list[str]:
    """The paths of the modules above ``path``, nearest first, ending with the root ``""``
    (``a.b.c`` → ``["a.b", "a", ""]``)."""
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has_tokens(module: nn.Module) -> bool:
    own = dict(module.named_parameters(recurse=False))
    if any(name in own for name in GLOBAL_TOKEN_NAMES):
        return True
    return any(_token_count_attribute(module, attr) is not None for attr in ("n_tokens", "num_prefix_tokens"))


def _token_count_attribute(module: nn.Module, attr: str) -> int | None:
    value = getattr(module, attr, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def transformer_root(model: nn.Module, blocks: Sequence[str]) -> str:
    """The path of the module that holds the point transformer whose ``blocks`` these are: the nearest
    module above the blocks that owns the global tokens (a ``cls_token``, or an ``n_tokens`` /
    ``num_prefix_tokens`` count), else the root ``""``. For a model that wraps its transformer (openpoints'
    ``BaseCls`` keeps its PointViT in ``encoder``) this is the wrapped transformer (``"encoder"``)."""
    for path in ancestors(block_list(blocks)):
        if _has_tokens(model.get_submodule(path)):
            return path
    return ""


def find_patch_encoder(model: nn.Module, blocks: Sequence[str]) -> str | None:
    """The module whose output ``(B, G, C)`` are the patch tokens: a child of the transformer root
    (:func:`transformer_root`) named ``reduce_dim`` (Point-BERT: after the 256-wide encoder), ``proj`` beside
    a ``patch_embed`` (openpoints: ``patch_embed`` returns points and features), or one of
    :data:`PATCH_ENCODER_NAMES`; None if there is none."""
    root = transformer_root(model, blocks)
    top = dict(model.get_submodule(root).named_children())
    holder = block_list(blocks)[len(root) :].lstrip(".").split(".")[0]  # the child that holds the blocks
    if "reduce_dim" in top and isinstance(top["reduce_dim"], nn.Linear):
        return _join(root, "reduce_dim")
    if "patch_embed" in top and isinstance(top.get("proj"), (nn.Linear, nn.Identity)):
        return _join(root, "proj")
    name = next((n for n in PATCH_ENCODER_NAMES if n in top and n != holder), None)
    return None if name is None else _join(root, name)


def final_norm_candidates(model: nn.Module, blocks: Sequence[str]) -> list[str]:
    """Norms by name (:data:`FINAL_NORM_NAMES`) that are children of a module above the blocks, nearest
    first: a container that runs the blocks and then its own norm (PointGPT's extractor and its ``ln_f``,
    ``nn.TransformerEncoder``'s ``norm``) comes before the root's ``norm``."""
    found = []
    container = block_list(blocks)
    for path in ancestors(container):
        children = dict(model.get_submodule(path).named_children())
        for name in FINAL_NORM_NAMES:
            full = _join(path, name)
            if isinstance(children.get(name), _NORM_TYPES) and full != container:
                found.append(full)
    return found


def find_final_norm(model: nn.Module, blocks: Sequence[str]) -> str | None:
    """The norm after the blocks, by structure: the nearest of :func:`final_norm_candidates`, or None.
    :func:`pointpeft.wrap_with_dapt` checks this by observing a forward where the candidates are several
    (:func:`observe_final_norm`)."""
    candidates = final_norm_candidates(model, blocks)
    return candidates[0] if candidates else None


def observe_final_norm(model: nn.Module, blocks: Sequence[str], *inputs: Any) -> str | None:
    """The norm ``model``'s forward actually applies to the output of the last block: the first norm module
    (``LayerNorm``/``RMSNorm`` outside the blocks) that runs after the last block, on a tensor as large as
    the block's output. Runs one forward on ``inputs`` in eval mode without gradients (the model's modes,
    its RNG state and its tensors are as before). None if no norm runs after the blocks.

    Raises:
        RuntimeError (or what the forward raises): if the forward fails, or does not run the last block.
    """
    last = model.get_submodule(blocks[-1])
    inside = tuple(blocks)
    norms = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, _NORM_TYPES) and not any(name == b or name.startswith(b + ".") for b in inside)
    ]
    state: dict[str, Any] = {"block_numel": None, "found": None, "ran": False}

    def after_block(module: nn.Module, args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        state["block_numel"] = out.numel() if hasattr(out, "numel") else None
        state["found"] = None
        state["ran"] = True

    def after_norm(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            numel = state["block_numel"]
            if (
                numel is not None
                and state["found"] is None
                and getattr(output, "numel", lambda: -1)() == numel
            ):
                state["found"] = name
                state["block_numel"] = None  # the first norm after the last block call wins

        return hook

    handles = [last.register_forward_hook(after_block)]
    handles += [module.register_forward_hook(after_norm(name)) for name, module in norms]
    modes = {m: m.training for m in model.modules()}
    try:
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    if not state["ran"]:
        raise RuntimeError(f"the forward of {type(model).__name__} did not run its last block {blocks[-1]!r}")
    found: str | None = state["found"]
    return found


def probe_points(model: nn.Module, num_points: int = 1024, batch: int = 1) -> torch.Tensor:
    """Random points ``(batch, num_points, 3)`` in ``[-1, 1]`` on the device and in the dtype of ``model``'s
    first floating parameter (float32 on the CPU if it has none), for :func:`observe_final_norm`."""
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(batch, num_points, 3, generator=generator) * 2 - 1).to(device=device, dtype=dtype)


def find_global_tokens(model: nn.Module, blocks: Sequence[str]) -> tuple[int, int]:
    """``(num_global_tokens, cls_index)``: the leading tokens of the transformer root
    (:func:`transformer_root`), from its count attribute (openpoints' ``n_tokens``, timm's
    ``num_prefix_tokens``) or its token parameters; a start token ``sos`` on a module between the root and
    the blocks (PointGPT's extractor) comes first, before the CLS token."""
    root_path = transformer_root(model, blocks)
    root = model.get_submodule(root_path)
    for attr in ("n_tokens", "num_prefix_tokens"):
        value = _token_count_attribute(root, attr)
        if value is not None:
            return value, 0
    own = dict(root.named_parameters(recurse=False))
    count = sum(p.shape[-2] if p.dim() >= 2 else 1 for n, p in own.items() if n in GLOBAL_TOKEN_NAMES)
    between = [p for p in ancestors(block_list(blocks)) if len(p) > len(root_path)]
    if any("sos" in dict(model.get_submodule(p).named_parameters(recurse=False)) for p in between):
        return count + 1, 1  # PointGPT: [sos, cls, patches...]
    return count, 0


def trainable_token_paths(model: nn.Module, blocks: Sequence[str]) -> tuple[str, ...]:
    """The CLS token and CLS positional embedding of the transformer root, as paths from ``model``."""
    root = transformer_root(model, blocks)
    own = dict(model.get_submodule(root).named_parameters(recurse=False))
    return tuple(_join(root, n) for n in TOKEN_PARAMETER_NAMES if n in own)


def resolve_final_norm(model: nn.Module, blocks: Sequence[str], example_input: Any = None) -> str | None:
    """The final norm, the one the forward applies after the last block.

    With ``example_input`` (a tensor, or a tuple of the forward's positional arguments), a forward on it is
    observed (:func:`observe_final_norm`). Without one, the norms named like a final norm (``norm``,
    ``ln_f``, ...) on the modules above the blocks decide (:func:`final_norm_candidates`): where there is
    exactly one, it is taken; where there are several (PointGPT's unused ``norm`` beside ``blocks.ln_f``) or
    none, a forward on random points ``(1, 1024, 3)`` is observed, and should that forward fail (a model
    that needs other inputs, or CUDA extensions on a CPU) the nearest candidate is taken. A norm taken by
    name that the forward does not run after the blocks fails the first forward, with a RuntimeError.
    (A forward is run only where the names leave a doubt: a model built on the CPU whose CUDA extensions
    do not check their inputs' device could otherwise be handed CPU tensors.)

    Raises:
        ValueError: if the forward on ``example_input`` fails or does not run the blocks.
    """
    if example_input is not None:
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        try:
            return observe_final_norm(model, blocks, *inputs)
        except Exception as error:
            raise ValueError(
                f"example_input: the forward of {type(model).__name__} on it failed ({type(error).__name__}: "
                f"{error}); pass inputs the model's forward takes, e.g. points (B, N, 3)"
            ) from error
    candidates = final_norm_candidates(model, blocks)
    if len(candidates) == 1:
        return candidates[0]
    try:
        return observe_final_norm(model, blocks, probe_points(model))
    except Exception:  # the model needs other inputs or a device it lacks: decide by structure
        return candidates[0] if candidates else None


def detect_layout(model: nn.Module, *, example_input: Any = None) -> BackboneLayout:
    """Walk ``model`` and return where DAPT goes: the blocks, their sub-modules, the patch encoder, the
    final norm, the global tokens and the CLS parameters.

    The blocks and their parts are found by structure and names; the patch encoder, the tokens and the
    final norm are looked for in the module that holds the transformer (:func:`transformer_root`), so a
    model that wraps its transformer (openpoints' ``BaseCls``) is detected too. The final norm is the one
    the forward uses (:func:`resolve_final_norm`): PointGPT's ``blocks.ln_f``, not the ``norm`` its forward
    never calls.

    Args:
        model: the backbone.
        example_input: inputs of ``model``'s forward (a tensor or a tuple), to observe which norm follows
            the blocks; optional.

    Raises:
        ValueError: if no blocks are found, if the blocks differ in structure, or if the forward on
            ``example_input`` fails.
    """
    blocks = find_blocks(model)
    first = model.get_submodule(blocks[0])
    block_layout = _block_layout(first)
    for path in blocks[1:]:
        other = _block_layout(model.get_submodule(path))
        if other != block_layout:
            raise ValueError(
                f"blocks differ in structure: {blocks[0]} has {block_layout}, {path} has {other}; "
                "name the layout explicitly with layout=BackboneLayout(...)"
            )
    attn = first.get_submodule(block_layout.attn) if block_layout.attn is not None else None
    seq_first = isinstance(attn, nn.MultiheadAttention) and not attn.batch_first
    num_global, cls_index = find_global_tokens(model, blocks)
    return BackboneLayout(
        blocks=blocks,
        block=block_layout,
        patch_encoder=find_patch_encoder(model, blocks),
        final_norm=resolve_final_norm(model, blocks, example_input),
        num_global_tokens=num_global,
        cls_index=cls_index,
        seq_first=seq_first,
        trainable_tokens=trainable_token_paths(model, blocks),
    )
