"""Saving and loading DAPT adapters: the public entry points.

The file format (``adapter_config.json`` + ``adapter_model.safetensors``, written atomically, checked on
reading) lives in :mod:`pointpeft.dapt.adapter_files`, which knows nothing of how a model is built; this module
adds what needs the model: unwrapping a model from DDP / ``torch.compile`` and wrapping a backbone to load
an adapter into.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from pointpeft.checks import check_adapter_name, check_type
from pointpeft.config import DEFAULT_ADAPTER
from pointpeft.dapt.adapter_files import (
    BACKBONE_RECORD_ATTRIBUTE,
    AdapterFile,
    add_adapter_from,
    check_backbone_class,
    check_signature,
    frozen_weights_sha256,
    load_tensors,
    parse_adapter,
    plain_width,
    read_adapter,
    write_adapters,
)
from pointpeft.dapt.adapter_files import adapter_state_dict as dapt_adapter_state_dict
from pointpeft.dapt.model import DAPTModel, check_plain_backbone, get_peft_model

__all__ = [
    "FACTORY_PATTERN",
    "adapter_state_dict",
    "build_recorded_backbone",
    "check_recorded_weights",
    "import_factory",
    "load_adapter",
    "load_adapter_into",
    "save_adapter",
    "unwrap_dapt",
]

#: What a factory (``model.factory``) must look like: ``package.module:function``, the part after ``:``
#: possibly a dotted attribute path (``package.module:Class.build``).
FACTORY_PATTERN = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"


def unwrap_dapt(model: Any) -> DAPTModel:
    """The :class:`~pointpeft.DAPTModel` inside ``model`` (itself, or inside DDP / DataParallel /
    ``torch.compile``).

    Raises:
        TypeError: if there is none. RuntimeError: if its adapters were unloaded.
    """
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    if not isinstance(inner, DAPTModel):
        raise TypeError(f"model must be a pointpeft.DAPTModel, got {type(model).__name__}")
    if not inner.adapters:
        raise RuntimeError(
            "model has no adapters: it was unloaded (DAPTModel.unload()); wrap the backbone again with "
            "pointpeft.wrap_with_dapt"
        )
    return inner


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike[str],
    adapter_names: list[str] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
) -> None:
    """Write adapters in the peft layout: the ``"default"`` adapter in ``directory``, any other in
    ``directory/<name>/``, each as ``adapter_config.json`` and ``adapter_model.safetensors``.

    The config records the adapter's :class:`~pointpeft.DAPTConfig`, the resolved
    :class:`~pointpeft.BackboneLayout` (block paths included), the backbone class and signature and the
    pointpeft version; and, where it is known, how to rebuild the backbone (the ``backbone`` entry: a
    backbone built by the training CLI, or a built-in backbone, which records its constructor arguments;
    see :func:`pointpeft.dapt.adapter_files.backbone_record`), so that :func:`load_adapter` needs no
    backbone. Each file is replaced atomically, the weights (which carry a copy of the config)
    first: a save killed at any point leaves a folder that loads as the previous adapter or the new one.
    Everything is checked before anything is written.

    Args:
        model: a :class:`~pointpeft.DAPTModel`, also inside ``DistributedDataParallel``, ``DataParallel``
            or ``torch.compile`` (unwrapped).
        directory: the folder to write (created if needed).
        adapter_names: which adapters (a list of names); all when None.
        data: the data settings the adapter was trained with, recorded as the ``data`` entry (the
            training CLI writes its ``data`` section, the number of classes and the seed).

    Raises:
        TypeError: for a non-DAPT model, a non-path ``directory``, a non-list ``adapter_names`` or a
            non-mapping ``data``.
        ValueError: for an unknown adapter name, a folder path that is a file, or an adapter holding NaN or
            inf values (nothing is written then).
    """
    write_adapters(unwrap_dapt(model), directory, adapter_names, data=data)


def adapter_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The live tensors of one adapter of ``model`` (a :class:`~pointpeft.DAPTModel`, also inside DDP,
    ``DataParallel`` or ``torch.compile``), keyed as in its adapter file (see
    :func:`pointpeft.dapt.adapter_files.adapter_state_dict`)."""
    return dapt_adapter_state_dict(unwrap_dapt(model), adapter_name)


