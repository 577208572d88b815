"""The reference's fine-tuning protocol: train DAPT, evaluate every epoch, keep the best adapter, resume.

Runs unchanged on one CPU/GPU or under ``torchrun --nproc_per_node=N`` (DistributedDataParallel: gloo on
CPU, NCCL on GPU). Only rank 0 writes files and prints. Every file is written atomically (write beside,
fsync, rename): after each epoch the best adapter (``best/``, when the epoch improved), then ``last.pt``
(the commit point of the epoch), then ``metrics.jsonl`` rewritten whole from the epoch records kept in
``last.pt`` (:mod:`pointpeft.train.resume`).
"""

from __future__ import annotations

import functools
import gc
import math
import operator
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from pointpeft.adapter_io import save_adapter
from pointpeft.checkpoints import pretrained_load_result
from pointpeft.counting import format_trainable_parameters
from pointpeft.dapt.model import DAPTModel, add_auxiliary_loss, clear_auxiliary_loss
from pointpeft.ops import check_coordinates
from pointpeft.train.build import build_datasets, build_model, data_source
from pointpeft.train.config import DEFAULTS, check_config, load_config
from pointpeft.train.optim import build_optimizer, epoch_learning_rate
from pointpeft.train.resume import (
    BEST_ADAPTER,
    LAST_CHECKPOINT,
    METRICS,
    RunState,
    active_adapter,
    load_checkpoint,
    save_checkpoint,
    write_metrics,
)

__all__ = [
    "BEST_ADAPTER",
    "COMPILE_BACKEND",
    "LAST_CHECKPOINT",
    "METRICS",
    "TrainResult",
    "adapter_run_config",
    "check_labels",
    "compile_mode",
    "compile_wanted",
    "evaluate",
    "evaluate_saved_adapter",
    "resolve_device",
    "train",
]


