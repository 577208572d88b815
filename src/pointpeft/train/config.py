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
import inspect
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pointpeft.adapter_io import FACTORY_PATTERN
from pointpeft.backbones import BACKBONES
from pointpeft.backbones.point_mae import PosMode
from pointpeft.checks import check_choice, check_number
from pointpeft.config import MAX_WIDTH, DAPTConfig
from pointpeft.dapt.execution import EXECUTIONS
from pointpeft.dapt.presets import PRESETS
from pointpeft.data.modelnet import ModelNet40
from pointpeft.data.scanobjectnn import SCANOBJECTNN_FILES, ScanObjectNN
from pointpeft.data.synthetic import MAX_NOISE, MAX_NUM_POINTS, MAX_NUM_SAMPLES, SHAPE_NAMES
from pointpeft.methods.adapter.config import MAX_ADAPTER_SCALE
from pointpeft.methods.idpt.config import PROMPT_POS_MODES
from pointpeft.methods.lora.config import LORA_TARGETS
from pointpeft.methods.pointlora.config import (
    POINTLORA_SCALES,
    check_mask_weights,
    check_module_path,
    check_module_paths,
    check_scales,
)

DATASETS = ("synthetic", "scanobjectnn", "modelnet40", "modelnet40_fewshot")
#: ``data.fewshot_way`` / ``_shot`` / ``_fold``: the episodes of the few-shot ModelNet40 protocol.
FEWSHOT_WAYS = (5, 10)
FEWSHOT_SHOTS = (10, 20)
FEWSHOT_FOLDS = tuple(range(10))
INITS = ("point_mae", "default")
#: ``data.augment``: the training clouds' augmentation after the resampling.
AUGMENTATIONS = ("scale_translate", "rotate_y", "none")

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "dataset": "synthetic",  # synthetic | scanobjectnn | modelnet40 | modelnet40_fewshot
        "root": None,  # dataset folder (not needed for synthetic)
        "variant": "OBJ_BG",  # ScanObjectNN: OBJ_BG | OBJ_ONLY | PB_T50_RS
        "npoints": 2048,  # points per cloud fed to the model
        "point_all": None,  # FPS pre-sampling size for training (None: the reference's rule)
        "augment": "scale_translate",  # training augmentation: scale_translate (DAPT's) | rotate_y (IDPT's on ScanObjectNN) | none
        "synthetic_train": 800,  # synthetic: training clouds
        "synthetic_test": 200,  # synthetic: test clouds
        "synthetic_classes": 10,
        "synthetic_points": 1024,  # synthetic: points per generated cloud
        "synthetic_partial": 0.0,  # synthetic: share of each cloud cut away as a partial view (scan-like)
        "synthetic_clutter": 0.0,  # synthetic: share of points replaced by background clutter
        "synthetic_noise": 0.01,  # synthetic: std of the coordinates' Gaussian noise
        "fewshot_way": 5,  # modelnet40_fewshot: classes of the episode (5 or 10)
        "fewshot_shot": 10,  # modelnet40_fewshot: training clouds per class (10 or 20)
        "fewshot_fold": 0,  # modelnet40_fewshot: the fold (0 to 9)
        "num_classes": None,  # the head's classes (null: the dataset's; for datasets given to train(), inferred)
    },
    "model": {
        "backbone": "point_mae",  # a built-in backbone (pointpeft.backbones.BACKBONES), or null with factory
        "factory": None,  # "package.module:function" returning the backbone (an nn.Module), or null
        "args": {},  # further keyword arguments of the built-in's constructor, or all of the factory's
        "layout": None,  # a preset name for wrap_with_dapt (null: detect the blocks)
        "method": "dapt",  # the PEFT method, one of METHODS (below); `method=NAME` for short
        "trans_dim": 384,
        "depth": 12,
        "num_heads": 6,
        "num_group": 128,
        "group_size": 32,
        "encoder_dims": 384,
        "drop_path_rate": 0.3,
        "pos_mode": "once",  # the DAPT reference adds the positional embedding once
        "init": "point_mae",  # point_mae (trunc-normal, meant for pre-training) | default (PyTorch's)
        "pretrained": None,  # pre-training checkpoint for pointpeft.load_pretrained ("bundled": the one shipped)
    },
    "dapt": {
        "rank": 64,
        "pool": ["cls", "prompt", "patch"],
        "adapter_dropout": 0.5,
        "head_dropout": 0.5,
        "head_hidden": 256,
        "update_bn_stats": True,
    },
    "lora": {  # used with model.method=lora (pointpeft.LoRAConfig)
        "rank": 8,
        "alpha": 8.0,
        "dropout": 0.0,
        "targets": ["qkv", "proj", "fc1", "fc2"],
    },
    "vpt": {  # used with model.method=vpt (pointpeft.VPTConfig)
        "num_prompts": 10,
        "deep": True,  # VPT-Deep (fresh prompts at every block); false: VPT-Shallow (prompts join once)
    },
    "adapter": {  # used with model.method=adapter (pointpeft.AdapterConfig, AdaptFormer's defaults)
        "rank": 64,
        "scale": 0.1,
        "dropout": 0.1,
    },
    "idpt": {  # used with model.method=idpt (pointpeft.IDPTConfig, the released code's defaults)
        "prompt_layer": 11,  # 6 for ScanObjectNN OBJ_ONLY
        "k": 20,
        "train_prompt_pos": False,
        "prompt_pos_mode": "auto",
    },
    "pointgst": {  # used with model.method=pointgst (pointpeft.PointGSTConfig, the released code's defaults)
        "rank": 36,
        "local_size": 32,  # must divide model.num_group
        "scale": 1.0,
    },
    "pointlora": {  # used with model.method=pointlora (pointpeft.PointLoRAConfig, the released code's defaults)
        "rank": 8,
        "alpha": 8.0,  # updates scaled alpha / rank = 1: the released forward applies no scale
        "targets": ["qkv", "proj"],
        "prompt_hidden": 32,
        "scales": [list(scale) for scale in POINTLORA_SCALES],  # [groups, group_size, selected] per scale
        "mask_weights": [1.0, 0.25],
        "aux_weight": 0.004,
        "pos_embed": "pos_embed",
        "trained_backbone": ["encoder.first_conv", "pos_embed"],
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
        "compile": "auto",  # torch.compile the model: auto (on a GPU) | true | false
        "compile_mode": "reduce-overhead",  # reduce-overhead (CUDA graphs, one process) | default
    },
}

