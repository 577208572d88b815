"""Datasets and models from a training config (:mod:`pointpeft.train.config`).

Each function checks the config it is given (:func:`~pointpeft.train.config.check_config`), so a config
built by hand gets the same errors, naming the key, as one read from a file.
"""

from __future__ import annotations

import os
from typing import Any, cast

from torch import nn
from torch.utils.data import Dataset

from pointpeft.adapter_io import build_recorded_backbone
from pointpeft.config import DAPTConfig
from pointpeft.dapt.model import DAPTModel, get_peft_model
from pointpeft.methods.adapter import AdapterConfig
from pointpeft.methods.bitfit import BitFitConfig
from pointpeft.methods.full_finetune import FullFinetuneConfig
from pointpeft.methods.idpt import IDPTConfig
from pointpeft.methods.linear_probe import LinearProbeConfig
from pointpeft.methods.lora import LoRAConfig
from pointpeft.methods.plan import MethodConfig
from pointpeft.methods.pointgst import PointGSTConfig
from pointpeft.methods.pointlora import PointLoRAConfig
from pointpeft.methods.ssf import SSFConfig
from pointpeft.methods.vpt import VPTConfig
from pointpeft.train.config import DATASETS, backbone_kwargs, check_config, check_dataset_classes

__all__ = [
    "DATASETS",
    "backbone_record_of",
    "build_backbone",
    "build_datasets",
    "build_model",
    "dapt_config",
    "method_config",
    "data_source",
    "num_classes_of",
    "parameter_table",
]


def data_source(config: dict[str, dict[str, Any]]) -> str:
    """The configured data, as error messages name it: ``data.dataset='synthetic'`` or
    ``data.dataset='scanobjectnn' (data.variant='OBJ_BG', data.root='/data/h5')``."""
    data = config["data"]
    name = data["dataset"]
    if name == "synthetic":
        return f"data.dataset={name!r}"
    variant = f"data.variant={data['variant']!r}, " if name == "scanobjectnn" else ""
    if name == "modelnet40_fewshot":
        variant = f"data.fewshot_way={data['fewshot_way']}, _shot={data['fewshot_shot']}, _fold={data['fewshot_fold']}, "
    return f"data.dataset={name!r} ({variant}data.root={data['root']!r})"


def _check_not_empty(train: Dataset, test: Dataset, config: dict[str, dict[str, Any]]) -> None:
    for split, dataset in (("training", train), ("test", test)):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(
                f"the {split} set of {data_source(config)} is empty: there is nothing to "
                f"{'train on' if split == 'training' else 'test on'}; check data.root and the files in it"
            )


def _synthetic_sets(config: dict[str, dict[str, Any]]) -> tuple[Dataset, Dataset, int]:
    from pointpeft.data.synthetic import SyntheticShapes

    data, seed = config["data"], config["run"]["seed"]
    # cache: the clouds are generated in the first epoch only (generating them takes longer than a step)
    common = dict(
        num_points=data["synthetic_points"],
        num_classes=data["synthetic_classes"],
        partial=data["synthetic_partial"],
        clutter=data["synthetic_clutter"],
        noise=data["synthetic_noise"],
        cache=True,
    )
    train = SyntheticShapes(data["synthetic_train"], seed=seed, **common)
    test = SyntheticShapes(data["synthetic_test"], seed=seed + 1_000_003, **common)
    return train, test, data["synthetic_points"]


def _file_sets(config: dict[str, dict[str, Any]]) -> tuple[Dataset, Dataset, int]:
    data = config["data"]
    name = data["dataset"]
    if data["root"] is None:
        raise ValueError(f"data.root must name the {name} folder (data.root=/path/to/{name}), got null")
    train: Any
    test: Any
    if name == "scanobjectnn":
        from pointpeft.data.scanobjectnn import ScanObjectNN

        train = ScanObjectNN(data["root"], variant=data["variant"], split="train", min_points=data["npoints"])
        test = ScanObjectNN(data["root"], variant=data["variant"], split="test", min_points=data["npoints"])
    elif name == "modelnet40_fewshot":
        from pointpeft.data.modelnet import ModelNet40FewShot

        episode = dict(way=data["fewshot_way"], shot=data["fewshot_shot"], fold=data["fewshot_fold"])
        train = ModelNet40FewShot(data["root"], split="train", min_points=data["npoints"], **episode)
        test = ModelNet40FewShot(data["root"], split="test", min_points=data["npoints"], **episode)
    else:
        from pointpeft.data.modelnet import ModelNet40

        train = ModelNet40(data["root"], split="train")
        test = ModelNet40(data["root"], split="test")
    return train, test, min(train.points.shape[1], test.points.shape[1])