@contextlib.contextmanager
def _current_directory_importable() -> Iterator[None]:
    """The current directory first on ``sys.path`` (as ``python -m`` puts it) while inside."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_factory(spec: str, *, key: str = "model.factory") -> Callable[..., Any]:
    """The callable that ``spec`` (``"package.module:function"``, the part after ``:`` possibly a dotted
    attribute path) names, its module imported with the current directory on ``sys.path``.

    Raises:
        ValueError: naming ``key``, if ``spec`` is malformed or its module cannot be imported or lacks the
            attribute. TypeError: if what it names is not callable.
    """
    if not isinstance(spec, str) or re.fullmatch(FACTORY_PATTERN, spec) is None:
        raise ValueError(f"{key} must be 'package.module:function', got {spec!r}")
    module_name, _, attribute = spec.partition(":")
    with _current_directory_importable():
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"{key} = {spec!r}: cannot import {module_name!r} ({type(error).__name__}: {error}); the "
                f"module must be importable from the current directory ({os.getcwd()}) or be installed"
            ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{key} = {spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{key} = {spec!r} names a {type(target).__name__}, which is not callable")
    return target  # type: ignore[no-any-return]


def _reset_to_torch_init(backbone: nn.Module) -> None:
    """PyTorch's own initialisation of every sub-module that has one (``model.init=default``)."""
    for module in backbone.modules():
        reset = getattr(module, "reset_parameters", None)
        if module is not backbone and callable(reset):
            reset()


def build_recorded_backbone(record: Mapping[str, Any], *, source: str | None = None) -> nn.Module:
    """The backbone that a ``backbone`` entry describes (see
    :func:`pointpeft.dapt.adapter_files.backbone_record`), built as the training CLI builds it: the
    random state seeded with ``seed`` (when recorded), the built-in class or the factory called with
    ``args``, PyTorch's initialisation when ``init`` is ``"default"``, then the ``pretrained`` checkpoint
    loaded with :func:`pointpeft.load_pretrained`. The backbone keeps ``record`` (without its
    ``weights_sha256``), so that the adapters saved with it record it again.

    Args:
        record: the entry.
        source: where the entry was read (an adapter folder), named in the errors; None for a training
            config (the errors name its ``model.*`` keys).

    Raises:
        ValueError / TypeError: naming the key, for an unknown built-in, a factory that cannot be imported
            or called with ``args``, or that does not return an ``nn.Module``, arguments the constructor
            refuses. FileNotFoundError: if the recorded ``pretrained`` checkpoint is gone.
    """
    from pointpeft.backbones import BACKBONES
    from pointpeft.checkpoints import load_pretrained

    prefix = "" if source is None else f"{source}: rebuilding the backbone it records: "
    args = copy.deepcopy(dict(record.get("args") or {}))
    if record.get("seed") is not None:
        # Seeded, so that a backbone that is not pre-trained is rebuilt with the same weights.
        torch.manual_seed(record["seed"])
    if "factory" in record:
        spec = record["factory"]
        try:
            factory = import_factory(spec)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{prefix}{error}") from None
        try:
            inspect.signature(factory).bind(**args)
        except TypeError as error:
            raise TypeError(
                f"{prefix}model.factory = {spec!r} cannot be called with model.args {args}: {error}"
            ) from None
        except ValueError:  # no signature to read: let the call tell
            pass
        with _current_directory_importable():
            backbone = factory(**args)
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"{prefix}model.factory = {spec!r} must return a torch.nn.Module (the backbone), got "
                f"{type(backbone).__name__}"
            )
    else:
        name = record.get("builtin")
        if name not in BACKBONES:
            raise ValueError(f"{prefix}model.backbone must be one of {tuple(BACKBONES)}, got {name!r}")
        try:
            backbone = BACKBONES[name](**args)
        except (TypeError, ValueError) as error:
            raise type(error)(
                f"{prefix}model.backbone={name!r} ({BACKBONES[name].__name__}) refuses its arguments "
                f"{args}: {error}"
            ) from None
    if record.get("init") == "default":
        _reset_to_torch_init(backbone)
    pretrained = record.get("pretrained")
    if pretrained is not None:
        if not os.path.isfile(pretrained):
            hint = (
                "put the checkpoint back there, give its new place (model.pretrained=PATH), or build the "
                "backbone yourself and pass it: pointpeft.load_adapter(backbone, DIR)"
                if source is not None
                else "check model.pretrained"
            )
            raise FileNotFoundError(
                f"{prefix}the pre-trained checkpoint {pretrained!r} (model.pretrained) is gone; {hint}"
            )
        load_pretrained(backbone, pretrained)
    kept = {k: copy.deepcopy(v) for k, v in record.items() if k != "weights_sha256"}
    setattr(backbone, BACKBONE_RECORD_ATTRIBUTE, kept)
    return backbone


def check_recorded_weights(model: DAPTModel, file: AdapterFile) -> None:
    """Check that ``model``'s frozen backbone weights are those the adapter of ``file`` was trained on,
    where its ``backbone`` entry records them (``weights_sha256``).

    Raises:
        ValueError: naming the folder, if they differ (another pre-trained checkpoint, seed or init).
    """
    record = file.config.get("backbone")
    if not isinstance(record, dict):
        return
    saved, seed = record.get("weights_sha256"), record.get("seed")
    if saved is None or saved == frozen_weights_sha256(model):
        return
    raise ValueError(
        f"{file.config_source}: the rebuilt backbone's frozen weights differ from those the adapter was "
        f"trained on (pretrained {record.get('pretrained')!r}, init {record.get('init')!r}, seed {seed!r}"
        + (
            "; a backbone built by hand records no seed nor checkpoint"
            if seed is None and record.get("pretrained") is None
            else ""
        )
        + "): build the backbone as it was and pass it, pointpeft.load_adapter(backbone, DIR)"
    )


