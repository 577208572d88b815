"""DAPTConfig: the settings of a DAPT model, validated at construction and on every assignment."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pointpeft.checks import check_bool, check_fraction, check_number, check_positive_int

#: The name of the adapter that :func:`pointpeft.wrap_with_dapt` creates unless told another.
DEFAULT_ADAPTER = "default"
POOL_CHOICES: tuple[str, ...] = ("cls", "prompt", "patch")
# Upper bound of the integer widths (classes, adapter rank, head width): a larger layer would not fit in
# memory, and the value is almost surely a typo; torch would fail deep inside its allocator instead.
MAX_WIDTH = 1 << 20
# Upper bound of the TFTS init std: γ ~ N(1, std²) stays a scale around 1 and fits any float dtype.
MAX_TFTS_INIT_STD = 1.0


def check_pool(value: Any, name: str = "pool") -> tuple[str, ...]:
    """``value`` as a pool: a name or a collection of names from :data:`POOL_CHOICES`, returned as a tuple
    in that order.

    Raises:
        TypeError: if ``value`` is not a name or a collection of names. ValueError: if it is empty, names
            an unknown feature or repeats one. The messages name ``name``.
    """
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, Set):
        value = tuple(value)
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of names from {POOL_CHOICES}, got {value!r}")
    if not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must hold names (str) from {POOL_CHOICES}, got {tuple(value)!r}")
    if len(value) == 0:
        raise ValueError(f"{name} must name at least one of {POOL_CHOICES}, got an empty pool")
    unknown = [v for v in value if v not in POOL_CHOICES]
    if unknown:
        raise ValueError(
            f"{name} names must be among {POOL_CHOICES}, got unknown {unknown} in {tuple(value)}"
        )
    if len(set(value)) != len(value):
        raise ValueError(f"{name} must not repeat a name, got {tuple(value)}")
    # The head always concatenates in the reference's order, whatever order the user wrote.
    return tuple(choice for choice in POOL_CHOICES if choice in value)


def _check_width(name: str, value: Any) -> int:
    value = check_positive_int(name, value)
    if value > MAX_WIDTH:
        raise ValueError(
            f"{name} must be at most {MAX_WIDTH} (a layer this wide would not fit in memory), got {value}"
        )
    return value


def _check_bool(name: str, value: Any) -> bool:
    return check_bool(name, value, expected="a bool (True or False)")


def _check_tfts_init_std(name: str, value: Any) -> float:
    value = check_number(name, value)
    if not 0.0 <= value <= MAX_TFTS_INIT_STD:
        raise ValueError(f"{name} must be >= 0 and <= {MAX_TFTS_INIT_STD:g} (reference: 0.02), got {value!r}")
    return value


# The check of each field: (field name, value) -> the value to store; raises TypeError / ValueError naming
# the field. Used by the constructor and by every later assignment.
_FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "num_classes": _check_width,
    "rank": _check_width,
    "pool": lambda name, value: check_pool(value, name),
    "adapter_dropout": check_fraction,
    "head_dropout": check_fraction,
    "head_hidden": _check_width,
    "tfts": _check_bool,
    "prompts": _check_bool,
    "tfts_init_std": _check_tfts_init_std,
    "update_bn_stats": _check_bool,
}


def dapt_field_check(field_name: str) -> Callable[[str, Any], Any]:
    """The check of :class:`DAPTConfig`'s field ``field_name``, for another method's field of that kind."""
    return _FIELD_CHECKS[field_name]


def _check_prompts_poolable(pool: tuple[str, ...], prompts: bool) -> None:
    if "prompt" in pool and not prompts:
        raise ValueError(
            f"pool contains 'prompt' but prompts=False: there are no prompts to pool (pool={pool}); to change "
            "both, use dataclasses.replace(config, prompts=False, pool=(...))"
        )


class CheckedConfig:
    """Base of the method configs (:class:`DAPTConfig`, :class:`pointpeft.SSFConfig`, ...): every field is
    checked by :attr:`FIELD_CHECKS` when the config is built and whenever it is assigned; ``from_dict`` and
    ``to_dict`` read and write the JSON form kept in adapter files.

    Attributes:
        PEFT_TYPE: the method's name in adapter files (``"DAPT"``, ``"SSF"``, ...).
        FIELD_CHECKS: for each field, ``check(name, value) -> value to store`` (raises TypeError /
            ValueError naming the field).
    """

    PEFT_TYPE: ClassVar[str] = ""
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        check = self.FIELD_CHECKS.get(name)
        if check is not None:
            value = check(name, value)
        object.__setattr__(self, name, self._check_together(name, value))

    def _check_together(self, name: str, value: Any) -> Any:
        """``value`` for ``name`` once checked against the fields already set (none by default)."""
        return value

    @classmethod
    def from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
        """Build a config from :meth:`to_dict` output (e.g. read back from JSON). Unknown keys (from a newer
        pointpeft) are dropped with a warning.

        Raises:
            TypeError: if ``data`` is not a mapping, or a value has the wrong type. ValueError: if a required
                key is missing or a value is out of range. The message names the key.
        """
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a dict of {name} fields, got {type(data).__name__}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        known = {f.name for f in fields}
        unknown = sorted(repr(k) for k in data if k not in known)
        if unknown:
            warnings.warn(f"{name}.from_dict: ignoring unknown keys [{', '.join(unknown)}]", stacklevel=2)
        required = [
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        absent = [key for key in required if key not in data]
        if absent:
            raise ValueError(
                f"{name}.from_dict: the key(s) {absent} are missing (the dict has {sorted(map(repr, data))})"
            )
        values = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name}.from_dict: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (tuples become lists), e.g. for JSON."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()  # type: ignore[call-overload]
        }


_Config = TypeVar("_Config", bound=CheckedConfig)


def check_pool_without_prompts(value: Any, name: str = "pool") -> tuple[str, ...]:
    """:func:`check_pool` for a method without prompts: ``"prompt"`` is refused."""
    pool = check_pool(value, name)
    if "prompt" in pool:
        raise ValueError(
            f"{name} must not contain 'prompt': this method makes no prompts; choose from ('cls', 'patch'), "
            f"got {pool}"
        )
    return pool


@dataclass
class HeadedConfig(CheckedConfig):
    """The fields that every method without prompts shares (:class:`pointpeft.SSFConfig`,
    :class:`pointpeft.LinearProbeConfig`, :class:`pointpeft.LoRAConfig`, :class:`pointpeft.VPTConfig`): the
    pooled head, and whether the backbone's CLS token trains.

    Args:
        num_classes: number of output classes K of the head, an int in [1, 2**20].
        pool: the features the head concatenates, a non-empty subset of ``("cls", "patch")``.
        head_dropout: dropout of the head's two hidden layers, in [0, 1).
        head_hidden: width of the head's two hidden layers, an int in [1, 2**20].
        train_cls: train the backbone's CLS token and CLS position (per-adapter copies), as the point-cloud
            PEFT baselines count them; False leaves them frozen.
        update_bn_stats: let the frozen backbone's BatchNorm running statistics update in train mode.
    """

    num_classes: int = field(metadata={"help": "Number of output classes of the head."})
    pool: tuple[str, ...] = field(default=("cls", "patch"), metadata={"help": "Head features."})
    head_dropout: float = field(default=0.5, metadata={"help": "Dropout of the head's hidden layers."})
    head_hidden: int = field(default=256, metadata={"help": "Width of the head's hidden layers."})
    train_cls: bool = field(default=True, metadata={"help": "Train the CLS token and its position."})
    update_bn_stats: bool = field(
        default=True, metadata={"help": "Update frozen BatchNorm running statistics in train mode."}
    )

    #: The checks of the fields above, for a subclass's :attr:`FIELD_CHECKS` to extend.
    HEAD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = {
        "num_classes": _check_width,
        "pool": lambda name, value: check_pool_without_prompts(value, name),
        "head_dropout": check_fraction,
        "head_hidden": _check_width,
        "train_cls": _check_bool,
        "update_bn_stats": _check_bool,
    }
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = HEAD_CHECKS


@dataclass
class DAPTConfig(CheckedConfig):
    """Settings of DAPT (Dynamic Adapter + Internal Prompts + TFTS + pooled head).

    The defaults are the DAPT reference's ScanObjectNN OBJ_BG setting (rank 64; head on CLS, mean of the
    prompts and max of the patch tokens), except the dropouts: the reference uses adapter dropout 0.5
    (OBJ_BG), 0.2 (PB_T50_RS) and 0 (OBJ_ONLY, ModelNet40), which you set per dataset. (The
    backbone's stochastic depth is a backbone setting, e.g. ``PointMAE(drop_path_rate=0.3)``.)

    Every field is checked when the config is built and whenever a field is assigned afterwards: a wrong
    type raises ``TypeError`` and a value out of range (NaN and infinities included) ``ValueError``, both
    naming the field.

    Args:
        num_classes: number of output classes K of the head, an int in [1, 2**20].
        rank: bottleneck width r of every Dynamic Adapter, an int in [1, 2**20] (reference: 64, 72 for
            ModelNet40).
        pool: which features the head concatenates, any non-empty subset of ``("cls", "prompt", "patch")``:
            the CLS token, the mean of the internal prompts, the max over the patch tokens. The head always
            concatenates them in that order.
        adapter_dropout: dropout on the adapter's bottleneck activations, in [0, 1).
        head_dropout: dropout of the two hidden layers of the head, in [0, 1) (reference: 0.5).
        head_hidden: width of the head's two hidden layers, an int in [1, 2**20] (reference: 256).
        tfts: insert the TFTS scale-and-shift transforms (switch off for ablations).
        prompts: insert one internal prompt per block (switch off for ablations; then ``"prompt"`` cannot
            be pooled).
        tfts_init_std: standard deviation of the TFTS init, γ ~ N(1, std²), β ~ N(0, std²); a finite
            number in [0, 1] (reference: 0.02).
        update_bn_stats: as the reference, let the running statistics of the frozen backbone's BatchNorm
            layers update in train mode. Set False to keep them at their pre-trained values.
    """

    num_classes: int = field(metadata={"help": "Number of output classes of the head."})
    rank: int = field(default=64, metadata={"help": "Bottleneck width of each Dynamic Adapter."})
    pool: tuple[str, ...] = field(
        default=POOL_CHOICES,
        metadata={"help": "Head features: non-empty subset of ('cls', 'prompt', 'patch')."},
    )
    adapter_dropout: float = field(default=0.0, metadata={"help": "Dropout inside the adapter bottleneck."})
    head_dropout: float = field(default=0.5, metadata={"help": "Dropout of the head's hidden layers."})
    head_hidden: int = field(default=256, metadata={"help": "Width of the head's hidden layers."})
    tfts: bool = field(default=True, metadata={"help": "Insert TFTS scale-and-shift transforms."})
    prompts: bool = field(default=True, metadata={"help": "Insert one internal prompt per block."})
    tfts_init_std: float = field(default=0.02, metadata={"help": "Std of the TFTS initialisation."})
    update_bn_stats: bool = field(
        default=True, metadata={"help": "Update frozen BatchNorm running statistics in train mode."}
    )

    PEFT_TYPE: ClassVar[str] = "DAPT"
    FIELD_CHECKS: ClassVar[Mapping[str, Callable[[str, Any], Any]]] = _FIELD_CHECKS

    def _check_together(self, name: str, value: Any) -> Any:
        """``pool`` and ``prompts`` are checked together once both are set."""
        if name in ("pool", "prompts"):
            pool = value if name == "pool" else self.__dict__.get("pool")
            prompts = value if name == "prompts" else self.__dict__.get("prompts")
            if pool is not None and prompts is not None:
                _check_prompts_poolable(pool, prompts)
        return value
