"""DAPTConfig: the settings of a DAPT model, validated at construction."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pointpeft._checks import check_fraction, check_positive_int

POOL_CHOICES: tuple[str, ...] = ("cls", "prompt", "patch")


def _check_pool(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"pool must be a sequence of names from {POOL_CHOICES}, got {value!r}")
    if len(value) == 0:
        raise ValueError(f"pool must name at least one of {POOL_CHOICES}, got an empty pool")
    unknown = [v for v in value if v not in POOL_CHOICES]
    if unknown:
        raise ValueError(f"pool names must be among {POOL_CHOICES}, got unknown {unknown} in {tuple(value)}")
    if len(set(value)) != len(value):
        raise ValueError(f"pool must not repeat a name, got {tuple(value)}")
    # The head always concatenates in the reference's order, whatever order the user wrote.
    return tuple(name for name in POOL_CHOICES if name in value)


@dataclass
class DAPTConfig:
    """Settings of DAPT (Dynamic Adapter + Internal Prompts + TFTS + pooled head).

    The defaults are the DAPT reference's ScanObjectNN OBJ_BG setting (rank 64; head on CLS, mean of the
    prompts and max of the patch tokens), except the dropouts: the reference uses adapter dropout 0.5
    (OBJ_BG), 0.2 (PB_T50_RS) and 0 (OBJ_ONLY, ModelNet40), which you set per dataset. (The
    backbone's stochastic depth is a backbone setting, e.g. ``PointMAE(drop_path_rate=0.3)``.)

    Args:
        num_classes: number of output classes K of the head.
        rank: bottleneck width r of every Dynamic Adapter (reference: 64, 72 for ModelNet40).
        pool: which features the head concatenates, any non-empty subset of ``("cls", "prompt", "patch")``:
            the CLS token, the mean of the internal prompts, the max over the patch tokens. The head always
            concatenates them in that order.
        adapter_dropout: dropout on the adapter's bottleneck activations, in [0, 1).
        head_dropout: dropout of the two hidden layers of the head, in [0, 1) (reference: 0.5).
        head_hidden: width of the head's two hidden layers (reference: 256).
        tfts: insert the TFTS scale-and-shift transforms (switch off for ablations).
        prompts: insert one internal prompt per block (switch off for ablations; then ``"prompt"`` cannot
            be pooled).
        tfts_init_std: standard deviation of the TFTS init, γ ~ N(1, std²), β ~ N(0, std²).
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

    def __post_init__(self) -> None:
        self.num_classes = check_positive_int("num_classes", self.num_classes)
        self.rank = check_positive_int("rank", self.rank)
        self.head_hidden = check_positive_int("head_hidden", self.head_hidden)
        self.pool = _check_pool(self.pool)
        self.adapter_dropout = check_fraction("adapter_dropout", self.adapter_dropout)
        self.head_dropout = check_fraction("head_dropout", self.head_dropout)
        for name in ("tfts", "prompts", "update_bn_stats"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.tfts_init_std, bool) or not isinstance(self.tfts_init_std, (int, float)):
            raise TypeError(f"tfts_init_std must be a float >= 0, got {self.tfts_init_std!r}")
        if self.tfts_init_std < 0:
            raise ValueError(f"tfts_init_std must be >= 0, got {self.tfts_init_std}")
        if "prompt" in self.pool and not self.prompts:
            raise ValueError(
                f"pool contains 'prompt' but prompts=False: there are no prompts to pool (pool={self.pool})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DAPTConfig:
        """Build a config from :meth:`to_dict` output. Unknown keys (from a newer pointpeft) are dropped
        with a warning.

        Raises:
            TypeError: if ``data`` is not a dict. ValueError / TypeError: for invalid values, as the
                constructor.
        """
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict of DAPTConfig fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"DAPTConfig.from_dict: ignoring unknown keys {unknown}", stacklevel=2)
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("pool"), list):
            values["pool"] = tuple(values["pool"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (tuples become lists), e.g. for JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
