"""A run's files: ``last.pt`` (where the run stands, for resuming) and ``metrics.jsonl`` (its epoch log).

``last.pt`` holds everything needed to continue: the adapter tensors, the optimiser state, the config,
the best accuracy so far and the list of epoch records. It is written atomically after each epoch (the
commit point of the epoch), then ``metrics.jsonl`` is rewritten whole, atomically, from that list; a run
resumed after a kill at any point rewrites it again from the list it resumed, so the log always reads as
one uninterrupted run.

Resuming reads ``last.pt`` without running pickled code (:func:`pointpeft.safe_load.load_torch_file`)
and checks all of it against the current model, optimiser and config before anything is copied: a file
that does not fit is a ``ValueError`` that names the file, says what differs, and how to start afresh.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from pointpeft.adapter_io import adapter_state_dict
from pointpeft.atomic_write import atomic_torch_save, atomic_write_text
from pointpeft.dapt.model import DAPTModel

__all__ = [
    "BEST_ADAPTER",
    "LAST_CHECKPOINT",
    "METRICS",
    "RECORD_KEYS",
    "TIME_KEYS",
    "RunState",
    "active_adapter",
    "checkpoint_state",
    "load_checkpoint",
    "write_metrics",
]

LAST_CHECKPOINT = "last.pt"
BEST_ADAPTER = "best"
METRICS = "metrics.jsonl"
# The fields of one epoch record (one line of metrics.jsonl), in their order.
RECORD_KEYS = ("epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "best_accuracy", "seconds")
#: The fields of a record's ``time`` entry (seconds, each >= 0), where the epoch's time went. A record
#: written before they existed has no ``time`` entry, and resumes as it is.
TIME_KEYS = ("data_s", "step_s", "eval_s", "save_s", "epoch_s")
# Config sections an adapter is tied to: resuming with other values would load tensors into another model.
MODEL_SECTIONS = ("model", "dapt")
#: Config keys newer than ``last.pt`` files may be: a file without them was written with these values.
_ADDED_KEYS: dict[str, dict[str, Any]] = {
    "model": {"backbone": "point_mae", "factory": None, "args": {}, "layout": None}
}
_SHOWN = 8  # names listed per kind of problem
_MISSING = "<missing>"


@dataclass
class RunState:
    """Where a run stands after its last finished epoch.

    Attributes:
        records: one dict per finished epoch (:data:`RECORD_KEYS`), epochs 0, 1, ... in order.
        best_accuracy: the best test accuracy (%) so far; -1 before the first epoch.
        best_epoch: the epoch of ``best_accuracy``; -1 before the first epoch.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = -1

    @property
    def next_epoch(self) -> int:
        """The epoch to train next."""
        return len(self.records)


def active_adapter(model: DAPTModel) -> str:
    """The name of ``model``'s active adapter (the one trained, saved and resumed).

    Raises:
        ValueError: if no adapter is active (inside ``model.disable_adapter()``).
    """
    name = model.active_adapter
    if name is None:
        raise ValueError("the model has no active adapter (inside model.disable_adapter()?); set one first")
    return name


