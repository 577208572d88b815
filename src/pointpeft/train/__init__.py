"""Training and evaluation with the DAPT reference's recipe (:func:`train`), configured by YAML
(:func:`load_config`)."""

from pointpeft.train.build import (
    build_backbone,
    build_datasets,
    build_model,
    dapt_config,
    num_classes_of,
    parameter_table,
)
from pointpeft.train.config import DEFAULTS, load_config
from pointpeft.train.loop import TrainResult, evaluate, train
from pointpeft.train.optim import build_optimizer, learning_rate, parameter_groups

__all__ = [
    "DEFAULTS",
    "TrainResult",
    "build_backbone",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "dapt_config",
    "evaluate",
    "learning_rate",
    "num_classes_of",
    "load_config",
    "parameter_groups",
    "parameter_table",
    "train",
]