#: The ``torch.compile`` backend of a compiled training step (``run.compile``): a backend name or a
#: callable backend. Tests on a CPU set it to ``"aot_eager"``.
COMPILE_BACKEND: Any = "inductor"


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        best_accuracy: best test accuracy (%) over the epochs (the reference's reported number).
        best_epoch: the epoch (0-based) of the best accuracy.
        epochs_run: epochs trained in this call (fewer than configured when resuming; 0 when ``last.pt``
            had already reached ``optim.epochs``).
        output_dir: the folder with ``best/`` (the best adapter), ``last.pt`` and ``metrics.jsonl``.
    """

    best_accuracy: float
    best_epoch: int
    epochs_run: int
    output_dir: str


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(name: str, argument: str = "run.device") -> torch.device:
    """The device ``name`` names, checked to exist.

    ``auto`` is the GPU of this process (``cuda:LOCAL_RANK`` under torchrun) when torch sees one, else the
    CPU; ``cuda`` is the GPU of this process; ``cuda:N`` is GPU N; ``cpu`` the CPU.

    Args:
        name: the device's name.
        argument: what the errors call it (``run.device`` for a config; ``device`` for
            :func:`pointpeft.pretrain.pretrain`).

    Raises:
        ValueError: naming ``argument``, if it is none of these forms, or names a GPU that torch does not
            see (no CUDA, or fewer GPUs), or more processes run on the node than it has GPUs.
    """
    from pointpeft.train.config import check_value

    try:
        name = check_value("run", "device", name)
    except (TypeError, ValueError) as error:  # the config's check, its message naming the argument
        raise type(error)(str(error).replace("run.device", argument)) from None
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = _gpu_count()
    if count == 0:
        raise ValueError(
            f"{argument} = {name!r} but torch sees no CUDA GPU (torch.cuda.is_available() is False; this torch "
            f"build's CUDA version: {torch.version.cuda}); use {argument}=cpu or {argument}=auto"
        )
    if ":" in name:
        index = int(name.partition(":")[2])
        if index >= count:
            raise ValueError(
                f"{argument} = {name!r} but torch sees {count} GPU(s) (cuda:0 to cuda:{count - 1}); "
                f"choose one of them, or {argument}=auto"
            )
        return torch.device("cuda", index)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if local_rank >= count:
        raise ValueError(
            f"{argument} = {name!r}: this is process {local_rank} on its node but the node has {count} GPU(s): "
            f"start at most {count} processes per node (torchrun --nproc_per_node), or set {argument}=cpu"
        )
    return torch.device("cuda", local_rank)


def setup_distributed(device: torch.device) -> tuple[int, int, bool]:
    """``(rank, world size, whether this call started the process group)`` of this process: under torchrun
    (``WORLD_SIZE`` > 1) the process group is started (NCCL for a GPU, gloo for the CPU) unless it is already."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), started


def _progress(iterable: Any, enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)


def _collate(batch: list[Any], *, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points (B, P, 3), labels (B,) int64)`` of a list of ``(points (P, 3), label)`` items.

    Raises:
        ValueError: if an item is not a ``(P, 3)`` tensor and a label, or the items' P differ.
        TypeError: if a label is not an integer (a float label would be truncated). Both name ``where``.
    """
    points = [item[0] for item in batch]
    shapes = sorted(
        {tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__ for p in points}, key=str
    )
    if (
        len(shapes) != 1
        or not isinstance(points[0], torch.Tensor)
        or points[0].ndim != 2
        or points[0].shape[1] != 3
    ):
        raise ValueError(
            f"{where}: every item must be (points (P, 3) tensor, label) with one P, got points {shapes}"
        )
    labels = []
    for item in batch:
        try:
            labels.append(operator.index(item[1]))
        except TypeError:
            raise TypeError(f"{where}: labels must be integers, got {item[1]!r}") from None
    return torch.stack(points), torch.tensor(labels, dtype=torch.long)


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Check that every label of ``labels`` (B,) is a class of the model's ``num_classes``-class head.

    Raises:
        ValueError: naming ``where`` and the labels outside ``[0, num_classes)``.
    """
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        found = sorted(set(outside.tolist()))
        raise ValueError(
            f"{where} has label(s) {found[:8]} outside [0, {num_classes}): the model's head has {num_classes} "
            "classes; check the labels of the data, or that the data and the model are for the same classes"
        )


def _point_all(config: dict[str, dict[str, Any]], available: int) -> int:
    from pointpeft.data.transforms import point_all_for

    chosen = config["data"]["point_all"]
    return (
        min(chosen, available) if chosen is not None else point_all_for(config["data"]["npoints"], available)
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    config: dict[str, dict[str, Any]],
    device: torch.device | str,
    *,
    progress: bool = False,
    source: str | None = None,
) -> float:
    """Test accuracy (%) of ``model`` on ``dataset``: FPS to ``data.npoints`` points, no augmentation, or
    the reference's 10-view voting when ``run.vote``. Sharded over the ranks when distributed.

    Args:
        device: where the model is: a ``torch.device``, or a ``run.device`` name (``"cpu"``, ``"cuda:0"``).
        source: how the errors name the data (default: the configured data, ``data.dataset=...``).

    Raises:
        ValueError: if ``dataset`` is empty, or has a label outside the classes of the model's logits
            (B, K), or ``config`` is bad (naming the key). TypeError: for a ``device`` of another type.
    """
    from pointpeft.data.transforms import sample_test_points, vote_logits

    config = check_config(config)
    if isinstance(device, str):
        device = resolve_device(device)
    elif not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device or a name such as 'cpu', got {device!r}")
    where = f"the test set of {data_source(config) if source is None else source}"
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{where} is empty: there is nothing to test on")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset  # type: ignore[arg-type]
    collate = functools.partial(_collate, where=where)
    loader = DataLoader(
        shard,
        batch_size=config["optim"]["eval_batch_size"],
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    npoints, bf16 = config["data"]["npoints"], config["run"]["bf16"]
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = torch.zeros((), dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(config["run"]["seed"])
    for points, labels in _progress(loader, progress and rank == 0, desc="test"):
        points = points.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if config["run"]["vote"]:
                point_all = _point_all(config, points.shape[1])
                logits = vote_logits(model, points, npoints, point_all, generator=generator)
            else:
                logits = model(sample_test_points(points, npoints))
        check_labels(labels, logits.shape[-1], where)
        correct += (logits.argmax(-1) == labels.to(device, non_blocking=True)).sum()
        total += labels.numel()
    if world > 1:
        dist.all_reduce(correct)
        dist.all_reduce(total)
    model.train(was_training)
    return 100.0 * correct.item() / max(total.item(), 1)


def _check_head_fits(model: DAPTModel, num_classes: int, adapter: str, config: dict[str, Any]) -> None:
    head_classes = model.configs[active_adapter(model)].num_classes
    if head_classes != num_classes:
        raise ValueError(
            f"the adapter in {adapter} has a {head_classes}-class head but {data_source(config)} has "
            f"{num_classes} classes: evaluate it on the data it was trained for"
        )


def _config_of_record(record: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` keys (and ``run.seed``) that build the backbone a ``backbone`` entry describes."""
    from pointpeft.train.config import ARCHITECTURE_KEYS

    model: dict[str, Any] = {"args": {}}
    if "factory" in record:
        model.update(backbone=None, factory=record["factory"], args=dict(record["args"]))
    else:
        model["backbone"] = record["builtin"]
        for key, value in record["args"].items():
            if key in ARCHITECTURE_KEYS:
                model[key] = value
            else:
                model["args"][key] = value
    for key in ("pretrained", "layout", "init"):
        if record.get(key) is not None:
            model[key] = record[key]
    config: dict[str, Any] = {"model": model}
    if record.get("seed") is not None:
        config["run"] = {"seed": record["seed"]}
    return config


def adapter_run_config(
    adapter: str | os.PathLike[str], overrides: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """The config to evaluate the adapter in the folder ``adapter`` with: the backbone (``model`` keys,
    ``run.seed``) and the data settings recorded in the folder (its ``backbone`` and ``data`` entries),
    the defaults for the rest, then ``overrides`` (``section.key=value``, e.g. ``data.root=/data``).
    This is what ``pointpeft eval --adapter DIR`` uses without ``--config``.

    Raises:
        FileNotFoundError / ValueError: for a missing or malformed adapter folder, or one trained on
            datasets given in Python when ``overrides`` name no ``data.dataset``; ValueError / TypeError
            for a bad override (naming it).
    """
    from pointpeft.dapt.adapter_files import read_adapter

    try:
        file = read_adapter(adapter)
    except FileNotFoundError:
        # No folder to read: the overrides are checked alone (a bad key is the first error), and loading
        # the adapter then says which file is missing.
        return load_config(None, overrides)
    base: dict[str, Any] = {}
    record = file.config.get("backbone")
    if isinstance(record, dict):
        base = _config_of_record(record)
    data = file.config.get("data")
    if isinstance(data, dict):
        if data.get("dataset") is None and not any(o.strip().startswith("data.dataset=") for o in overrides):
            raise ValueError(
                f"{file.config_source} was trained on datasets given to pointpeft.train.train(datasets=...), "
                "which it cannot name: evaluate it in Python, or name the data with data.dataset=... "
                "(and data.root=...)"
            )
        # num_classes is the dataset's (recorded to be read); the head's check compares it with the data.
        base["data"] = {
            k: v for k, v in data.items() if k in DEFAULTS["data"] and k != "num_classes" and v is not None
        }
        if data.get("seed") is not None:
            base.setdefault("run", {})["seed"] = data["seed"]
    return load_config(None, overrides, base=base, base_source=file.config_source)


def evaluate_saved_adapter(
    config: dict[str, dict[str, Any]], adapter: str | os.PathLike[str]
) -> tuple[float, int]:
    """Test accuracy (%) of the adapter saved in the folder ``adapter`` on the configured test set, with
    the configured backbone; and the number of test clouds. This is ``pointpeft eval`` (which takes the
    config from the folder without ``--config``: :func:`adapter_run_config`).

    Raises:
        FileNotFoundError / ValueError: for a missing or malformed adapter, one that does not fit the
            backbone, whose head has another number of classes than the data, or whose recorded frozen
            weights differ from the configured backbone's; ValueError / TypeError for a bad config
            (naming the key).
    """
    from pointpeft.adapter_io import check_recorded_weights, load_adapter
    from pointpeft.dapt.adapter_files import read_adapter
    from pointpeft.train.build import build_backbone

    config = check_config(config)
    if config["run"]["threads"] is not None:
        torch.set_num_threads(config["run"]["threads"])
    device = resolve_device(config["run"]["device"])
    _, test_set, num_classes = build_datasets(config)
    model = load_adapter(build_backbone(config), adapter)
    check_recorded_weights(model, read_adapter(adapter))
    _check_head_fits(model, num_classes, os.fspath(adapter), config)
    accuracy = evaluate(model.to(device), test_set, config, device, progress=config["run"]["progress"])
    return accuracy, len(test_set)  # type: ignore[arg-type]


def _prepare_output_dir(directory: str) -> None:
    """Create ``run.output_dir`` and check that the run's files can be written there, before training."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            f"run.output_dir = {directory!r} is a file, not a folder; choose another run.output_dir"
        )
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"run.output_dir = {directory!r} cannot be created ({error.strerror or error}); choose another one"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"run.output_dir = {directory!r} is not writable; choose another run.output_dir")
    for name, folder in ((LAST_CHECKPOINT, False), (METRICS, False), (BEST_ADAPTER, True)):
        path = os.path.join(directory, name)
        if os.path.exists(path) and os.path.isdir(path) != folder:
            raise ValueError(
                f"{path} is a {'folder' if not folder else 'file'}, but the run writes its {name} "
                f"{'folder' if folder else 'file'} there; move it away or choose another run.output_dir"
            )


def train(
    config: dict[str, dict[str, Any]],
    *,
    model: nn.Module | None = None,
    datasets: tuple[Dataset, Dataset] | None = None,
    out: TextIO | None = None,
) -> TrainResult:
    """Train DAPT as configured (see :mod:`pointpeft.train.config`), on the configured backbone and data or
    on those given.

    Each epoch: the learning rate of the epoch (warm-up, then cosine); for each batch, FPS pre-sampling to
    ``point_all`` points and a random ``npoints`` subset, the augmentation of ``data.augment``
    (scale-and-translate by default), cross-entropy, gradient clipping, AdamW; then the test accuracy. Rank 0 writes, atomically, the best adapter
    (``best/``, adapter-only), ``last.pt`` (for resuming) and ``metrics.jsonl`` (one JSON line per epoch,
    rewritten whole from the records in ``last.pt``, so that a resumed run's log reads as one run).

    With ``run.resume`` and a ``last.pt`` in ``run.output_dir``, training continues after its last
    epoch; ``last.pt`` is checked whole against the model and config first.

    With ``run.compile`` (``auto``: on a GPU) the model's forward, loss and backward run through
    ``torch.compile`` with static shapes (the model itself, and so its saved names, unchanged). Every epoch
    record has a ``time`` entry (:data:`~pointpeft.train.resume.TIME_KEYS`): seconds waiting for and
    preparing batches, in the steps, evaluating, writing the previous epoch's files, and the whole epoch.

    Args:
        config: the training config (a mapping of sections; keys left out take their default).
        model: the model to train instead of the configured backbone (the ``model`` section's backbone
            keys are then unused): a plain backbone (an ``nn.Module`` taking ``points (B, N, 3)``), which
            is wrapped with DAPT as configured (``dapt`` section, ``model.layout``, ``run.execution``), or a
            :class:`~pointpeft.DAPTModel`, trained as it is (its active adapter).
        datasets: ``(train, test)`` torch Datasets to use instead of the configured data, with items
            ``(points (P, 3) tensor, integer label)``; ``data.npoints`` and ``data.point_all`` still apply.
            The number of classes is ``data.num_classes`` when set, else the given DAPTModel's head's,
            else the largest label in the two sets plus one (printed, with where it came from).
        out: where progress lines are printed (default: standard output).

    Raises:
        FloatingPointError: if the loss becomes NaN or infinite (the message says where and what to try).
        ValueError / TypeError: for a bad config (naming the key), a missing GPU, empty data, labels
            outside the classes, a ``run.output_dir`` that cannot be written, or a ``last.pt`` that
            cannot be resumed (naming it, what differs, and how to start afresh).
    """
    config = check_config(config)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module backbone or a pointpeft.DAPTModel (or None: the configured "
            f"backbone), got {type(model).__name__}"
        )
    if datasets is not None:
        _check_datasets(datasets)
    out = out if out is not None else sys.stdout
    run = config["run"]
    if run["threads"] is not None:
        torch.set_num_threads(run["threads"])
    device = resolve_device(run["device"])
    rank, world, started = setup_distributed(device)
    try:
        return _train(config, out, device, rank, world, model, datasets)
    finally:
        if started:
            # A process group left to the interpreter's shutdown aborts the process now and then ("terminate
            # called without an active exception"): gloo's worker threads still finishing an all-reduce need
            # the GIL while Python finalizes. The DDP wrapper, which holds the group, sits in a reference
            # cycle, so collect it, then tear the group down while Python still runs.
            gc.collect()
            dist.destroy_process_group()


@dataclass
class _Run:
    """What every epoch of one training run uses."""

    config: dict[str, dict[str, Any]]
    model: DAPTModel
    trained: nn.Module  # the model, or its DistributedDataParallel wrapper; either compiled (run.compile)
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    sampler: DistributedSampler[Any]
    num_classes: int
    device: torch.device
    rank: int
    data_entry: dict[str, Any]  # the adapter folders' "data" entry
    source: str  # how errors name the data
    out: TextIO
    tested: nn.Module | None = None  # what evaluates (the model, or it compiled); None: the model
    eager: nn.Module | None = None  # with run.compile=auto: ``trained`` uncompiled, to fall back on
    # With run.compile=auto, the compiled calls not yet made once ("train", "test"): a compiler error on
    # the first of each falls back to the eager module (printed) instead of ending the run.
    unproven: set[str] = field(default_factory=set)


def _check_datasets(datasets: Any) -> None:
    if not isinstance(datasets, (tuple, list)) or len(datasets) != 2:
        raise TypeError(
            f"datasets must be a (train, test) pair of torch Datasets, got {type(datasets).__name__}"
            + (f" of {len(datasets)}" if isinstance(datasets, (tuple, list)) else "")
        )
    for split, dataset in zip(("train", "test"), datasets, strict=True):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(
                f"datasets: the {split} set must be a torch Dataset with __getitem__ and __len__, got "
                f"{type(dataset).__name__}"
            )
        if len(dataset) == 0:
            raise ValueError(f"datasets: the {split} set is empty")


def _largest_label(dataset: Dataset, split: str) -> int:
    largest = -1
    for index in range(len(dataset)):  # type: ignore[arg-type]
        label = dataset[index][1]
        try:
            value = operator.index(label)
        except TypeError:
            raise TypeError(
                f"datasets: the {split} set's labels must be integers, got {label!r} (item {index})"
            ) from None
        if value < 0:
            raise ValueError(f"datasets: the {split} set has a negative label {value} (item {index})")
        largest = max(largest, value)
    return largest


def _given_classes(
    config: dict[str, dict[str, Any]], datasets: tuple[Dataset, Dataset], model: nn.Module | None
) -> tuple[int, str]:
    """``(num_classes, where it came from)`` for datasets given to :func:`train`."""
    chosen = config["data"]["num_classes"]
    if chosen is not None:
        return chosen, "data.num_classes"
    if isinstance(model, DAPTModel):
        return model.configs[active_adapter(model)].num_classes, "the given DAPTModel's head"
    largest = max(_largest_label(d, s) for d, s in zip(datasets, ("train", "test"), strict=True))
    if largest < 1:
        raise ValueError(
            "datasets: every label is 0, so the number of classes cannot be inferred: set data.num_classes"
        )
    return largest + 1, "inferred: the largest label of the given datasets plus one"


def _model_to_train(
    config: dict[str, dict[str, Any]], model: nn.Module | None, num_classes: int
) -> DAPTModel:
    if model is None:
        return build_model(config, num_classes)
    if isinstance(model, DAPTModel):
        head = model.configs[active_adapter(model)].num_classes
        if head != num_classes:
            raise ValueError(
                f"model: the given DAPTModel's head has {head} classes but the data has {num_classes}: give a "
                "model whose head fits the data (or set data.num_classes)"
            )
        return model
    return build_model(config, num_classes, backbone=model)


def _train_loader(
    train_set: Dataset,
    config: dict[str, dict[str, Any]],
    rank: int,
    world: int,
    source: str,
    device: torch.device,
) -> tuple[DataLoader, DistributedSampler[Any]]:
    batch_size, seed = config["optim"]["batch_size"], config["run"]["seed"]
    if batch_size % world or batch_size // world < 2:
        raise ValueError(
            f"optim.batch_size = {batch_size} must split into >= 2 clouds on each of {world} processes"
        )
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, world, rank, shuffle=True, seed=seed, drop_last=True
    )
    where = f"the training set of {source}"
    loader = DataLoader(
        train_set,
        batch_size=batch_size // world,
        sampler=sampler,
        drop_last=True,  # every batch has one shape: a compiled step never recompiles for a last, smaller one
        collate_fn=functools.partial(_collate, where=where),
        pin_memory=device.type == "cuda",  # then the host-to-device copies need not wait for the GPU
    )
    if len(loader) == 0:
        raise ValueError(
            f"{where} has {len(train_set)} clouds, fewer than one batch "  # type: ignore[arg-type]
            f"(optim.batch_size = {batch_size}): lower optim.batch_size or use more data"
        )
    return loader, sampler


def _epoch_lr(epoch: int, optim_cfg: dict[str, Any]) -> float:
    return epoch_learning_rate(
        epoch,
        epochs=optim_cfg["epochs"],
        lr=optim_cfg["lr"],
        min_lr=optim_cfg["min_lr"],
        warmup_epochs=optim_cfg["warmup_epochs"],
        warmup_lr=optim_cfg["warmup_lr"],
    )


def _pretrained_line(config: dict[str, dict[str, Any]], model: DAPTModel, built: bool) -> str:
    """What the run's backbone was loaded with: the checkpoint and what of it was read, missing and ignored
    (:meth:`~pointpeft.PretrainedLoadResult.summary`), or that it keeps its initialisation; empty for a
    backbone given to :func:`train` that no checkpoint was loaded into."""
    result = pretrained_load_result(model)
    path = config["model"]["pretrained"]
    if result is not None:
        return f"pre-trained weights: {path if built else 'loaded'}: {result.summary()}"
    if built:
        return "pre-trained weights: none (model.pretrained is null): the backbone keeps its initialisation"
    return ""


@dataclass
class _EpochTimes:
    """Seconds of one epoch's training pass: waiting for and preparing batches, and the steps."""

    data_s: float = 0.0
    step_s: float = 0.0


def _loss_error(loss: float, epoch: int, step: int, lr: float) -> FloatingPointError:
    return FloatingPointError(
        f"the training loss became {loss} at epoch {epoch}, step {step} (lr {lr:.3g}); "
        "lower optim.lr, check the data for non-finite points, or set run.bf16=false"
    )


def _forward_backward(
    trained: nn.Module, ctx: _Run, points: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss (), logits (B, K))`` of ``trained`` on ``points`` (B, npoints, 3), its gradients computed.

    The loss is the cross-entropy plus the auxiliary loss that the model's active adapter made in this
    forward (:attr:`pointpeft.DAPTModel.auxiliary_loss`, PointLoRA's weighted mask loss), where it made one."""
    clear_auxiliary_loss(ctx.model)
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.config["run"]["bf16"]):
        logits = trained(points)
    loss = add_auxiliary_loss(ctx.model, F.cross_entropy(logits.float(), labels))
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss, logits


def _fallback_note(what: str, error: Exception) -> str:
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return (
        f"torch.compile failed on the first {what} ({type(error).__name__}: {first}); running it uncompiled"
    )


def _step(ctx: _Run, points: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_forward_backward` with ``ctx.trained``; with ``run.compile=auto``, a failure of the first
    compiled step switches to the eager module (an error of the step itself then raises from it)."""
    if "train" not in ctx.unproven or ctx.eager is None:
        return _forward_backward(ctx.trained, ctx, points, labels)
    try:
        result = _forward_backward(ctx.trained, ctx, points, labels)
    except Exception as error:  # any compiler failure; the eager retry raises real errors
        result = _forward_backward(ctx.eager, ctx, points, labels)
        ctx.trained = ctx.eager
        if ctx.rank == 0:
            print(_fallback_note("training step", error), file=ctx.out)
    ctx.unproven.discard("train")
    return result


def training_augmentation(name: str) -> Callable[..., torch.Tensor] | None:
    """The transform of ``data.augment``: ``"scale_translate"`` (DAPT's recipe,
    :class:`~pointpeft.data.ScaleAndTranslate`), ``"rotate_y"`` (IDPT's and VPT's released recipe on
    ScanObjectNN, :class:`~pointpeft.data.RotateAboutY`) or ``"none"`` (None)."""
    from pointpeft.data.transforms import RotateAboutY, ScaleAndTranslate

    if name == "scale_translate":
        return ScaleAndTranslate()
    if name == "rotate_y":
        return RotateAboutY()
    if name == "none":
        return None
    raise ValueError(f"data.augment must be one of 'scale_translate', 'rotate_y', 'none', got {name!r}")


def _train_epoch(ctx: _Run, epoch: int, lr: float, times: _EpochTimes) -> tuple[float, float]:
    """One pass over the training set at learning rate ``lr``: ``(mean loss, accuracy %)``; its time
    is added to ``times``.

    On a GPU the loop's own code does not wait for the GPU (pinned batches, non-blocking copies, losses
    kept on the device; the points are checked on the batch's CPU copy, so the FPS reads nothing back):
    the losses are checked for NaN at the end of the epoch, which then names the first bad step. On a CPU
    each step's loss is checked at once.
    """
    from pointpeft.data.transforms import sample_train_points

    config, device = ctx.config, ctx.device
    run, optim_cfg = config["run"], config["optim"]
    check_at_once = device.type != "cuda"
    for group in ctx.optimizer.param_groups:
        group["lr"] = lr
    ctx.sampler.set_epoch(epoch)
    # Everything random in an epoch (order, sampling, augmentation, dropout) follows from (seed, epoch,
    # rank), so a run resumed from last.pt continues exactly as the uninterrupted run would have.
    epoch_seed = run["seed"] * 100_003 + epoch * 101 + ctx.rank
    torch.manual_seed(epoch_seed)
    generator = torch.Generator().manual_seed(epoch_seed)
    augment = training_augmentation(config["data"]["augment"])
    trainable = [p for p in ctx.model.parameters() if p.requires_grad]
    where = f"the training set of {ctx.source}"
    ctx.trained.train()
    losses: list[torch.Tensor] = []
    corrects: list[torch.Tensor] = []
    sizes: list[int] = []
    batches = _progress(ctx.loader, run["progress"] and ctx.rank == 0, desc=f"epoch {epoch}")
    mark = time.perf_counter()
    for step, (points, labels) in enumerate(batches):
        check_labels(labels, ctx.num_classes, where)
        # The resampling's input check, made here on the batch's CPU copy: on a GPU the FPS then reads
        # nothing back, and the host prepares the next batch while the GPU still runs this step.
        check_coordinates(points, f"the points of a batch of {where}")
        points = points.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        point_all = _point_all(config, points.shape[1])
        points = sample_train_points(
            points, config["data"]["npoints"], point_all, generator=generator, check_values=False
        )
        if augment is not None:
            points = augment(points, generator=generator)
        now = time.perf_counter()
        times.data_s += now - mark
        mark = now
        loss, logits = _step(ctx, points, labels)
        if check_at_once and not torch.isfinite(loss):
            raise _loss_error(loss.item(), epoch, step, lr)
        if optim_cfg["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(trainable, optim_cfg["grad_clip"])
        ctx.optimizer.step()
        losses.append(loss.detach())
        corrects.append((logits.argmax(-1) == labels).sum())
        sizes.append(len(labels))
        now = time.perf_counter()
        times.step_s += now - mark
        mark = now
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # what the GPU still had queued is step time
        times.step_s += time.perf_counter() - mark
    values = torch.stack(losses).tolist()
    for step, value in enumerate(values):
        if not math.isfinite(value):
            raise _loss_error(value, epoch, step, lr)
    loss_sum = 0.0
    for value, size in zip(values, sizes, strict=True):
        loss_sum += value * size
    correct, seen = int(torch.stack(corrects).sum()), sum(sizes)
    return loss_sum / seen, 100.0 * correct / seen


def _test(ctx: _Run, test_set: Dataset) -> float:
    """The test accuracy with ``ctx.tested``; with ``run.compile=auto``, a failure of the first compiled
    evaluation evaluates with the eager model (an error of the evaluation itself then raises from it)."""
    run = ctx.config["run"]
    tested = ctx.tested if ctx.tested is not None else ctx.model

    def run_test(module: nn.Module) -> float:
        return evaluate(module, test_set, ctx.config, ctx.device, progress=run["progress"], source=ctx.source)

    if "test" not in ctx.unproven:
        return run_test(tested)
    try:
        accuracy = run_test(tested)
    except Exception as error:  # any compiler failure; the eager retry raises real errors
        accuracy = run_test(ctx.model)
        ctx.tested = ctx.model
        if ctx.rank == 0:
            print(_fallback_note("evaluation", error), file=ctx.out)
    ctx.unproven.discard("test")
    return accuracy


def compile_wanted(setting: bool | str, device: torch.device) -> bool:
    """Whether ``run.compile = setting`` compiles the training step on ``device``: ``True`` always,
    ``False`` never, ``"auto"`` on a CUDA device only."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def _set_up_compile(ctx: _Run, world: int) -> str:
    """Compile ``ctx.trained`` (and the model for evaluation) as ``run.compile`` says on this device;
    the line saying whether the step is compiled.

    ``torch.compile`` wraps the model (or its DDP wrapper) with static shapes; ``ctx.model`` itself is
    unchanged, so the adapters, ``last.pt`` and the optimiser see the model's own parameter names.
    """
    setting, device = ctx.config["run"]["compile"], ctx.device
    shown = str(setting).lower()
    if not compile_wanted(setting, device):
        why = "" if setting is False else f" compiles on a GPU only, this is {device}"
        return f"training step: eager (run.compile={shown}{why})"
    if setting == "auto":
        ctx.eager = ctx.trained
        ctx.unproven = {"train", "test"}
    mode = compile_mode(ctx.config["run"]["compile_mode"], device, world)
    ctx.trained = _compiled(ctx.trained, mode)
    ctx.tested = ctx.trained if world == 1 else _compiled(ctx.model, mode)
    backend = getattr(COMPILE_BACKEND, "__name__", COMPILE_BACKEND)
    return (
        f"training step: compiled (torch.compile, backend {backend!r}, mode {mode!r}; "
        f"run.compile={shown} on {device})"
    )


def compile_mode(setting: str, device: torch.device, world: int) -> str:
    """The ``torch.compile`` mode of ``run.compile_mode = setting``: ``"reduce-overhead"`` (the compiled
    forward and backward replayed as CUDA graphs) only on a GPU, in a single process, with the inductor
    backend; ``"default"`` otherwise (a distributed step's gradient all-reduce stays outside graphs)."""
    graphs = setting == "reduce-overhead" and device.type == "cuda" and world == 1
    return "reduce-overhead" if graphs and COMPILE_BACKEND == "inductor" else "default"


def _compiled(module: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(module)`` with :data:`COMPILE_BACKEND`, ``mode`` and static shapes (every training
    batch has one shape; an evaluation's last, smaller batch compiles once more, then is cached)."""
    if mode == "default":
        return cast(nn.Module, torch.compile(module, backend=COMPILE_BACKEND, dynamic=False))
    return cast(nn.Module, torch.compile(module, backend=COMPILE_BACKEND, mode=mode, dynamic=False))


def _progress_line(record: dict[str, Any], epochs: int) -> str:
    """The line printed after an epoch: its numbers, then where its time went (``time``)."""
    t = record["time"]
    return (
        f"epoch {record['epoch'] + 1:3d}/{epochs}  lr {record['lr']:.2e}  loss {record['train_loss']:.3f}  "
        f"train {record['train_accuracy']:5.1f}%  test {record['test_accuracy']:5.1f}%  "
        f"best {record['best_accuracy']:5.1f}%  ({t['epoch_s']:.1f} s: data {t['data_s']:.1f} "
        f"step {t['step_s']:.1f} eval {t['eval_s']:.1f} save {t['save_s']:.1f})"
    )


def _save_epoch(ctx: _Run, state: RunState, improved: bool) -> None:
    """The files of a finished epoch, each atomic, in the order that keeps them consistent after a kill
    at any point: the best adapter, then ``last.pt`` (the commit point), then ``metrics.jsonl``."""
    output_dir = ctx.config["run"]["output_dir"]
    if improved:
        save_adapter(ctx.model, os.path.join(output_dir, BEST_ADAPTER), data=ctx.data_entry)
    save_checkpoint(os.path.join(output_dir, LAST_CHECKPOINT), ctx.model, ctx.optimizer, ctx.config, state)
    write_metrics(os.path.join(output_dir, METRICS), state.records)


def _start(ctx: _Run, out: TextIO) -> RunState:
    """A fresh :class:`RunState`, or the one of ``last.pt`` when resuming (its log rewritten from it)."""
    run = ctx.config["run"]
    last_path = os.path.join(run["output_dir"], LAST_CHECKPOINT)
    if not (run["resume"] and os.path.isfile(last_path)):
        return RunState()
    state = load_checkpoint(last_path, ctx.model, ctx.optimizer, ctx.config)
    if ctx.rank == 0:
        write_metrics(os.path.join(run["output_dir"], METRICS), state.records)
        print(f"resumed from {last_path} at epoch {state.next_epoch}", file=out)
        epochs = ctx.config["optim"]["epochs"]
        if state.next_epoch >= epochs:
            print(
                f"{last_path} has already finished {state.next_epoch} epoch(s), optim.epochs = {epochs}: "
                "nothing to train (raise optim.epochs to train on)",
                file=out,
            )
    return state


def _train(
    config: dict[str, dict[str, Any]],
    out: TextIO,
    device: torch.device,
    rank: int,
    world: int,
    given_model: nn.Module | None,
    datasets: tuple[Dataset, Dataset] | None,
) -> TrainResult:
    run, optim_cfg = config["run"], config["optim"]
    main = rank == 0
    torch.manual_seed(run["seed"])
    data_entry = {**config["data"], "seed": run["seed"]}
    if datasets is None:
        train_set, test_set, num_classes = build_datasets(config)
        source = data_source(config)
    else:
        (train_set, test_set), source = datasets, "the given datasets"
        num_classes, how = _given_classes(config, datasets, given_model)
        data_entry["dataset"] = None  # not one pointpeft can name
        if main:
            print(f"num_classes {num_classes} ({how})", file=out)
    data_entry["num_classes"] = num_classes
    torch.manual_seed(run["seed"])
    model = _model_to_train(config, given_model, num_classes).to(device)
    loader, sampler = _train_loader(train_set, config, rank, world, source, device)
    optimizer = build_optimizer(model, optim_cfg["lr"], optim_cfg["weight_decay"])
    _prepare_output_dir(run["output_dir"])
    ctx = _Run(
        config, model, model, optimizer, loader, sampler, num_classes, device, rank, data_entry, source, out
    )
    state = _start(ctx, out)
    if world > 1:
        ctx.trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    compiled = _set_up_compile(ctx, world)
    if main:
        line = _pretrained_line(config, model, given_model is None)
        if line:
            print(line, file=out)
        print(format_trainable_parameters(model), file=out)
        print(compiled, file=out)
    epochs, start_epoch = optim_cfg["epochs"], state.next_epoch
    save_s = 0.0  # the previous epoch's writes, counted in this epoch's time
    window = time.perf_counter()  # where this epoch's time starts: the previous epoch's writes
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        lr = _epoch_lr(epoch, optim_cfg)
        times = _EpochTimes()
        train_loss, train_accuracy = _train_epoch(ctx, epoch, lr, times)
        tested = time.perf_counter()
        accuracy = _test(ctx, test_set)
        finished = time.perf_counter()
        improved = accuracy > state.best_accuracy
        if improved:
            state.best_accuracy, state.best_epoch = accuracy, epoch
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "test_accuracy": accuracy,
            "best_accuracy": state.best_accuracy,
            "seconds": finished - started,
            "time": {
                "data_s": times.data_s,
                "step_s": times.step_s,
                "eval_s": finished - tested,
                "save_s": save_s,
                "epoch_s": finished - window,
            },
        }
        state.records.append(record)
        window = time.perf_counter()
        if main:
            _save_epoch(ctx, state, improved)
            print(_progress_line(record, epochs), file=out)
        save_s = time.perf_counter() - window
    if main and state.best_epoch >= 0:
        print(f"best test accuracy {state.best_accuracy:.2f}% at epoch {state.best_epoch + 1}; adapter in "
              f"{os.path.join(run['output_dir'], BEST_ADAPTER)}", file=out)  # fmt: skip
    return TrainResult(state.best_accuracy, state.best_epoch, max(0, epochs - start_epoch), run["output_dir"])
