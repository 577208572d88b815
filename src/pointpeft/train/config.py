"""Training configuration: a two-level mapping (section → key → value) read from YAML, with overrides.

Every key has a default (:data:`DEFAULTS`); a config file or an override names only what differs. Unknown
sections or keys and values of the wrong type are errors that name the key, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": "synthetic",  # synthetic | scanobjectnn | modelnet40
        "root": None,  # dataset folder (not needed for synthetic)
        "variant": "OBJ_BG",  # ScanObjectNN: OBJ_BG | OBJ_ONLY | PB_T50_RS
        "npoints": 2048,  # points per cloud fed to the model
        "point_all": None,  # FPS pre-sampling size for training (None: the reference's rule)
        "synthetic_train": 800,  # synthetic: training clouds
        "synthetic_test": 200,  # synthetic: test clouds
        "synthetic_classes": 10,
        "synthetic_points": 1024,  # synthetic: points per generated cloud
    },
    "model": {
        "trans_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "num_group": 128,
        "group_size": 32,
        "encoder_dims": 384,
        "drop_path_rate": 0.3,
        "pos_mode": "once",  # the DAPT reference adds the positional embedding once
        "init": "point_mae",  # point_mae (trunc-normal, meant for pre-training) | default (PyTorch's)
        "pretrained": None,  # pre-training checkpoint for pointpeft.load_pretrained
    },
    "dapt": {
        "rank": 64,
        "pool": ["cls", "prompt", "patch"],
        "adapter_dropout": 0.5,
        "head_dropout": 0.5,
        "head_hidden": 256,
        "update_bn_stats": True,
    },
    "optim": {
        "epochs": 300,
        "warmup_epochs": 10,
        "lr": 5e-4,
        "min_lr": 1e-6,
        "warmup_lr": 1e-6,
        "weight_decay": 0.05,
        "batch_size": 32,
        "eval_batch_size": 64,
        "grad_clip": 10.0,
    },
    "run": {
        "seed": 0,
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "bf16": False,  # bf16 autocast for the forward pass
        "execution": "fused",  # fused | recompute | plain (pointpeft.DAPTModel.execution)
        "output_dir": "runs/default",
        "resume": True,  # continue from output_dir/last.pt if it exists
        "vote": False,  # evaluation with the reference's 10-view voting
        "progress": True,  # tqdm progress bars
        "threads": None,  # torch CPU threads
    },
}


# Keys whose value must be one of a few names (checked when the config is read, naming the key).
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("run", "execution"): ("fused", "recompute", "plain"),  # pointpeft.dapt.fusable.EXECUTIONS
}


def _check_value(section: str, key: str, value: Any) -> Any:
    choices = CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise ValueError(f"{section}.{key} must be one of {choices}, got {value!r}")
    default = DEFAULTS[section][key]
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{section}.{key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{section}.{key} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{section}.{key} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError(f"{section}.{key} must be a string, got {value!r}")
    elif isinstance(default, list):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{section}.{key} must be a list, got {value!r}")
        value = list(value)
    return value


def _merge(config: dict[str, dict[str, Any]], data: Mapping[str, Any], source: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{source}: expected a mapping of sections {sorted(DEFAULTS)}, got {type(data).__name__}"
        )
    for section, values in data.items():
        if section not in DEFAULTS:
            raise ValueError(f"{source}: unknown section {section!r}; sections are {sorted(DEFAULTS)}")
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ValueError(
                    f"{source}: unknown key {section}.{key}; keys of {section!r} are {sorted(DEFAULTS[section])}"
                )
            config[section][key] = _check_value(section, key, value)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"optim.lr=1e-3"`` → ``("optim", "lr", 0.001)``; the value is read as YAML (numbers, booleans,
    lists, ``null``)."""
    import yaml

    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. optim.epochs=10")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return section, key, value


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """The defaults, updated by the YAML file at ``path`` (if given), then by ``overrides``.

    Raises:
        FileNotFoundError: if ``path`` does not exist. ValueError / TypeError: for malformed YAML, unknown
            sections or keys, or values of the wrong type (the message names the key).
    """
    import yaml

    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config: no file at {os.fspath(path)!r}")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as error:
                raise ValueError(f"{os.fspath(path)}: not valid YAML ({error})") from None
        _merge(config, data, os.fspath(path))
    for text in overrides:
        section, key, value = parse_override(text)
        _merge(config, {section: {key: value}}, f"override {text!r}")
    return config
