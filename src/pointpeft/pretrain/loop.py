"""``pointpeft.pretrain.pretrain``: Point-MAE pre-training with the released recipe, resumable, writing
checkpoints in the released layout."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch.utils.data import DataLoader, Dataset

from pointpeft.atomic_write import atomic_torch_save
from pointpeft.backbones import PointMAE
from pointpeft.checks import check_positive_int, check_type
from pointpeft.data import ScaleAndTranslate, SyntheticShapes, sample_test_points
from pointpeft.pretrain.model import PointMAEPretrainer
from pointpeft.safe_load import load_torch_file
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
    written atomically: ``pretrain.pth`` in the released layout and ``last.pt`` (model, optimizer, random
    states), from which a later call with the same ``output_dir`` and settings continues; a process killed
    mid-epoch loses that epoch only.

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
        device: where to train.
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
    device = torch.device(device)
    torch.manual_seed(seed)
    if backbone is None:
        backbone = PointMAE(num_group=64, group_size=32, drop_path_rate=0.1)
    check_type("backbone", backbone, PointMAE, "a pointpeft.backbones.PointMAE")
    if dataset is None:
        dataset = SyntheticShapes(1000, npoints, seed=seed, cache=True)
    size = len(dataset)  # type: ignore[arg-type]
    if size < batch_size:
        raise ValueError(f"dataset has {size} clouds, fewer than one batch (batch_size={batch_size})")
    model = PointMAEPretrainer(
        backbone, mask_ratio=mask_ratio, decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads
    ).to(device)
    optimizer = build_optimizer(model, lr, weight_decay)
    settings = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs, "min_lr": min_lr, "warmup_lr": warmup_lr, "npoints": npoints,
        "mask_ratio": mask_ratio, "decoder_depth": decoder_depth, "decoder_num_heads": decoder_num_heads,
        "seed": seed, "clouds": size,
    }  # fmt: skip
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
        torch.set_rng_state(state["rng"])
        print(f"resumed from {resume_path} at epoch {start}", file=out)
    augment = ScaleAndTranslate()
    checkpoint = os.path.join(output_dir, CHECKPOINT)
    trained = sum(p.numel() for p in model.parameters())
    if start == 0:
        print(f"pre-training Point-MAE: {trained:,d} parameters, {size} clouds, {epochs} epochs", file=out)
    for epoch in range(start, epochs):
        began = time.perf_counter()
        rate = epoch_learning_rate(
            epoch, epochs=epochs, lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr
        )
        for group in optimizer.param_groups:
            group["lr"] = rate
        order = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=order)
        model.train()
        total, batches = 0.0, 0
        bar: Any = loader
        if progress:
            from tqdm import tqdm

            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr)
        for points, _ in bar:
            points = points.to(device=device, dtype=torch.float32)
            if points.shape[1] < npoints:
                raise ValueError(
                    f"dataset clouds have {points.shape[1]} points, fewer than npoints={npoints}; lower npoints"
                )
            points = augment(_clouds(points, npoints))
            loss = model(points)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the pre-training loss became {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / batches)
        atomic_torch_save({"base_model": model.checkpoint_state_dict(), "epoch": epoch}, checkpoint)
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "losses": losses,
                "rng": torch.get_rng_state(),
                "settings": settings,
            },
            resume_path,
        )
        print(
            f"epoch {epoch + 1:3d}/{epochs}  lr {rate:.2e}  chamfer-L2 {losses[-1]:.5f}  "
            f"({time.perf_counter() - began:.1f} s)",
            file=out,
        )
    return PretrainResult(losses, checkpoint, epochs - start)