def _backbone_and_folder(backbone: Any, directory: Any) -> tuple[nn.Module | None, str | os.PathLike[str]]:
    if directory is None:
        if isinstance(backbone, (str, os.PathLike)):
            return None, backbone
        raise TypeError(
            "directory must be a str or os.PathLike folder path (the adapter folder), got None: call "
            f"pointpeft.load_adapter(DIR) or load_adapter(backbone, DIR) (backbone: {type(backbone).__name__})"
        )
    if backbone is not None:
        check_type(
            "backbone", backbone, nn.Module, "a torch.nn.Module (or None to rebuild it from the folder)"
        )
    return backbone, directory


def load_adapter(
    backbone: nn.Module | str | os.PathLike[str] | None,
    directory: str | os.PathLike[str] | None = None,
    adapter_name: str = DEFAULT_ADAPTER,
) -> DAPTModel:
    """Rebuild a DAPT model from a backbone and a saved adapter folder; ``load_adapter(DIR)`` (or
    ``load_adapter(None, DIR)``) rebuilds the backbone too, from the folder's ``backbone`` entry.

    A backbone passed must be built as when the adapter was saved, with its pre-trained weights loaded (the
    frozen weights are not in the adapter). Without one, the recorded backbone is built as the training
    CLI built it (:func:`build_recorded_backbone`: class or factory, arguments, seed, init, and the
    recorded pre-trained checkpoint, which must still be there) and its frozen weights are checked
    against the digest recorded with the adapter. The layout saved with the adapter is used, so the block
    paths must exist in the backbone. The result computes the same logits as the saved model; it is in
    the backbone's train/eval mode (a rebuilt backbone: train mode), with the adapter's parameters
    trainable (call ``.eval()`` to predict).

    Everything is checked before the backbone is wrapped: the files, the config and layout, the backbone
    against the signature saved with the adapter (blocks, width, settings such as ``num_group``, every
    parameter's name and shape), and each tensor's dtype and values. Should the tensors then not fit, the
    backbone is unwrapped again, so after any failure it is as it was.

    Args:
        backbone: the plain (not yet wrapped) backbone; or None (or the folder, with ``directory`` left
            out) to rebuild it from the folder.
        directory: a folder written by :func:`save_adapter` (``adapter_config.json`` +
            ``adapter_model.safetensors``).
        adapter_name: the name the adapter gets in the returned model.

    Raises:
        FileNotFoundError: if a file is missing, or the recorded pre-trained checkpoint of a backbone to
            rebuild is gone. ValueError: if a file is malformed, the backbone differs from the one the
            adapter was saved for (each difference is listed, saved vs this one), its tensors do not fit
            (every missing, unexpected or mis-shaped tensor is named), no backbone is given and the folder
            records none, or the rebuilt backbone's weights differ from the recorded ones. TypeError: for a
            backbone that is not an ``nn.Module`` or a non-path ``directory``.
    """
    given, directory = _backbone_and_folder(backbone, directory)
    if given is not None:
        check_plain_backbone(given)
    check_adapter_name(adapter_name)
    file = read_adapter(directory)
    rebuilt = given is None
    if given is None:
        record = file.config.get("backbone")
        if record is None:
            raise ValueError(
                f"{file.config_source} records no backbone (no 'backbone' entry: saved by an older pointpeft, "
                "or for a backbone pointpeft cannot describe): build the backbone and pass it, "
                "pointpeft.load_adapter(backbone, DIR)"
            )
        given = build_recorded_backbone(record, source=file.config_source)
    model = _load_file(given, file, adapter_name)
    if rebuilt:
        try:
            check_recorded_weights(model, file)
        except ValueError:
            model.unload()
            raise
    return model


def _load_file(backbone: nn.Module, file: AdapterFile, adapter_name: str) -> DAPTModel:
    """``backbone`` (plain: checked by the caller, or rebuilt) wrapped and loaded with ``file``'s adapter."""
    config, layout = parse_adapter(file)
    source = file.config_source
    check_backbone_class(file.config, backbone, source)
    check_signature(
        file.config.get("backbone_signature"), backbone, layout, plain_width(backbone, layout), source
    )
    try:
        model = get_peft_model(backbone, config, layout=layout, adapter_name=adapter_name)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    try:
        load_tensors(model, adapter_name, file.tensors, file.weights_source)
    except BaseException:
        model.unload()
        raise
    return model


def load_adapter_into(model: nn.Module, directory: str | os.PathLike[str], adapter_name: str) -> None:
    """Add the adapter saved in ``directory`` to ``model`` under ``adapter_name`` (not activated); the
    model may be inside DDP, ``DataParallel`` or ``torch.compile``. See
    :meth:`pointpeft.DAPTModel.load_adapter`."""
    add_adapter_from(unwrap_dapt(model), directory, adapter_name)
