"""``pointpeft.pretrain.pretrain``: Point-MAE pre-training with the released recipe, resumable, writing
checkpoints in the released layout."""

from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pointpeft.atomic_write import atomic_torch_save
from pointpeft.backbones import PointMAE
from pointpeft.checks import check_positive_int, check_type
from pointpeft.data import ScaleAndTranslate, SyntheticShapes, sample_test_points
from pointpeft.pretrain.model import FINE_TUNING_ONLY, PointMAEPretrainer
from pointpeft.safe_load import load_torch_file
from pointpeft.train.loop import resolve_device, setup_distributed
from pointpeft.train.optim import build_optimizer, epoch_learning_rate

#: The released recipe (Point-MAE's ``cfgs/pretrain.yaml``): AdamW, cosine with warm-up, batch 128.
RECIPE: dict[str, Any] = {
    "epochs": 300,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 10,
    "min_lr": 1e-6,
    "warmup_lr": 1e-6,
    "npoints": 1024,
}
CHECKPOINT = "pretrain.pth"
RESUME = "last.pt"


@dataclass
class PretrainResult:
    """What :func:`pretrain` did.

    Attributes:
        losses: the mean training loss (Chamfer-L2) of each epoch, from the first (resumed runs included).
        checkpoint: the released-layout checkpoint (``{"base_model": ..., "epoch": ...}``) that
            :func:`pointpeft.load_pretrained` reads.
        epochs_run: the epochs this call trained (0 when the run had finished already).
    """

    losses: list[float]
    checkpoint: str
    epochs_run: int


def _clouds(points: torch.Tensor, npoints: int) -> torch.Tensor:
    """``npoints`` points of each cloud by FPS (all of them when the clouds have exactly that many)."""
    return points if points.shape[1] == npoints else sample_test_points(points, npoints)


def pretrain(
    output_dir: str | os.PathLike[str],
    *,
    backbone: PointMAE | None = None,
    dataset: Dataset[Any] | None = None,
    epochs: int = RECIPE["epochs"],
    batch_size: int = RECIPE["batch_size"],
    lr: float = RECIPE["lr"],
    weight_decay: float = RECIPE["weight_decay"],
    warmup_epochs: int = RECIPE["warmup_epochs"],
    min_lr: float = RECIPE["min_lr"],
    warmup_lr: float = RECIPE["warmup_lr"],
    npoints: int = RECIPE["npoints"],
    mask_ratio: float = 0.6,
    decoder_depth: int = 4,
    decoder_num_heads: int = 6,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    out: TextIO | None = None,
) -> PretrainResult:
    """Pre-train ``backbone`` as Point-MAE does and write ``output_dir/pretrain.pth``.

    Each epoch: the clouds in a seeded random order, in batches of ``batch_size`` (the last partial batch
    dropped, as the released loader), each cloud reduced to ``npoints`` points by farthest point sampling,
    scaled and translated at random (the released ``PointcloudScaleAndTranslate``), then one AdamW step on
    :class:`~pointpeft.pretrain.PointMAEPretrainer`'s loss. The rate of each epoch is
    :func:`pointpeft.train.epoch_learning_rate` (the released loop's). After every epoch two files are
    written atomically: ``pretrain.pth`` in the released layout and ``last.pt`` (model, optimizer, losses,
    settings), from which a later call with the same ``output_dir`` and settings continues; a process killed
    mid-epoch loses that epoch only. Each epoch draws its order, masks and augmentation from its own seed, so
    a resumed run trains as the uninterrupted one would have.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in ``DistributedDataParallel``: each process
    takes ``batch_size / world`` clouds of every batch (a :class:`~torch.utils.data.DistributedSampler`
    shard), the logged loss is the mean over all processes, and only rank 0 writes files.

    Args:
        output_dir: the run's folder (made if missing).
        backbone: the encoder to train (default: ``PointMAE(num_group=64, group_size=32,
            drop_path_rate=0.1)``, the released pre-training's).
        dataset: items ``(points (P, 3), label)`` with ``P >= npoints`` (labels are not used; default:
            ``SyntheticShapes(1000, npoints)``).
        epochs, batch_size, lr, weight_decay, warmup_epochs, min_lr, warmup_lr, npoints: the recipe (the
            released values by default, :data:`RECIPE`).
        mask_ratio: the share of patches masked (released: 0.6).
        decoder_depth, decoder_num_heads: the decoder's blocks and heads (released: 4 and 6).
        seed: seeds the order, the masks, the augmentation and a default backbone's weights.
        device: where to train: ``cpu``, ``cuda`` (this process's GPU, ``cuda:LOCAL_RANK`` under torchrun),
            ``cuda:N`` or ``auto``.
        progress: a progress bar over each epoch's batches (tqdm, on stderr).
        out: where the per-epoch lines go (default: stdout).

    Returns:
        a :class:`PretrainResult`.

    Raises:
        TypeError / ValueError: for bad arguments (naming them), a dataset smaller than one batch or whose
            clouds have fewer than ``npoints`` points, or a ``last.pt`` of other settings (``epochs`` may
            grow: the run continues to the new count).
    """
    out = sys.stdout if out is None else out
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("npoints", npoints)):
        check_positive_int(name, value)
    # "cuda" is this process's GPU (cuda:LOCAL_RANK under torchrun), as pointpeft train's run.device
    device = resolve_device(str(device), "device")
    torch.manual_seed(seed)
    if backbone is None:
        backbone = PointMAE(num_group=64, group_size=32, drop_path_rate=0.1)
    check_type("backbone", backbone, PointMAE, "a pointpeft.backbones.PointMAE")
    if dataset is None:
        dataset = SyntheticShapes(1000, npoints, seed=seed, cache=True)
    size = len(dataset)  # type: ignore[arg-type]
    if size < batch_size:
        raise ValueError(f"dataset has {size} clouds, fewer than one batch (batch_size={batch_size})")
    rank, world, started = setup_distributed(device)
    # not used by pre-training: frozen while it runs (so that DDP sees every trained parameter used), then
    # given back as they were
    unused = [getattr(backbone, name) for name in FINE_TUNING_ONLY]
    flags = [p.requires_grad for p in unused]
    try:
        for p in unused:
            p.requires_grad_(False)
        return _pretrain(
            output_dir, backbone, dataset, size, out, device, rank, world, progress,
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            warmup_epochs=warmup_epochs, min_lr=min_lr, warmup_lr=warmup_lr, npoints=npoints,
            mask_ratio=mask_ratio, decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads, seed=seed,
        )  # fmt: skip
    finally:
        for p, flag in zip(unused, flags, strict=True):
            p.requires_grad_(flag)
        if started:
            gc.collect()  # the DDP wrapper sits in a reference cycle: free it before the group goes
            dist.destroy_process_group()


