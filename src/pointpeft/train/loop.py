"""The reference's fine-tuning protocol: train DAPT, evaluate every epoch, keep the best adapter, resume.

Runs unchanged on one CPU/GPU or under ``torchrun --nproc_per_node=N`` (DistributedDataParallel: gloo on
CPU, NCCL on GPU). Only rank 0 writes files and prints.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from pointpeft.adapter_io import adapter_state_dict
from pointpeft.counting import format_trainable_parameters
from pointpeft.dapt.model import DAPTModel
from pointpeft.train.build import build_datasets, build_model
from pointpeft.train.optim import build_optimizer, learning_rate

LAST_CHECKPOINT = "last.pt"
BEST_ADAPTER = "best"
METRICS = "metrics.jsonl"


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        best_accuracy: best test accuracy (%) over the epochs (the reference's reported number).
        best_epoch: the epoch (0-based) of the best accuracy.
        epochs_run: epochs trained in this call (fewer than configured when resuming).
        output_dir: the folder with ``best/`` (the best adapter), ``last.pt`` and ``metrics.jsonl``.
    """

    best_accuracy: float
    best_epoch: int
    epochs_run: int
    output_dir: str


def _device(name: str) -> torch.device:
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local_rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"this is process {local_rank} on its node but the node has {count} GPU(s): start at most "
                f"{count} processes per node (torchrun --nproc_per_node), or set run.device=cpu"
            )
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _setup_distributed(device: torch.device) -> tuple[int, int, bool]:
    """``(rank, world size, whether this call started the process group)``."""
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


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    points = torch.stack([item[0] for item in batch])
    labels = torch.tensor([int(item[1]) for item in batch], dtype=torch.long)
    return points, labels


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
    device: torch.device,
    *,
    progress: bool = False,
) -> float:
    """Test accuracy (%) of ``model`` on ``dataset``: FPS to ``data.npoints`` points, no augmentation, or
    the reference's 10-view voting when ``run.vote``. Sharded over the ranks when distributed."""
    from pointpeft.data.transforms import sample_test_points, vote_logits

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset
    loader = DataLoader(shard, batch_size=config["optim"]["eval_batch_size"], collate_fn=_collate)
    npoints, bf16 = config["data"]["npoints"], config["run"]["bf16"]
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = torch.zeros((), dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(config["run"]["seed"])
    for points, labels in _progress(loader, progress and rank == 0, desc="test"):
        points, labels = points.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if config["run"]["vote"]:
                point_all = _point_all(config, points.shape[1])
                logits = vote_logits(model, points, npoints, point_all, generator=generator)
            else:
                logits = model(sample_test_points(points, npoints))
        correct += (logits.argmax(-1) == labels).sum()
        total += labels.numel()
    if world > 1:
        dist.all_reduce(correct)
        dist.all_reduce(total)
    model.train(was_training)
    return 100.0 * correct.item() / max(total.item(), 1)


def _atomic_save(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _save_best_adapter(model: DAPTModel, output_dir: str) -> None:
    final, tmp, old = (os.path.join(output_dir, f"{BEST_ADAPTER}{s}") for s in ("", ".tmp", ".old"))
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_adapter(tmp)
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _resume(
    path: str, model: DAPTModel, optimizer: torch.optim.Optimizer, config: dict[str, dict[str, Any]]
) -> tuple[int, float, int]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for section in ("model", "dapt", "data"):
        if state.get("config", {}).get(section) != config[section]:
            warnings.warn(
                f"{path} was written with a different {section!r} config; resuming anyway", stacklevel=3
            )
    targets = adapter_state_dict(model, model.active_adapter)
    missing = sorted(set(targets) - set(state["adapter"]))
    if missing:
        raise ValueError(
            f"{path} does not fit the model: {len(missing)} tensor(s) missing, e.g. {missing[:4]}"
        )
    with torch.no_grad():
        for key, value in state["adapter"].items():
            targets[key].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, state["best_accuracy"], state["best_epoch"]


def train(config: dict[str, dict[str, Any]], *, out: TextIO | None = None) -> TrainResult:
    """Train DAPT as configured (see :mod:`pointpeft.train.config`).

    Each epoch: the learning rate of the epoch (warm-up, then cosine); for each batch, FPS pre-sampling to
    ``point_all`` points and a random ``npoints`` subset, scale-and-translate augmentation, cross-entropy,
    gradient clipping, AdamW; then the test accuracy. Rank 0 writes ``metrics.jsonl`` (one JSON line per
    epoch), the best adapter (``best/``, adapter-only) and ``last.pt`` (atomically, for resuming).

    Raises:
        FloatingPointError: if the loss becomes NaN or infinite (the message says where and what to try).
        ValueError: for a bad config.
    """
    out = out if out is not None else sys.stdout
    run = config["run"]
    if run["threads"] is not None:
        torch.set_num_threads(run["threads"])
    device = _device(run["device"])
    rank, world, started = _setup_distributed(device)
    try:
        return _train(config, out, device, rank, world)
    finally:
        if started:
            # A process group left to the interpreter's shutdown aborts the process now and then ("terminate
            # called without an active exception"): gloo's worker threads still finishing an all-reduce need
            # the GIL while Python finalizes. The DDP wrapper, which holds the group, sits in a reference
            # cycle, so collect it, then tear the group down while Python still runs.
            gc.collect()
            dist.destroy_process_group()


def _train(
    config: dict[str, dict[str, Any]], out: TextIO, device: torch.device, rank: int, world: int
) -> TrainResult:
    run, optim_cfg = config["run"], config["optim"]
    main = rank == 0
    torch.manual_seed(run["seed"])
    train_set, test_set, num_classes = build_datasets(config)
    torch.manual_seed(run["seed"])
    model = build_model(config, num_classes).to(device)
    if optim_cfg["batch_size"] % world or optim_cfg["batch_size"] // world < 2:
        raise ValueError(
            f"optim.batch_size = {optim_cfg['batch_size']} must split into >= 2 clouds on each of {world} processes"
        )
    optimizer = build_optimizer(model, optim_cfg["lr"], optim_cfg["weight_decay"])
    output_dir = run["output_dir"]
    os.makedirs(output_dir, exist_ok=True)
    last_path = os.path.join(output_dir, LAST_CHECKPOINT)
    start_epoch, best_accuracy, best_epoch = 0, -1.0, -1
    if run["resume"] and os.path.isfile(last_path):
        start_epoch, best_accuracy, best_epoch = _resume(last_path, model, optimizer, config)
        if main:
            print(f"resumed from {last_path} at epoch {start_epoch}", file=out)
    trained = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=run["seed"], drop_last=True)
    loader = DataLoader(
        train_set,
        batch_size=optim_cfg["batch_size"] // world,
        sampler=sampler,
        drop_last=True,
        collate_fn=_collate,
    )
    if len(loader) == 0:
        raise ValueError(f"the training set ({len(train_set)} clouds) is smaller than one batch")
    from pointpeft.data.transforms import ScaleAndTranslate, sample_train_points

    augment = ScaleAndTranslate()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if main:
        print(format_trainable_parameters(model), file=out)
    epochs = optim_cfg["epochs"]
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        lr = learning_rate(
            epoch,
            epochs=epochs,
            lr=optim_cfg["lr"],
            min_lr=optim_cfg["min_lr"],
            warmup_epochs=optim_cfg["warmup_epochs"],
            warmup_lr=optim_cfg["warmup_lr"],
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        # Everything random in an epoch (order, sampling, augmentation, dropout) follows from (seed, epoch,
        # rank), so a run resumed from last.pt continues exactly as the uninterrupted run would have.
        epoch_seed = run["seed"] * 100_003 + epoch * 101 + rank
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        trained.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (points, labels) in enumerate(
            _progress(loader, run["progress"] and main, desc=f"epoch {epoch}")
        ):
            points, labels = points.to(device), labels.to(device)
            point_all = _point_all(config, points.shape[1])
            points = sample_train_points(points, config["data"]["npoints"], point_all, generator=generator)
            points = augment(points, generator=generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run["bf16"]):
                logits = trained(points)
            loss = F.cross_entropy(logits.float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss.item()} at epoch {epoch}, step {step} (lr {lr:.3g}); "
                    "lower optim.lr, check the data for non-finite points, or set run.bf16=false"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if optim_cfg["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(trainable, optim_cfg["grad_clip"])
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(-1) == labels).sum())
            seen += len(labels)
        accuracy = evaluate(model, test_set, config, device, progress=run["progress"])
        improved = accuracy > best_accuracy
        if improved:
            best_accuracy, best_epoch = accuracy, epoch
        if main:
            if improved:
                _save_best_adapter(model, output_dir)
            record = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": loss_sum / seen,
                "train_accuracy": 100.0 * correct / seen,
                "test_accuracy": accuracy,
                "best_accuracy": best_accuracy,
                "seconds": time.perf_counter() - started,
            }
            with open(os.path.join(output_dir, METRICS), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            state = {
                "epoch": epoch,
                "best_accuracy": best_accuracy,
                "best_epoch": best_epoch,
                "adapter": {
                    k: v.detach().cpu() for k, v in adapter_state_dict(model, model.active_adapter).items()
                },
                "optimizer": optimizer.state_dict(),
                "config": config,
            }
            _atomic_save(state, last_path)
            print(
                f"epoch {epoch + 1:3d}/{epochs}  lr {lr:.2e}  loss {record['train_loss']:.3f}  "
                f"train {record['train_accuracy']:5.1f}%  test {accuracy:5.1f}%  best {best_accuracy:5.1f}%  "
                f"({record['seconds']:.1f} s)",
                file=out,
            )
    if main and best_epoch >= 0:
        print(f"best test accuracy {best_accuracy:.2f}% at epoch {best_epoch + 1}; adapter in "
              f"{os.path.join(output_dir, BEST_ADAPTER)}", file=out)  # fmt: skip
    return TrainResult(best_accuracy, best_epoch, epochs - start_epoch, output_dir)
