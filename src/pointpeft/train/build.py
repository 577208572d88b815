"""Datasets and models from a training config (:mod:`pointpeft.train.config`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from pointpeft.backbones import PointMAE
from pointpeft.config import DAPTConfig
from pointpeft.dapt.model import DAPTModel, wrap_with_dapt

DATASETS = ("synthetic", "scanobjectnn", "modelnet40")


def build_datasets(config: dict[str, dict[str, Any]]) -> tuple[Dataset, Dataset, int]:
    """``(train, test, num_classes)`` for ``config["data"]``. Items are ``(points (P, 3), label)``.

    Raises:
        ValueError: for an unknown dataset, a missing ``data.root``, or ``npoints`` above the points
            the dataset has.
    """
    data = config["data"]
    name = data["dataset"]
    if name not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {name!r}")
    if name == "synthetic":
        from pointpeft.data.synthetic import SyntheticShapes

        seed = config["run"]["seed"]
        common = dict(num_points=data["synthetic_points"], num_classes=data["synthetic_classes"])
        train = SyntheticShapes(data["synthetic_train"], seed=seed, **common)
        test = SyntheticShapes(data["synthetic_test"], seed=seed + 1_000_003, **common)
        num_classes, available = data["synthetic_classes"], data["synthetic_points"]
    else:
        if data["root"] is None:
            raise ValueError(f"data.root must name the {name} folder (data.root=/path/to/{name})")
        if name == "scanobjectnn":
            from pointpeft.data.scanobjectnn import ScanObjectNN

            train = ScanObjectNN(data["root"], variant=data["variant"], split="train")
            test = ScanObjectNN(data["root"], variant=data["variant"], split="test")
            num_classes = 15
        else:
            from pointpeft.data.modelnet import ModelNet40

            train = ModelNet40(data["root"], split="train")
            test = ModelNet40(data["root"], split="test")
            num_classes = 40
        available = min(train.points.shape[1], test.points.shape[1])
    if data["npoints"] > available:
        raise ValueError(f"data.npoints = {data['npoints']} but the {name} clouds have {available} points")
    return train, test, num_classes


def num_classes_of(config: dict[str, dict[str, Any]]) -> int:
    """The number of classes of the configured dataset, without reading it."""
    name = config["data"]["dataset"]
    if name not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {name!r}")
    return {"scanobjectnn": 15, "modelnet40": 40}.get(name, config["data"]["synthetic_classes"])


def build_backbone(config: dict[str, dict[str, Any]]) -> PointMAE:
    """The Point-MAE backbone of ``config["model"]``, initialised from ``run.seed``, with its pre-trained
    weights if ``model.pretrained`` names a checkpoint."""
    model_cfg = dict(config["model"])
    init, pretrained = model_cfg.pop("init"), model_cfg.pop("pretrained")
    if init not in ("point_mae", "default"):
        raise ValueError(f"model.init must be 'point_mae' or 'default', got {init!r}")
    # Seeded, so that evaluating an adapter rebuilds the same weights where the backbone is not pre-trained.
    torch.manual_seed(config["run"]["seed"])
    backbone = PointMAE(**model_cfg)
    if init == "default":
        # PyTorch's scale-preserving init: a random backbone that is not pre-trained keeps usable features.
        for module in backbone.modules():
            if module is not backbone and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    if pretrained is not None:
        from pointpeft.checkpoints import load_pretrained

        load_pretrained(backbone, pretrained)
    return backbone


def dapt_config(config: dict[str, dict[str, Any]], num_classes: int) -> DAPTConfig:
    """The :class:`~pointpeft.DAPTConfig` of ``config["dapt"]``."""
    return DAPTConfig(num_classes=num_classes, **{**config["dapt"], "pool": tuple(config["dapt"]["pool"])})


def build_model(config: dict[str, dict[str, Any]], num_classes: int) -> DAPTModel:
    """Backbone + DAPT for ``config``, computing as ``run.execution`` says."""
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