def build_datasets(config: dict[str, dict[str, Any]]) -> tuple[Dataset, Dataset, int]:
    """``(train, test, num_classes)`` for ``config["data"]``. Items are ``(points (P, 3), label)``.

    Raises:
        ValueError / TypeError: for a bad config (naming the key), a missing ``data.root``, an empty split
            (naming it and the data), or ``data.npoints`` above the points of the clouds.
            FileNotFoundError: for missing dataset files.
    """
    config = check_config(config)
    data = config["data"]
    build = _synthetic_sets if data["dataset"] == "synthetic" else _file_sets
    num_classes = check_dataset_classes(data)
    train, test, available = build(config)
    _check_not_empty(train, test, config)
    if data["dataset"] != "synthetic":
        for split, dataset in (("train", train), ("test", test)):
            top = int(cast(Any, dataset).labels.max())  # the file datasets' labels, (M,)
            if top >= num_classes:
                raise ValueError(
                    f"data.num_classes is {num_classes}, but the {split} split "
                    f"({getattr(dataset, 'path', data['root'])}) has label {top}; "
                    f"set data.num_classes to at least {top + 1}, or leave it null"
                )
    if data["npoints"] > available:
        where = "data.synthetic_points" if data["dataset"] == "synthetic" else f"{data_source(config)}"
        raise ValueError(
            f"data.npoints ({data['npoints']}) must be <= the points per cloud of the data: the clouds of "
            f"{where} have {available}; lower data.npoints"
        )
    return train, test, num_classes


def num_classes_of(config: dict[str, dict[str, Any]]) -> int:
    """The number of classes of the configured dataset, without reading it.

    Raises:
        ValueError: if ``data.num_classes`` is set to another number than the dataset's.
    """
    config = check_config(config)
    return check_dataset_classes(config["data"])