def _pretrain(
    output_dir: str | os.PathLike[str],
    backbone: PointMAE,
    dataset: Dataset[Any],
    size: int,
    out: TextIO,
    device: torch.device,
    rank: int,
    world: int,
    progress: bool,
    **settings: Any,
) -> PretrainResult:
    epochs, batch_size, npoints, seed = (settings[k] for k in ("epochs", "batch_size", "npoints", "seed"))
    if batch_size % world:
        raise ValueError(f"batch_size ({batch_size}) must split evenly over the {world} processes")
    model = PointMAEPretrainer(
        backbone,
        mask_ratio=settings["mask_ratio"],
        decoder_depth=settings["decoder_depth"],
        decoder_num_heads=settings["decoder_num_heads"],
    ).to(device)
    optimizer = build_optimizer(model, settings["lr"], settings["weight_decay"])
    settings = {**settings, "clouds": size}
    main = rank == 0
    os.makedirs(output_dir, exist_ok=True)
    resume_path = os.path.join(output_dir, RESUME)
    losses: list[float] = []
    start = 0
    if os.path.exists(resume_path):
        state = load_torch_file(resume_path, argument=f"output_dir's {RESUME}")
        saved = state["settings"]
        # a larger epochs continues the run (as pointpeft train's optim.epochs); the rest must agree
        changed = {k: (saved.get(k), v) for k, v in settings.items() if k != "epochs" and saved.get(k) != v}
        if changed:
            raise ValueError(
                f"{resume_path} was written by a run of other settings (saved, now): {changed}; use another "
                "output_dir, or the saved settings to continue it"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        losses, start = list(state["losses"]), len(state["losses"])
        if main:
            print(f"resumed from {resume_path} at epoch {start}", file=out)
    trained: nn.Module = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    augment = ScaleAndTranslate()
    checkpoint = os.path.join(output_dir, CHECKPOINT)
    if start == 0 and main:
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"pre-training Point-MAE: {count:,d} parameters, {size} clouds, {epochs} epochs", file=out)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, world, rank, shuffle=True, seed=seed, drop_last=True
    )
    loader = DataLoader(dataset, batch_size=batch_size // world, sampler=sampler, drop_last=True)
    for epoch in range(start, epochs):
        began = time.perf_counter()
        # Each epoch's draws (masks, augmentation, stochastic depth) from its own seed: a resumed run draws
        # what the uninterrupted one drew, on every process
        torch.manual_seed((seed * 100_003 + epoch) * 1_009 + rank)
        sampler.set_epoch(epoch)
        rate = epoch_learning_rate(
            epoch,
            epochs=epochs,
            lr=settings["lr"],
            min_lr=settings["min_lr"],
            warmup_epochs=settings["warmup_epochs"],
            warmup_lr=settings["warmup_lr"],
        )
        for group in optimizer.param_groups:
            group["lr"] = rate
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        batches = 0
        bar: Any = loader
        if progress and main:
            from tqdm import tqdm

            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr)
        for points, _ in bar:
            points = points.to(device=device, dtype=torch.float32)
            if points.shape[1] < npoints:
                raise ValueError(
                    f"dataset clouds have {points.shape[1]} points, fewer than npoints={npoints}; lower npoints"
                )
            loss = trained(augment(_clouds(points, npoints)))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the pre-training loss became {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            batches += 1
        if world > 1:
            dist.all_reduce(total)
        losses.append(total.item() / (batches * world))
        if main:
            atomic_torch_save({"base_model": model.checkpoint_state_dict(), "epoch": epoch}, checkpoint)
            resume = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "losses": losses,
                "settings": settings,
            }
            atomic_torch_save(resume, resume_path)
            print(
                f"epoch {epoch + 1:3d}/{epochs}  lr {rate:.2e}  chamfer-L2 {losses[-1]:.5f}  "
                f"({time.perf_counter() - began:.1f} s)",
                file=out,
            )
        if world > 1:
            dist.barrier()  # the files are written before any process goes on (or ends)
    return PretrainResult(losses, checkpoint, epochs - start)
