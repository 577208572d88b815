"""Training configuration: a two-level mapping (section → key → value) read from YAML, with overrides.

Every key has a default (:data:`DEFAULTS`) and a rule (:data:`SCHEMA`: its type, whether it may be null,
its range or its choices); a config file or an override names only what differs. Everything is checked
when the config is read (:func:`load_config`) or handed to a training function (:func:`check_config`):
unknown sections or keys, values of the wrong type, NaN or infinite numbers, values out of range, and
settings that do not fit together (e.g. ``model.num_group`` above ``data.npoints``) are errors that name
the key, what it accepts and what it got. A typo never silently falls back to a default, and no value
reaches torch unchecked.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pointpeft.backbones.point_mae import PosMode
from pointpeft.checks import check_choice, check_number
from pointpeft.config import MAX_WIDTH, DAPTConfig
from pointpeft.dapt.execution import EXECUTIONS
from pointpeft.data.scanobjectnn import SCANOBJECTNN_FILES
from pointpeft.data.synthetic import MAX_NUM_POINTS, MAX_NUM_SAMPLES, SHAPE_NAMES

DATASETS = ("synthetic", "scanobjectnn", "modelnet40")
INITS = ("point_mae", "default")

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

Kind = Literal["int", "number", "bool", "str", "list"]


@dataclass(frozen=True)
class KeySpec:
    """What one config key accepts.

    Attributes:
        kind: ``"int"``, ``"number"`` (int or float, stored as a float), ``"bool"``, ``"str"`` or
            ``"list"`` (of names).
        nullable: whether ``null`` (None) is accepted.
        low, high: the range of an int or number (None: unbounded); numbers must also be finite.
        low_inclusive, high_inclusive: whether the bounds themselves are accepted.
        choices: the accepted values of a ``"str"`` key.
        pattern: a regular expression the whole value of a ``"str"`` key must match, described by
            ``pattern_text``.
        dapt_field: the key is the :class:`~pointpeft.DAPTConfig` field of the same name, whose own check
            (range included) applies.
    """

    kind: Kind
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    pattern_text: str = ""
    dapt_field: bool = False


def _positive_int(high: int = MAX_WIDTH) -> KeySpec:
    """An int in [1, ``high``]; the bound (by default DAPTConfig's widest layer) catches typos whose layers
    or clouds would not fit in memory."""
    return KeySpec("int", low=1, high=high)


SCHEMA: dict[str, dict[str, KeySpec]] = {
    "data": {
        "dataset": KeySpec("str", choices=DATASETS),
        "root": KeySpec("str", nullable=True),
        "variant": KeySpec("str", choices=tuple(SCANOBJECTNN_FILES)),
        "npoints": _positive_int(MAX_NUM_POINTS),
        "point_all": KeySpec("int", nullable=True, low=1, high=MAX_NUM_POINTS),
        "synthetic_train": _positive_int(MAX_NUM_SAMPLES),
        "synthetic_test": _positive_int(MAX_NUM_SAMPLES),
        "synthetic_classes": KeySpec("int", low=2, high=len(SHAPE_NAMES)),
        "synthetic_points": _positive_int(MAX_NUM_POINTS),
    },
    "model": {
        "trans_dim": _positive_int(),
        "depth": _positive_int(),
        "num_heads": _positive_int(),
        "num_group": _positive_int(),
        "group_size": _positive_int(),
        "encoder_dims": _positive_int(),
        "drop_path_rate": KeySpec("number", low=0.0, high=1.0, high_inclusive=False),
        "pos_mode": KeySpec("str", choices=get_args(PosMode)),
        "init": KeySpec("str", choices=INITS),
        "pretrained": KeySpec("str", nullable=True),
    },
    "dapt": {
        "rank": KeySpec("int", dapt_field=True),
        "pool": KeySpec("list", dapt_field=True),
        "adapter_dropout": KeySpec("number", dapt_field=True),
        "head_dropout": KeySpec("number", dapt_field=True),
        "head_hidden": KeySpec("int", dapt_field=True),
        "update_bn_stats": KeySpec("bool", dapt_field=True),
    },
    "optim": {
        "epochs": _positive_int(),
        "warmup_epochs": KeySpec("int", low=0),
        "lr": KeySpec("number", low=0.0, low_inclusive=False),
        "min_lr": KeySpec("number", low=0.0),
        "warmup_lr": KeySpec("number", low=0.0),
        "weight_decay": KeySpec("number", low=0.0),
        "batch_size": KeySpec(
            "int", low=2, high=MAX_WIDTH
        ),  # the head's BatchNorm needs >= 2 clouds in train mode
        "eval_batch_size": _positive_int(),
        "grad_clip": KeySpec("number", low=0.0),  # 0: no clipping
    },
    "run": {
        "seed": KeySpec("int", low=0, high=2**32 - 1),
        "device": KeySpec(
            "str", pattern=r"auto|cpu|cuda(:[0-9]+)?", pattern_text="auto, cpu, cuda or cuda:N"
        ),
        "bf16": KeySpec("bool"),
        "execution": KeySpec("str", choices=EXECUTIONS),
        "output_dir": KeySpec("str"),
        "resume": KeySpec("bool"),
        "vote": KeySpec("bool"),
        "progress": KeySpec("bool"),
        "threads": KeySpec("int", nullable=True, low=1, high=MAX_WIDTH),
    },
}

# Keys whose value must be one of a few names.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    (section, key): spec.choices
    for section, specs in SCHEMA.items()
    for key, spec in specs.items()
    if spec.choices is not None
}


def _int_range(spec: KeySpec) -> str:
    if spec.high is None:
        return f"an integer >= {spec.low:.0f}" if spec.low is not None else "an integer"
    return f"an integer in [{spec.low:.0f}, {spec.high:.0f}]"


def _check_int(name: str, spec: KeySpec, value: Any) -> int:
    expected = _int_range(spec) + (" or null" if spec.nullable else "")
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer or null" if spec.nullable else "an integer"
        raise TypeError(f"{name} must be {kind}, got {value!r}; it accepts {expected}")
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def _check_str(name: str, spec: KeySpec, value: Any) -> str:
    if spec.choices is not None:
        return check_choice(name, value, spec.choices)
    expected = "a string" + (" or null" if spec.nullable else "")
    if not isinstance(value, str):
        hint = (
            f" (to pass a number as text, quote it: {name}='{value}')"
            if isinstance(value, (int, float))
            else ""
        )
        raise TypeError(f"{name} must be {expected}, got {value!r}{hint}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if spec.pattern is not None and re.fullmatch(spec.pattern, value) is None:
        raise ValueError(f"{name} must be {spec.pattern_text}, got {value!r}")
    return value


def _as_number(value: Any) -> Any:
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_dapt_field(key: str, value: Any) -> Any:
    """``value`` as DAPTConfig checks and stores its field ``key`` (a pool becomes a list in the reference
    order); its errors are re-raised naming ``dapt.<key>``."""
    try:
        checked = getattr(DAPTConfig(num_classes=2, **{key: value}), key)
    except (TypeError, ValueError) as error:
        raise type(error)(f"dapt.{error}") from None
    return list(checked) if isinstance(checked, tuple) else checked


def check_value(section: str, key: str, value: Any) -> Any:
    """``value`` checked against :data:`SCHEMA` ``[section][key]``, normalised (numbers become floats, a
    single name becomes a list).

    Raises:
        TypeError: for a value of the wrong type. ValueError: for a value out of range, NaN or infinite,
            or not among the choices. The message names ``section.key``, what it accepts and the value.
    """
    spec, name = SCHEMA[section][key], f"{section}.{key}"
    if value is None and spec.nullable:
        return None
    if spec.kind == "number":
        value = _as_number(value)
    elif spec.kind == "list" and isinstance(value, str):
        value = [value]
    if spec.dapt_field:
        return _check_dapt_field(key, value)
    if spec.kind == "number":
        return check_number(
            name,
            value,
            low=spec.low,
            high=spec.high,
            low_inclusive=spec.low_inclusive,
            high_inclusive=spec.high_inclusive,
        )
    if spec.kind == "int":
        return _check_int(name, spec, value)
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
        return value
    return _check_str(name, spec, value)


def _check_schedule(optim: dict[str, Any]) -> None:
    if optim["warmup_epochs"] > optim["epochs"]:
        raise ValueError(
            f"optim.warmup_epochs ({optim['warmup_epochs']}) must be <= optim.epochs ({optim['epochs']}): "
            "the warm-up cannot be longer than the run; lower optim.warmup_epochs"
        )
    if optim["min_lr"] > optim["lr"]:
        raise ValueError(
            f"optim.min_lr ({optim['min_lr']!r}) must be <= optim.lr ({optim['lr']!r}): the cosine schedule "
            "goes down from optim.lr to optim.min_lr"
        )


def _check_shapes(data: dict[str, Any], model: dict[str, Any]) -> None:
    npoints = data["npoints"]
    if data["point_all"] is not None and data["point_all"] < npoints:
        raise ValueError(
            f"data.point_all ({data['point_all']}) must be >= data.npoints ({npoints}): the training clouds "
            "are pre-sampled to data.point_all points, then data.npoints are drawn from them (null: the "
            "reference's rule)"
        )
    for key in ("num_group", "group_size"):
        if model[key] > npoints:
            raise ValueError(
                f"model.{key} ({model[key]}) must be <= data.npoints ({npoints}): every cloud fed to the "
                "model has data.npoints points"
            )
    if model["trans_dim"] % model["num_heads"]:
        raise ValueError(
            f"model.trans_dim ({model['trans_dim']}) must be divisible by model.num_heads "
            f"({model['num_heads']}): each attention head gets trans_dim / num_heads channels"
        )


def _check_data(data: dict[str, Any]) -> None:
    if data["dataset"] == "synthetic" and data["root"] is not None:
        raise ValueError(
            f"data.root is set ({data['root']!r}) but data.dataset is 'synthetic', which reads no files: "
            "set data.dataset=scanobjectnn or data.dataset=modelnet40 (or use their config), or drop data.root"
        )


def check_relations(config: dict[str, dict[str, Any]]) -> None:
    """Check the settings that must fit together (each value already checked by :func:`check_value`).

    Raises:
        ValueError: naming the keys that do not fit and their values.
    """
    _check_schedule(config["optim"])
    _check_data(config["data"])
    _check_shapes(config["data"], config["model"])
    try:
        DAPTConfig(num_classes=2, **config["dapt"])
    except (TypeError, ValueError) as error:
        raise type(error)(f"dapt: {error}") from None


def _merge(config: dict[str, dict[str, Any]], data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{source}: expected a mapping of sections {sorted(DEFAULTS)}, got {type(data).__name__}"
        )
    for section, values in data.items():
        if section not in DEFAULTS:
            raise ValueError(f"{source}: unknown section {section!r}; sections are {sorted(DEFAULTS)}")
        if values is None:  # a section written with nothing under it
            continue
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ValueError(
                    f"{source}: unknown key {section}.{key}; keys of {section!r} are {sorted(DEFAULTS[section])}"
                )
            try:
                config[section][key] = check_value(section, key, value)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{source}: {error}") from None


def check_config(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A checked copy of a whole config (e.g. one built in Python): every key as :func:`load_config`
    checks it, keys left out taking their default, then :func:`check_relations`.

    Raises:
        ValueError / TypeError: as :func:`load_config`, naming the key.
    """
    checked = copy.deepcopy(DEFAULTS)
    _merge(checked, config, "config")
    check_relations(checked)
    return checked


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"optim.lr=1e-3"`` → ``("optim", "lr", 0.001)``; the value is read as YAML (numbers, booleans,
    lists, ``null``)."""
    import yaml

    if not isinstance(text, str):
        raise TypeError(f"an override must be a string section.key=value, got {text!r}")
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. optim.epochs=10")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return section, key.strip(), value


def _read_yaml(path: str) -> Any:
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config: no file at {path!r}")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as error:
        raise ValueError(f"config: cannot read {path!r} ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ValueError(f"config: {path!r} is not a YAML text file (it is not UTF-8 text)") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """The defaults, updated by the YAML file at ``path`` (if given), then by ``overrides``, checked as
    :data:`SCHEMA` says, then :func:`check_relations`.

    Raises:
        FileNotFoundError: if ``path`` does not exist. ValueError / TypeError: for malformed YAML, unknown
            sections or keys, values of the wrong type or out of range, or settings that do not fit
            together (the message names the key, and the file or override it came from).
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a config file path (str or os.PathLike) or None, got {path!r}")
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise TypeError(f"overrides must be a list of 'section.key=value' strings, got {overrides!r}")
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        _merge(config, _read_yaml(os.fspath(path)), os.fspath(path))
    for text in overrides:
        section, key, value = parse_override(text)
        _merge(config, {section: {key: value}}, f"override {text!r}")
    check_relations(config)
    return config