def write_metrics(path: str, records: list[dict[str, Any]]) -> None:
    """Write ``metrics.jsonl`` whole and atomically: one JSON line per record."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def checkpoint_state(
    model: DAPTModel, optimizer: torch.optim.Optimizer, config: dict[str, Any], state: RunState
) -> dict[str, Any]:
    """The content of ``last.pt`` (tensors on the CPU, plain containers only)."""
    adapter = adapter_state_dict(model, active_adapter(model))
    return {
        "epoch": state.next_epoch - 1,
        "best_accuracy": state.best_accuracy,
        "best_epoch": state.best_epoch,
        "records": [dict(record) for record in state.records],
        "adapter": {k: v.detach().to("cpu", copy=True) for k, v in adapter.items()},
        "optimizer": optimizer.state_dict(),
        "config": config,
    }


def save_checkpoint(
    path: str, model: DAPTModel, optimizer: torch.optim.Optimizer, config: dict[str, Any], state: RunState
) -> None:
    """Write ``last.pt`` atomically (the previous one stays whole until the new one replaces it)."""
    atomic_torch_save(checkpoint_state(model, optimizer, config, state), path)


class _Refusal:
    """Builds the errors about one ``last.pt``: each names the file and ends with how to start afresh."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, problem: str) -> ValueError:
        return self.advise(f"cannot resume from {self.path}: {problem}")

    def advise(self, message: str) -> ValueError:
        return ValueError(
            f"{message}. To start afresh, set run.resume=false (the run in {os.path.dirname(self.path) or '.'} "
            "is then replaced) or choose a new run.output_dir"
        )


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_config(saved: Any, config: dict[str, Any], refuse: _Refusal) -> None:
    """The saved ``model`` / ``dapt`` sections must equal the current ones; ``data`` differences warn."""
    if not isinstance(saved, dict) or not all(isinstance(saved.get(s), dict) for s in MODEL_SECTIONS):
        raise refuse(f"its 'config' entry must hold the {MODEL_SECTIONS} sections of the run's config")
    # A key added to the config after the file was written counts as its default (a point_mae run
    # written before model.backbone / factory / args / layout existed resumes as one).
    saved = {s: {**_ADDED_KEYS.get(s, {}), **saved[s]} for s in MODEL_SECTIONS} | {
        k: v for k, v in saved.items() if k not in MODEL_SECTIONS
    }
    differing = [
        f"{section}.{key}: saved {saved[section].get(key, _MISSING)!r}, now {config[section].get(key, _MISSING)!r}"
        for section in MODEL_SECTIONS
        for key in sorted(set(saved[section]) | set(config[section]))
        if saved[section].get(key, _MISSING) != config[section].get(key, _MISSING)
    ]
    if differing:
        raise refuse("it was written for another model; " + "; ".join(differing))
    data = saved.get("data")
    if isinstance(data, dict) and data != config["data"]:
        keys = sorted(k for k in set(data) | set(config["data"]) if data.get(k) != config["data"].get(k))
        warnings.warn(
            f"{refuse.path} was written with other data settings ({', '.join(f'data.{k}' for k in keys)}); "
            "resuming anyway",
            stacklevel=4,
        )


def _tensor_problems(name: str, value: Any, like: torch.Tensor) -> str | None:
    """Why ``value`` cannot replace ``like`` (shape, dtype, non-finite values), or None."""
    if not isinstance(value, torch.Tensor):
        return f"{name}: saved {type(value).__name__}, expected a tensor"
    if value.shape != like.shape or value.dtype != like.dtype:
        return f"{name}: saved {tuple(value.shape)} {value.dtype}, model {tuple(like.shape)} {like.dtype}"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return f"{name}: saved values are not all finite"
    return None


def _check_adapter(saved: Any, targets: dict[str, torch.Tensor], refuse: _Refusal) -> None:
    if not isinstance(saved, dict):
        raise refuse(f"its 'adapter' entry must map tensor names to tensors, got {type(saved).__name__}")
    missing = sorted(set(targets) - set(saved))
    unexpected = sorted(str(k) for k in set(saved) - set(targets))
    if missing or unexpected:
        raise refuse(
            f"its adapter does not fit the model: {len(missing)} tensor(s) missing [{_listed(missing)}], "
            f"{len(unexpected)} unexpected [{_listed(unexpected)}]"
        )
    problems = [p for k, v in saved.items() if (p := _tensor_problems(k, v, targets[k])) is not None]
    if problems:
        raise refuse(f"{len(problems)} adapter tensor(s) do not fit the model: {_listed(problems)}")


def _moment_names(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    amsgrad = any(group.get("amsgrad", False) for group in optimizer.param_groups)
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())


def _step_problem(index: int, step: Any) -> str | None:
    if isinstance(step, torch.Tensor):
        if step.numel() != 1 or not step.is_floating_point():
            return f"parameter {index}: 'step' must be a float scalar, saved {tuple(step.shape)} {step.dtype}"
        step = step.item()
    if not _is_number(step) or step < 0:
        return f"parameter {index}: 'step' must be a finite number >= 0, saved {step!r}"
    return None


