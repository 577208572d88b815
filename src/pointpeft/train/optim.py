"""The DAPT reference's optimiser and learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from pointpeft.checks import check_int, check_number


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as the reference builds them: trainable parameters that are 1-D, end with ``.bias`` or
    have ``token`` in their name get no weight decay; the other trainable ones get ``weight_decay``.

    Frozen parameters are left out.

    Raises:
        ValueError / TypeError: if ``weight_decay`` is not a finite number >= 0.
    """
    weight_decay = check_number("weight_decay", weight_decay, low=0.0)
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim <= 1 or name.endswith(".bias") or "token" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, eps 1e-8) over :func:`parameter_groups`.

    When every trainable parameter is on a CUDA device the step is torch's fused implementation
    (``fused=True``: a few kernels for all tensors, where the default ``foreach`` one launches several per
    group of tensors; the same update up to rounding). Elsewhere it is torch's default.

    Raises:
        ValueError / TypeError: if ``lr`` is not a finite number > 0 or ``weight_decay`` one >= 0.
    """
    lr = check_number("lr", lr, low=0.0, low_inclusive=False)
    groups = parameter_groups(model, weight_decay)
    trainable = [p for group in groups for p in group["params"]]
    fused = bool(trainable) and all(p.is_cuda for p in trainable)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def learning_rate(
    epoch: int, *, epochs: int, lr: float, min_lr: float, warmup_epochs: int, warmup_lr: float
) -> float:
    """The schedule's value at ``epoch`` (0-based), as timm's ``CosineLRScheduler`` in the reference computes
    it: linear warm-up from ``warmup_lr`` over ``warmup_epochs``, otherwise the cosine
    ``min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2`` on the absolute epoch. The rate an
    epoch trains at lags it by one epoch: :func:`epoch_learning_rate`.

    Raises:
        ValueError / TypeError: if ``epoch`` or ``warmup_epochs`` is not an int >= 0, ``epochs`` not one
            >= 1, or a learning rate not a finite number >= 0.
    """
    epoch, epochs = check_int("epoch", epoch, 0), check_int("epochs", epochs, 1)
    warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
    for name, value in (("lr", lr), ("min_lr", min_lr), ("warmup_lr", warmup_lr)):
        check_number(name, value, low=0.0)
    if epoch < warmup_epochs:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup_epochs
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))


def epoch_learning_rate(
    epoch: int, *, epochs: int, lr: float, min_lr: float, warmup_epochs: int, warmup_lr: float
) -> float:
    """The rate that ``epoch`` (0-based) trains at, as in the reference's fine-tuning loop: its scheduler
    starts at the schedule's value at 0 and is stepped to ``epoch``'s value *after* training ``epoch``
    (``scheduler.step(epoch)`` at the end of the epoch), so epochs 0 and 1 both train at
    ``learning_rate(0)`` (with warm-up, ``warmup_lr``) and epoch ``e >= 1`` at ``learning_rate(e - 1)``.

    Raises:
        ValueError / TypeError: as :func:`learning_rate`.
    """
    epoch = check_int("epoch", epoch, 0)
    return learning_rate(
        max(epoch - 1, 0),
        epochs=epochs,
        lr=lr,
        min_lr=min_lr,
        warmup_epochs=warmup_epochs,
        warmup_lr=warmup_lr,
    )