#: ``model.method``: the PEFT method a run trains (the ``dapt`` section's head keys serve every method; its
#: ``rank`` and ``adapter_dropout`` only DAPT).
METHODS = (
    "dapt",
    "full_finetune",
    "linear_probe",
    "bitfit",
    "ssf",
    "lora",
    "vpt",
    "adapter",
    "idpt",
    "pointgst",
    "pointlora",
)

#: ``run.compile_mode``: how a compiled step runs. ``"reduce-overhead"`` replays the compiled forward and
#: backward as CUDA graphs (a single-process run on a GPU; a distributed run compiles in ``"default"`` mode);
#: ``"default"`` launches the compiled kernels one by one.
COMPILE_MODES = ("reduce-overhead", "default")

Kind = Literal["int", "number", "bool", "auto_bool", "str", "list", "mapping", "custom"]

#: The model keys that are constructor arguments of the built-in backbones; each built-in receives those
#: its constructor takes (:func:`backbone_kwargs`). A key a backbone does not take must keep its default.
ARCHITECTURE_KEYS = (
    "trans_dim",
    "depth",
    "num_heads",
    "num_group",
    "group_size",
    "encoder_dims",
    "drop_path_rate",
    "pos_mode",
)


@dataclass(frozen=True)
class KeySpec:
    """What one config key accepts.

    Attributes:
        kind: ``"int"``, ``"number"`` (int or float, stored as a float), ``"bool"``, ``"auto_bool"``
            (true, false or the string ``"auto"``), ``"str"``, ``"list"`` (of names), ``"mapping"`` (names to JSON values: null, booleans, numbers, strings,
            lists and mappings of those) or ``"custom"`` (checked by ``check``).
        nullable: whether ``null`` (None) is accepted.
        low, high: the range of an int or number (None: unbounded); numbers must also be finite.
        low_inclusive, high_inclusive: whether the bounds themselves are accepted.
        choices: the accepted values of a ``"str"`` key, or the names a ``"list"`` key may hold.
        pattern: a regular expression the whole value of a ``"str"`` key must match, described by
            ``pattern_text``.
        dapt_field: the key is the :class:`~pointpeft.DAPTConfig` field of the same name, whose own check
            (range included) applies.
        check: for a ``"custom"`` key, ``check(name, value)`` → the JSON-ready value to store (raises
            TypeError / ValueError naming ``name``).
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
    check: Callable[[str, Any], Any] | None = None


def _check_choice_int(name: str, value: Any, choices: tuple[int, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


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
        "augment": KeySpec("str", choices=AUGMENTATIONS),
        "synthetic_train": _positive_int(MAX_NUM_SAMPLES),
        "synthetic_test": _positive_int(MAX_NUM_SAMPLES),
        "synthetic_classes": KeySpec("int", low=2, high=len(SHAPE_NAMES)),
        "synthetic_points": _positive_int(MAX_NUM_POINTS),
        "synthetic_partial": KeySpec("number", low=0.0, high=1.0, high_inclusive=False),
        "synthetic_clutter": KeySpec("number", low=0.0, high=1.0, high_inclusive=False),
        "synthetic_noise": KeySpec("number", low=0.0, high=MAX_NOISE),
        "fewshot_way": KeySpec("custom", check=lambda name, v: _check_choice_int(name, v, FEWSHOT_WAYS)),
        "fewshot_shot": KeySpec("custom", check=lambda name, v: _check_choice_int(name, v, FEWSHOT_SHOTS)),
        "fewshot_fold": KeySpec("custom", check=lambda name, v: _check_choice_int(name, v, FEWSHOT_FOLDS)),
        "num_classes": KeySpec("int", nullable=True, low=2, high=MAX_WIDTH),
    },
    "model": {
        "backbone": KeySpec("str", nullable=True, choices=tuple(BACKBONES)),
        "factory": KeySpec(
            "str", nullable=True, pattern=FACTORY_PATTERN, pattern_text="'package.module:function' or null"
        ),
        "args": KeySpec("mapping"),
        "layout": KeySpec("str", nullable=True, choices=tuple(PRESETS)),
        "method": KeySpec("str", choices=METHODS),
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
    "lora": {
        "rank": KeySpec("int", low=1, high=MAX_WIDTH),
        "alpha": KeySpec("number", low=0.0, low_inclusive=False, high=1e6),
        "dropout": KeySpec("number", low=0.0, high=1.0, high_inclusive=False),
        "targets": KeySpec("list", choices=LORA_TARGETS),
    },
    "vpt": {"num_prompts": KeySpec("int", low=1, high=MAX_WIDTH), "deep": KeySpec("bool")},
    "adapter": {
        "rank": KeySpec("int", low=1, high=MAX_WIDTH),
        "scale": KeySpec("number", low=0.0, low_inclusive=False, high=MAX_ADAPTER_SCALE),
        "dropout": KeySpec("number", low=0.0, high=1.0, high_inclusive=False),
    },
    "idpt": {
        "prompt_layer": KeySpec("int", low=0, high=MAX_WIDTH),
        "k": KeySpec("int", low=1, high=MAX_WIDTH),
        "train_prompt_pos": KeySpec("bool"),
        "prompt_pos_mode": KeySpec("str", choices=PROMPT_POS_MODES),
    },
    "pointgst": {
        "rank": KeySpec("int", low=1, high=MAX_WIDTH),
        "local_size": KeySpec("int", low=1, high=MAX_WIDTH),
        "scale": KeySpec("number", low=0.0, low_inclusive=False, high=MAX_ADAPTER_SCALE),
    },
    "pointlora": {
        "rank": KeySpec("int", low=1, high=MAX_WIDTH),
        "alpha": KeySpec("number", low=0.0, low_inclusive=False, high=1e6),
        "targets": KeySpec("list", choices=LORA_TARGETS),
        "prompt_hidden": KeySpec("int", low=1, high=MAX_WIDTH),
        "scales": KeySpec("custom", check=lambda name, v: [list(s) for s in check_scales(name, v)]),
        "mask_weights": KeySpec("custom", check=lambda name, v: list(check_mask_weights(name, v))),
        "aux_weight": KeySpec("number", low=0.0, high=1e6),
        "pos_embed": KeySpec("custom", check=check_module_path),
        "trained_backbone": KeySpec("custom", check=lambda name, v: list(check_module_paths(name, v))),
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
        "compile": KeySpec("auto_bool"),
        "compile_mode": KeySpec("str", choices=COMPILE_MODES),
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


def _check_auto_bool(name: str, value: Any) -> bool | str:
    """``value`` if it is true, false or ``"auto"``; else an error naming ``name``."""
    if isinstance(value, bool) or value == "auto":
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        raise ValueError(f"{name} must be auto, true or false, got {value!r}")
    raise TypeError(f"{name} must be auto, true or false, got {type(value).__name__} {value!r}")


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


def _check_json_value(name: str, value: Any) -> Any:
    """``value`` as a JSON value (tuples become lists), or an error naming ``name``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return [_check_json_value(f"{name}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return _check_mapping(name, value)
    raise TypeError(
        f"{name} must be null, a boolean, a number, a string, or a list or mapping of those (values that "
        f"YAML and JSON write), got {type(value).__name__} {value!r}"
    )


def _check_mapping(name: str, value: Any) -> dict[str, Any]:
    """``value`` as a plain dict of names (str) to JSON values, or an error naming ``name`` (and the key)."""
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{name} must be a mapping of argument names to values (e.g. {{num_group: 64}}), "
            f"got {type(value).__name__} {value!r}"
        )
    checked: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{name}: keys must be argument names (identifiers), got {key!r}")
        checked[key] = _check_json_value(f"{name}.{key}", item)
    return checked


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
    if spec.kind == "mapping":
        return _check_mapping(name, value)
    if spec.kind == "custom":
        assert spec.check is not None
        return spec.check(name, value)
    if (section, key) == ("model", "backbone") and not (isinstance(value, str) and value in BACKBONES):
        raise ValueError(
            f"model.backbone must be one of {tuple(BACKBONES)} or null (with model.factory), got {value!r}; "
            "for another backbone set model.factory='package.module:function' (and model.backbone=null)"
        )
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
    if spec.kind == "auto_bool":
        return _check_auto_bool(name, value)
    if spec.kind == "list":
        return _check_names(name, spec, value)
    return _check_str(name, spec, value)


def _check_names(name: str, spec: KeySpec, value: Any) -> list[str]:
    """``value`` as a non-empty list of distinct names from ``spec.choices``, in their order."""
    choices = spec.choices or ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of names from {list(choices)}, got {value!r}")
    if not value or len(set(value)) != len(value) or any(v not in choices for v in value):
        raise ValueError(f"{name} must name distinct ones of {list(choices)}, at least one, got {value!r}")
    return [c for c in choices if c in value]


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


def backbone_parameters(cls: Any) -> tuple[tuple[str, ...], bool]:
    """``(the keyword arguments that cls(...) accepts, whether it also accepts **kwargs)``."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: accept anything
        return (), True
    named = tuple(
        p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    )
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _backbone_name(model: dict[str, Any]) -> str:
    if model["factory"] is not None:
        return f"model.factory={model['factory']!r}"
    return f"model.backbone={model['backbone']!r} ({BACKBONES[model['backbone']].__name__})"


def used_architecture_keys(model: dict[str, Any]) -> tuple[str, ...]:
    """The :data:`ARCHITECTURE_KEYS` that the configured backbone receives: those its constructor takes for
    a built-in, none for a ``model.factory`` (which receives ``model.args`` only)."""
    if model["factory"] is not None or model["backbone"] is None:
        return ()
    named, _ = backbone_parameters(BACKBONES[model["backbone"]])
    return tuple(k for k in ARCHITECTURE_KEYS if k in named)


#: Architecture keys whose defaults are Point-MAE's sizes: another built-in gets them only when they are set
#: to something else, and otherwise builds at its own published sizes (Point-BERT: 64 groups, a 256-wide
#: patch encoder). The recipe keys (drop_path_rate, pos_mode) always apply.
SIZE_KEYS = ("trans_dim", "depth", "num_heads", "num_group", "group_size", "encoder_dims")


def backbone_kwargs(model: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the configured backbone is built with (a checked ``config["model"]``): for a
    built-in, the :data:`ARCHITECTURE_KEYS` its constructor takes (for one other than ``point_mae``, the
    :data:`SIZE_KEYS` only where they differ from their defaults), then ``model.args``; for a
    ``model.factory``, ``model.args``."""
    own_sizes = model["backbone"] != "point_mae"
    kwargs = {
        key: model[key]
        for key in used_architecture_keys(model)
        if not (own_sizes and key in SIZE_KEYS and model[key] == DEFAULTS["model"][key])
    }
    kwargs.update(copy.deepcopy(model["args"]))
    return kwargs


def _check_model(model: dict[str, Any]) -> None:
    backbone, factory = model["backbone"], model["factory"]
    if backbone is not None and factory is not None:
        raise ValueError(
            f"model.backbone ({backbone!r}) and model.factory ({factory!r}) are both set: set one of them "
            "(model.backbone=null to build the backbone with model.factory)"
        )
    if backbone is None and factory is None:
        raise ValueError(
            "model.backbone and model.factory are both null: name a built-in backbone "
            f"(model.backbone, one of {tuple(BACKBONES)}) or a factory (model.factory='package.module:function')"
        )
    used = used_architecture_keys(model)
    where = _backbone_name(model)
    for key in ARCHITECTURE_KEYS:
        if key not in used and model[key] != DEFAULTS["model"][key]:
            hint = (
                f"put {key} in model.args if the factory takes it"
                if factory is not None
                else f"it takes {', '.join(used)}"
            )
            raise ValueError(
                f"model.{key} is set ({model[key]!r}) but {where} does not take {key}: leave model.{key} at its "
                f"default ({DEFAULTS['model'][key]!r}); {hint}"
            )
    if factory is not None:
        return
    named, var_keyword = backbone_parameters(BACKBONES[backbone])
    for key in model["args"]:
        if key in ARCHITECTURE_KEYS:
            raise ValueError(f"model.args.{key}: {key} is a model key; set model.{key} instead")
        if key not in named and not var_keyword:
            others = [k for k in named if k not in ARCHITECTURE_KEYS]
            raise ValueError(
                f"model.args.{key}: {where} does not take {key}; its other arguments are {others}"
            )


def _check_shapes(data: dict[str, Any], model: dict[str, Any]) -> None:
    npoints = data["npoints"]
    used = used_architecture_keys(model)
    if data["point_all"] is not None and data["point_all"] < npoints:
        raise ValueError(
            f"data.point_all ({data['point_all']}) must be >= data.npoints ({npoints}): the training clouds "
            "are pre-sampled to data.point_all points, then data.npoints are drawn from them (null: the "
            "reference's rule)"
        )
    for key in ("num_group", "group_size"):
        if key in used and model[key] > npoints:
            raise ValueError(
                f"model.{key} ({model[key]}) must be <= data.npoints ({npoints}): every cloud fed to the "
                "model has data.npoints points"
            )
    if {"trans_dim", "num_heads"} <= set(used) and model["trans_dim"] % model["num_heads"]:
        raise ValueError(
            f"model.trans_dim ({model['trans_dim']}) must be divisible by model.num_heads "
            f"({model['num_heads']}): each attention head gets trans_dim / num_heads channels"
        )


def dataset_classes(data: dict[str, Any]) -> int:
    """The number of classes of the built-in dataset ``data.dataset`` names."""
    files = {
        "scanobjectnn": ScanObjectNN.num_classes,
        "modelnet40": ModelNet40.num_classes,
        "modelnet40_fewshot": data["fewshot_way"],
    }
    return files.get(data["dataset"], data["synthetic_classes"])


def check_dataset_classes(data: dict[str, Any]) -> int:
    """The classes of the head for the built-in dataset ``data.dataset`` names: ``data.num_classes`` if set,
    else the dataset's (ScanObjectNN 15, ModelNet40 40, synthetic ``data.synthetic_classes``).

    A file dataset may have fewer classes than its format allows (a ScanObjectNN-format set of 10 classes,
    labels 0 to 9): ``data.num_classes`` sets its head; :func:`pointpeft.train.build.build_datasets` checks
    the labels against it when it reads them.

    Raises:
        ValueError: if ``data.num_classes`` is above a file format's classes, or differs from
            ``data.synthetic_classes``.
    """
    classes = dataset_classes(data)
    wanted = data["num_classes"]
    if wanted is None or wanted == classes:
        return classes
    if data["dataset"] == "synthetic":
        raise ValueError(
            f"data.num_classes ({wanted}) differs from the {classes} classes of data.synthetic_classes: set "
            "data.synthetic_classes instead (data.num_classes is for file datasets of fewer classes and for "
            "datasets given to pointpeft.train.train(datasets=...))"
        )
    if wanted > classes:
        raise ValueError(
            f"data.num_classes ({wanted}) is above the {classes} classes of data.dataset={data['dataset']!r}, "
            f"whose labels are in [0, {classes}); set at most {classes}, or leave it null"
        )
    return int(wanted)


def _check_pointlora(section: dict[str, Any], method: str, npoints: int) -> None:
    scales, weights = section["scales"], section["mask_weights"]
    if len(scales) != len(weights):
        raise ValueError(
            f"pointlora.mask_weights ({weights}) must hold one weight per scale of pointlora.scales ({scales}): "
            f"{len(scales)} scale(s), {len(weights)} weight(s)"
        )
    if method != "pointlora":
        return
    for index, (groups, size, _) in enumerate(scales):
        if max(groups, size) > npoints:
            raise ValueError(
                f"pointlora.scales[{index}] = {scales[index]} needs clouds of at least max(groups, group_size) = "
                f"{max(groups, size)} points, but data.npoints is {npoints}: raise data.npoints or set smaller "
                "pointlora.scales"
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
    _check_pointlora(config["pointlora"], config["model"]["method"], config["data"]["npoints"])
    _check_data(config["data"])
    _check_model(config["model"])
    _check_shapes(config["data"], config["model"])
    try:
        DAPTConfig(num_classes=2, **config["dapt"])
    except (TypeError, ValueError) as error:
        raise type(error)(f"dapt: {error}") from None


def _merge(config: dict[str, dict[str, Any]], data: Any, source: str) -> set[tuple[str, str]]:
    """Check and write the keys of ``data`` (from ``source``) into ``config``; the ``(section, key)`` set."""
    given: set[tuple[str, str]] = set()
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
            given.add((section, key))
    return given


def _resolve_backbone(config: dict[str, dict[str, Any]], given: set[tuple[str, str]]) -> None:
    """With ``model.factory`` set and ``model.backbone`` not given, the backbone is the factory's
    (``model.backbone`` becomes null); a ``model.backbone`` given as well is an error (in
    :func:`check_relations`)."""
    model = config["model"]
    if model["factory"] is not None and ("model", "backbone") not in given:
        model["backbone"] = None


def check_config(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A checked copy of a whole config (e.g. one built in Python): every key as :func:`load_config`
    checks it, keys left out taking their default, then :func:`check_relations`.

    Raises:
        ValueError / TypeError: as :func:`load_config`, naming the key.
    """
    checked = copy.deepcopy(DEFAULTS)
    _resolve_backbone(checked, _merge(checked, config, "config"))
    check_relations(checked)
    return checked


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"optim.lr=1e-3"`` → ``("optim", "lr", 0.001)``; the value is read as YAML (numbers, booleans,
    lists, ``null``)."""
    import yaml

    if not isinstance(text, str):
        raise TypeError(f"an override must be a string section.key=value, got {text!r}")
    name, sep, raw = text.partition("=")
    if sep and name.strip() == "method":  # the shorthand of model.method
        name = "model.method"
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ValueError(
            f"override {text!r} must look like section.key=value (e.g. optim.epochs=10) or method=NAME"
        )
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
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
    base_source: str = "base",
) -> dict[str, dict[str, Any]]:
    """The defaults, updated by ``base`` (a mapping of sections, e.g. the settings an adapter folder
    records; its errors name ``base_source``), then the YAML file at ``path`` (if given; a list of files is
    applied in order, each over the ones before, e.g. a dataset's config then a method's from
    ``configs/methods/``), then ``overrides``, checked as :data:`SCHEMA` says, then :func:`check_relations`.

    An override ``model.args.NAME=value`` sets one argument of ``model.args``, keeping the others.

    Raises:
        FileNotFoundError: if ``path`` does not exist. ValueError / TypeError: for malformed YAML, unknown
            sections or keys, values of the wrong type or out of range, or settings that do not fit
            together (the message names the key, and the file or override it came from).
    """
    if path is None:
        paths: list[str | os.PathLike[str]] = []
    elif isinstance(path, (str, os.PathLike)):
        paths = [path]
    elif isinstance(path, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in path):
        paths = list(path)
    else:
        raise TypeError(
            f"path must be a config file path (str or os.PathLike), a list of them, or None, got {path!r}"
        )
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise TypeError(f"overrides must be a list of 'section.key=value' strings, got {overrides!r}")
    config = copy.deepcopy(DEFAULTS)
    given: set[tuple[str, str]] = set()
    if base is not None:
        given |= _merge(config, base, base_source)
    set_by_file: dict[str, str] = {}  # model key -> the config file that set it last
    for file in paths:
        keys = _merge(config, _read_yaml(os.fspath(file)), os.fspath(file))
        given |= keys
        set_by_file.update({key: os.fspath(file) for section, key in keys if section == "model"})
    for text in overrides:
        section, key, value = parse_override(text)
        if section == "model" and key.startswith("args.") and key != "args.":
            # model.args.NAME=value sets one argument, keeping the others
            key, value = "args", {**config["model"]["args"], key[len("args.") :]: value}
        given |= _merge(config, {section: {key: value}}, f"override {text!r}")
        if section == "model":
            set_by_file.pop(key, None)
    _resolve_backbone(config, given)
    _leave_out_file_keys_the_backbone_does_not_take(config["model"], set_by_file)
    check_relations(config)
    return config


def _leave_out_file_keys_the_backbone_does_not_take(
    model: dict[str, Any], set_by_file: Mapping[str, str]
) -> None:
    """A model key that a config file set and the chosen built-in does not take goes back to its default,
    with a warning naming the file: a method file holds its paper's Point-MAE recipe (``drop_path_rate``,
    ``pos_mode``), which PointGPT and ReCon do not take, and it still applies to them in every other key.
    Set on the command line, such a key is an error (:func:`check_relations`)."""
    if model["backbone"] is None or model["factory"] is not None:
        return
    used = used_architecture_keys(model)
    for key, file in set_by_file.items():
        if key in ARCHITECTURE_KEYS and key not in used and model[key] != DEFAULTS["model"][key]:
            warnings.warn(
                f"{file}: model.{key}={model[key]!r} is left out: {_backbone_name(model)} does not take {key} "
                f"(it takes {', '.join(used)})",
                UserWarning,
                stacklevel=3,
            )
            model[key] = DEFAULTS["model"][key]