def _parameter_state_problems(
    index: int, state: Any, parameter: torch.Tensor, moments: tuple[str, ...]
) -> list[str]:
    if not isinstance(state, dict) or set(state) != {"step", *moments}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        return [f"parameter {index}: state {keys}, expected {sorted({'step', *moments})}"]
    problems = [p for p in [_step_problem(index, state["step"])] if p is not None]
    for name in moments:
        problem = _tensor_problems(f"parameter {index} {name}", state[name], parameter)
        if problem is None and name != "exp_avg" and bool((state[name] < 0).any()):
            problem = f"parameter {index} {name}: saved values are negative"
        problems += [problem] if problem is not None else []
    return problems


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, refuse: _Refusal) -> None:
    """The saved state must have the optimiser's groups (same parameter indices) and, per parameter, the
    AdamW moments with the parameter's shape and dtype."""
    current = optimizer.state_dict()["param_groups"]
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise refuse(
            "its 'optimizer' entry must be an optimizer state_dict (with 'state' and 'param_groups')"
        )
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise refuse("its optimizer state has no list of 'param_groups'")
    if [g.get("params") for g in groups] != [g["params"] for g in current]:
        saved_sizes = [len(g.get("params") or ()) for g in groups]
        raise refuse(
            f"its optimizer state has {len(groups)} parameter group(s) of {saved_sizes} parameters, the "
            f"optimizer {len(current)} of {[len(g['params']) for g in current]}"
        )
    parameters = {
        index: parameter
        for indices, group in zip(current, optimizer.param_groups, strict=True)
        for index, parameter in zip(indices["params"], group["params"], strict=True)
    }
    unknown = sorted(str(k) for k in saved["state"] if k not in parameters)
    if unknown:
        raise refuse(f"its optimizer state names parameters the optimizer does not have: {_listed(unknown)}")
    moments = _moment_names(optimizer)
    problems = [
        problem
        for index, state in saved["state"].items()
        for problem in _parameter_state_problems(index, state, parameters[index], moments)
    ]
    if problems:
        raise refuse(f"its optimizer state does not fit the model: {_listed(problems)}")


def _time_problem(index: int, time: Any) -> str | None:
    if not isinstance(time, dict) or set(time) != set(TIME_KEYS):
        keys = sorted(time) if isinstance(time, dict) else type(time).__name__
        return f"record {index}: its 'time' entry has {keys}, expected {list(TIME_KEYS)}"
    bad = [k for k in TIME_KEYS if not (_is_number(time[k]) and time[k] >= 0)]
    return f"record {index}: time {bad} are not finite numbers >= 0" if bad else None


def _record_problem(index: int, record: Any) -> str | None:
    if not isinstance(record, dict) or set(record) - {"time"} != set(RECORD_KEYS):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        return f"record {index} has {keys}, expected {list(RECORD_KEYS)} (and optionally 'time')"
    if record["epoch"] != index or not _is_int(record["epoch"]):
        return f"record {index} is of epoch {record['epoch']!r}"
    bad = [k for k in RECORD_KEYS if not _is_number(record[k])]
    if bad:
        return f"record {index}: {bad} are not finite numbers"
    return _time_problem(index, record["time"]) if "time" in record else None


def _best_of(records: list[dict[str, Any]]) -> tuple[float, int]:
    """The best test accuracy and its epoch (the first epoch that reached it), as training keeps them."""
    best_accuracy, best_epoch = -1.0, -1
    for record in records:
        if record["test_accuracy"] > best_accuracy:
            best_accuracy, best_epoch = record["test_accuracy"], record["epoch"]
    return best_accuracy, best_epoch