def backbone_record_of(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How ``config["model"]`` builds the backbone, as an adapter folder records it (its ``backbone``
    entry, without the weights digest): ``{"builtin": name}`` or ``{"factory": "package.module:function"}``
    with ``"args"`` (the keyword arguments), ``"pretrained"`` (the checkpoint's absolute path, that of
    :func:`pointpeft.pretrain.bundled_checkpoint` for ``model.pretrained=bundled``, or None),
    ``"layout"``, ``"init"`` and ``"seed"`` (``run.seed``)."""
    config = check_config(config)
    model = config["model"]
    kind = {"factory": model["factory"]} if model["factory"] is not None else {"builtin": model["backbone"]}
    pretrained = model["pretrained"]
    if pretrained is not None:
        # imported here: pointpeft.pretrain imports the training loop
        from pointpeft.pretrain import BUNDLED, bundled_checkpoint

        if pretrained == BUNDLED:
            pretrained = bundled_checkpoint()
    return {
        **kind,
        "args": backbone_kwargs(model),
        "pretrained": None if pretrained is None else os.path.abspath(pretrained),
        "layout": model["layout"],
        "init": model["init"],
        "seed": config["run"]["seed"],
    }


def build_backbone(config: dict[str, dict[str, Any]]) -> nn.Module:
    """The backbone of ``config["model"]``: the built-in ``model.backbone`` with the model keys its
    constructor takes and ``model.args``, or what ``model.factory`` returns when called with ``model.args``;
    initialised from ``run.seed`` (PyTorch's init when ``model.init=default``), with its pre-trained weights
    if ``model.pretrained`` names a checkpoint. The backbone carries the record of how it was built
    (:func:`backbone_record_of`), which the adapters saved with it write.

    Raises:
        ValueError / TypeError: naming the key, for a bad config, a factory that cannot be imported or
            called, or does not return an ``nn.Module``, or arguments the backbone refuses.
            FileNotFoundError: for a missing ``model.pretrained`` checkpoint.
    """
    # Seeded (in build_recorded_backbone), so that evaluating an adapter rebuilds the same weights where
    # the backbone is not pre-trained; model.init=default resets to PyTorch's scale-preserving init, with
    # which a random backbone that is not pre-trained keeps usable features.
    return build_recorded_backbone(backbone_record_of(config))


def dapt_config(config: dict[str, dict[str, Any]], num_classes: int) -> DAPTConfig:
    """The :class:`~pointpeft.DAPTConfig` of ``config["dapt"]``."""
    config = check_config(config)
    return DAPTConfig(num_classes=num_classes, **{**config["dapt"], "pool": tuple(config["dapt"]["pool"])})


def method_config(config: dict[str, dict[str, Any]], num_classes: int) -> MethodConfig:
    """The config of ``model.method`` (:data:`~pointpeft.train.config.METHODS`) from the ``dapt`` section:
    DAPT takes all its keys; the other methods the head's (``pool``, ``head_dropout``, ``head_hidden``,
    ``update_bn_stats``), LoRA, VPT, the AdaptFormer-style adapter, IDPT, PointGST and PointLoRA also their
    own sections (``lora``, ``vpt``, ``adapter``, ``idpt``, ``pointgst``, ``pointlora``).

    Raises:
        ValueError: if ``dapt.pool`` names ``prompt`` for a method without prompts (naming both keys), or
            the ``idpt`` section holds a bad value (naming the key).
    """
    config = check_config(config)
    method = config["model"]["method"]
    if method == "dapt":
        return dapt_config(config, num_classes)
    section = config["dapt"]
    pool = tuple(section["pool"])
    head = {k: section[k] for k in ("head_dropout", "head_hidden", "update_bn_stats")}
    if method == "idpt":  # IDPT pools its prompt: any part of ("cls", "prompt", "patch")
        return IDPTConfig(num_classes=num_classes, pool=pool, **head, **config["idpt"])
    if "prompt" in pool:
        raise ValueError(
            f"dapt.pool = {list(pool)} names 'prompt', but model.method = {method} makes no prompts: set "
            "dapt.pool=[cls,patch] (or a part of it)"
        )
    if method == "lora":
        lora = config["lora"]
        return LoRAConfig(
            num_classes=num_classes, pool=pool, **head, **{**lora, "targets": tuple(lora["targets"])}
        )
    if method == "vpt":
        return VPTConfig(num_classes=num_classes, pool=pool, **head, **config["vpt"])
    if method == "adapter":
        return AdapterConfig(num_classes=num_classes, pool=pool, **head, **config["adapter"])
    if method == "pointgst":
        return PointGSTConfig(num_classes=num_classes, pool=pool, **head, **config["pointgst"])
    if method == "pointlora":
        section = config["pointlora"]
        tuples = ("targets", "scales", "mask_weights", "trained_backbone")
        return PointLoRAConfig(
            num_classes=num_classes,
            pool=pool,
            **head,
            **{**section, **{k: tuple(map(_tuple, section[k])) for k in tuples}},
        )
    return _HEAD_ONLY[method](num_classes=num_classes, pool=pool, **head)


def _tuple(value: Any) -> Any:
    """A list (of a JSON config) as a tuple, anything else as it is."""
    return tuple(value) if isinstance(value, list) else value


#: The methods whose settings are the head's alone (``model.method`` → config class).
_HEAD_ONLY: dict[str, type[BitFitConfig | FullFinetuneConfig | LinearProbeConfig | SSFConfig]] = {
    "full_finetune": FullFinetuneConfig,
    "linear_probe": LinearProbeConfig,
    "bitfit": BitFitConfig,
    "ssf": SSFConfig,
}


def build_model(
    config: dict[str, dict[str, Any]], num_classes: int, backbone: nn.Module | None = None
) -> DAPTModel:
    """Backbone + the PEFT method of ``model.method`` for ``config``: ``backbone`` (default:
    :func:`build_backbone`) wrapped with the method's config (:func:`method_config`) and ``model.layout``,
    computing as ``run.execution`` says."""
    config = check_config(config)
    return get_peft_model(
        build_backbone(config) if backbone is None else backbone,
        method_config(config, num_classes),
        layout=config["model"]["layout"],
        execution=config["run"]["execution"],
    )


def parameter_table(model: nn.Module) -> str:
    """Trainable parameters by kind (the head, DAPT's, AdaptFormer's and PointGST's adapters, DAPT's
    prompts, TFTS / SSF, LoRA's updates, VPT's prompts, IDPT's prompt generator (and prompt position, when
    trained), PointLoRA's shared prompt MLPs and mask predictor, backbone parameters trained by BitFit,
    PointLoRA or full fine-tuning, the backbone's tokens), the kinds the model has, and the peft summary
    line."""
    from pointpeft.counting import format_trainable_parameters

    kinds = dict.fromkeys(
        (
            "head",
            "adapters",
            "prompts",
            "TFTS",
            "LoRA",
            "VPT prompts",
            "IDPT generator",
            "PointLoRA prompts",
            "backbone",
            "tokens",
        ),
        0,
    )
    trained: set[str] = set()
    if isinstance(model, DAPTModel) and model.active_adapter is not None:
        trained = {f"base_model.{path}" for path in model.trained_backbone_parameters(model.active_adapter)}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name in trained:
            kind = "backbone"
        elif name.startswith("heads."):
            kind = "head"
        elif ".adapter." in name:
            kind = "adapters"
        elif ".prompt." in name:
            kind = "prompts"
        elif ".tfts." in name:
            kind = "TFTS"
        elif ".beside." in name:
            kind = "LoRA"
        elif ".tokens." in name:
            kind = "VPT prompts"
        elif ".instance_prompt." in name and name.endswith(".prompts"):  # VPT-Shallow's
            kind = "VPT prompts"
        elif ".instance_prompt." in name:
            kind = "IDPT generator"
        elif ".selection." in name:
            kind = "PointLoRA prompts"
        else:
            kind = "tokens"
        kinds[kind] += parameter.numel()
    kinds = {kind: count for kind, count in kinds.items() if count or kind in ("head", "tokens")}
    width = max(len(k) for k in kinds)
    lines = [f"{kind:<{width}}  {count:>12,d}" for kind, count in kinds.items()]
    lines.append(format_trainable_parameters(model))
    return "\n".join(lines)
