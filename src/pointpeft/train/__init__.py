"""Training and evaluation with the DAPT reference's recipe (:func:`train`), configured by YAML
(:func:`load_config`, every key checked as :data:`SCHEMA` says)."""

from pointpeft.train.build import (
    backbone_record_of,
    build_backbone,
    build_datasets,
    build_model,
    dapt_config,
    data_source,
    method_config,
    num_classes_of,
    parameter_table,
)
from pointpeft.train.config import DEFAULTS, SCHEMA, check_config, load_config
from pointpeft.train.fewshot import FewShotResult, fewshot_table, run_fewshot
from pointpeft.train.loop import (
    TrainResult,
    adapter_run_config,
    evaluate,
    evaluate_saved_adapter,
    resolve_device,
    train,
)
from pointpeft.train.optim import build_optimizer, epoch_learning_rate, learning_rate, parameter_groups

__all__ = [
    "DEFAULTS",
    "SCHEMA",
    "FewShotResult",
    "TrainResult",
    "adapter_run_config",
    "backbone_record_of",
    "build_backbone",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "check_config",
    "dapt_config",
    "method_config",
    "data_source",
    "evaluate",
    "fewshot_table",
    "run_fewshot",
    "evaluate_saved_adapter",
    "epoch_learning_rate",
    "learning_rate",
    "num_classes_of",
    "load_config",
    "parameter_groups",
    "parameter_table",
    "resolve_device",
    "train",
]