def _records_from_metrics(path: str, epoch: int, refuse: _Refusal) -> list[dict[str, Any]]:
    """The records of a ``last.pt`` written before it held them (pointpeft <= 0.x appended every epoch
    to ``metrics.jsonl``, repeating epochs after a resume): the last record of each epoch 0..``epoch``."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as error:
        raise refuse(f"it holds no epoch records and {path} cannot be read ({error})") from None
    by_epoch = {line.get("epoch"): line for line in lines if isinstance(line, dict)}
    if any(e not in by_epoch for e in range(epoch + 1)):
        raise refuse(f"it holds no epoch records and {path} lacks some of epochs 0..{epoch}")
    records = [{k: by_epoch[e].get(k) for k in RECORD_KEYS} for e in range(epoch + 1)]
    for e, record in enumerate(records):
        if "time" in by_epoch[e]:
            record["time"] = by_epoch[e]["time"]
    return records


def _check_progress(state: dict[str, Any], metrics_path: str, refuse: _Refusal) -> RunState:
    if not _is_int(state.get("epoch")) or state["epoch"] < 0:
        raise refuse(
            f"its 'epoch' entry must be an int >= 0 (the last finished epoch), got {state.get('epoch')!r}"
        )
    epoch: int = state["epoch"]
    records = state["records"] if "records" in state else _records_from_metrics(metrics_path, epoch, refuse)
    if not isinstance(records, list) or len(records) != epoch + 1:
        got = f"{len(records)} records" if isinstance(records, list) else type(records).__name__
        raise refuse(f"its 'records' entry must list the {epoch + 1} finished epochs, got {got}")
    problems = [p for i, r in enumerate(records) if (p := _record_problem(i, r)) is not None]
    if problems:
        raise refuse(f"its epoch records are malformed: {_listed(problems)}")
    best_accuracy, best_epoch = _best_of(records)
    if (state.get("best_accuracy"), state.get("best_epoch")) != (best_accuracy, best_epoch):
        raise refuse(
            f"its best accuracy {state.get('best_accuracy')!r} at epoch {state.get('best_epoch')!r} is not "
            f"that of its records ({best_accuracy!r} at epoch {best_epoch})"
        )
    return RunState(records=[dict(r) for r in records], best_accuracy=best_accuracy, best_epoch=best_epoch)


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load the saved moments and step counts, keeping the current settings (lr, weight decay, betas) of
    every group: the config of this run says what they are."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, kept in zip(optimizer.param_groups, settings, strict=True):
        group.update(kept)


def load_checkpoint(
    path: str, model: DAPTModel, optimizer: torch.optim.Optimizer, config: dict[str, Any]
) -> RunState:
    """Resume from ``last.pt``: check it whole against ``model``, ``optimizer`` and ``config``, then copy
    the adapter tensors into ``model`` and the optimiser state into ``optimizer``.

    Returns:
        where the run stands (its records, best accuracy and epoch).

    Raises:
        ValueError: if the file cannot be read, is not a pointpeft ``last.pt``, or does not fit: a missing
            entry, a saved ``model`` / ``dapt`` config other than ``config``'s (every differing key named,
            saved and now), adapter tensors missing, unexpected, of another shape or dtype or not finite,
            optimiser state of other groups or shapes, malformed epoch records. Nothing is changed then.
    """
    from pointpeft.safe_load import load_torch_file

    refuse = _Refusal(path)
    try:
        state = load_torch_file(path, argument="run.output_dir's last.pt")
    except ValueError as error:  # the message names the file and what is wrong with it
        raise refuse.advise(f"cannot resume: {error}") from None
    if not isinstance(state, dict):
        raise refuse(f"it holds a {type(state).__name__}, not the dict pointpeft writes")
    absent = [
        k
        for k in ("epoch", "best_accuracy", "best_epoch", "adapter", "optimizer", "config")
        if k not in state
    ]
    if absent:
        raise refuse(f"it lacks the entries {absent} (it is not a last.pt written by pointpeft train)")
    _check_config(state["config"], config, refuse)
    targets = adapter_state_dict(model, active_adapter(model))
    _check_adapter(state["adapter"], targets, refuse)
    _check_optimizer(state["optimizer"], optimizer, refuse)
    run_state = _check_progress(state, os.path.join(os.path.dirname(path), METRICS), refuse)
    with torch.no_grad():
        for key, value in state["adapter"].items():
            targets[key].copy_(value)
    _restore_optimizer(optimizer, state["optimizer"])
    return run_state
