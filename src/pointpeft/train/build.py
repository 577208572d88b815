"""Datasets and models from a training config (:mod:`pointpeft.train.config`).

Each function checks the config it is given (:func:`~pointpeft.train.config.check_config`), so a config
built by hand gets the same errors, naming the key, as one read from a file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from pointpeft.backbones import PointMAE
from pointpeft.config import DAPTConfig
from pointpeft.dapt.model import DAPTModel, wrap_with_dapt
from pointpeft.train.config import DATASETS, check_config

__all__ = [
    "DATASETS",
    "build_backbone",
    "build_datasets",
    "build_model",
    "dapt_config",
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
    return f"data.dataset={name!r} ({variant}data.root={data['root']!r})"


def _check_not_empty(train: Dataset, test: Dataset, config: dict[str, dict[str, Any]]) -> None:
    for split, dataset in (("training", train), ("test", test)):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(
                f"the {split} set of {data_source(config)} is empty: there is nothing to "
                f"{'train on' if split == 'training' else 'test on'}; check data.root and the files in it"
            )


def _synthetic_sets(config: dict[str, dict[str, Any]]) -> tuple[Dataset, Dataset, int, int]:
    from pointpeft.data.synthetic import SyntheticShapes

    data, seed = config["data"], config["run"]["seed"]
    common = dict(num_points=data["synthetic_points"], num_classes=data["synthetic_classes"])
    train = SyntheticShapes(data["synthetic_train"], seed=seed, **common)
    test = SyntheticShapes(data["synthetic_test"], seed=seed + 1_000_003, **common)
    return train, test, data["synthetic_classes"], data["synthetic_points"]


def _file_sets(config: dict[str, dict[str, Any]]) -> tuple[Dataset, Dataset, int, int]:
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
        num_classes = 15
    else:
        from pointpeft.data.modelnet import ModelNet40

        train = ModelNet40(data["root"], split="train")
        test = ModelNet40(data["root"], split="test")
        num_classes = 40
    return train, test, num_classes, min(train.points.shape[1], test.points.shape[1])


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
    train, test, num_classes, available = build(config)
    _check_not_empty(train, test, config)
    if data["npoints"] > available:
        where = "data.synthetic_points" if data["dataset"] == "synthetic" else f"{data_source(config)}"
        raise ValueError(
            f"data.npoints ({data['npoints']}) must be <= the points per cloud of the data: the clouds of "
            f"{where} have {available}; lower data.npoints"
        )
    return train, test, num_classes


def num_classes_of(config: dict[str, dict[str, Any]]) -> int:
    """The number of classes of the configured dataset, without reading it."""
    config = check_config(config)
    name = config["data"]["dataset"]
    return {"scanobjectnn": 15, "modelnet40": 40}.get(name, config["data"]["synthetic_classes"])


def build_backbone(config: dict[str, dict[str, Any]]) -> PointMAE:
    """The Point-MAE backbone of ``config["model"]``, initialised from ``run.seed``, with its pre-trained
    weights if ``model.pretrained`` names a checkpoint."""
    config = check_config(config)
    model_cfg = dict(config["model"])
    init, pretrained = model_cfg.pop("init"), model_cfg.pop("pretrained")
    # Seeded, so that evaluating an adapter rebuilds the same weights where the backbone is not pre-trained.
    torch.manual_seed(config["run"]["seed"])
    backbone = PointMAE(**model_cfg)
    if init == "default":
        # PyTorch's scale-preserving init: a random backbone that is not pre-trained keeps usable features.
        for module in backbone.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not backbone and callable(reset):
                reset()
    if pretrained is not None:
        from pointpeft.checkpoints import load_pretrained

        load_pretrained(backbone, pretrained)
    return backbone


def dapt_config(config: dict[str, dict[str, Any]], num_classes: int) -> DAPTConfig:
    """The :class:`~pointpeft.DAPTConfig` of ``config["dapt"]``."""
    config = check_config(config)
    return DAPTConfig(num_classes=num_classes, **{**config["dapt"], "pool": tuple(config["dapt"]["pool"])})


def build_model(config: dict[str, dict[str, Any]], num_classes: int) -> DAPTModel:
    """Backbone + DAPT for ``config``, computing as ``run.execution`` says."""
    config = check_config(config)
    return wrap_with_dapt(
        build_backbone(config), dapt_config(config, num_classes), execution=config["run"]["execution"]
    )


def parameter_table(model: nn.Module) -> str:
    """Trainable parameters by kind (tokens, TFTS, adapters, prompts, head) and the peft summary line."""
    from pointpeft.counting import format_trainable_parameters

    kinds = {"head": 0, "adapters": 0, "prompts": 0, "TFTS": 0, "tokens": 0}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("heads."):
            kind = "head"
        elif ".adapter." in name:
            kind = "adapters"
        elif ".prompt." in name:
            kind = "prompts"
        elif ".tfts." in name:
            kind = "TFTS"
        else:
            kind = "tokens"
        kinds[kind] += parameter.numel()
    width = max(len(k) for k in kinds)
    lines = [f"{kind:<{width}}  {count:>12,d}" for kind, count in kinds.items()]
    lines.append(format_trainable_parameters(model))
    return "\n".join(lines)
