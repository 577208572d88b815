"""``pointpeft demo``: DAPT trained end to end on procedurally generated shapes, in well under a minute on a CPU.

Nothing is downloaded and nothing is pre-trained: a small, randomly initialised Point-MAE is frozen, DAPT is
inserted, and only the DAPT parameters train to tell apart a few kinds of shapes generated in memory.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import torch
from torch.nn import functional as F

from pointpeft.backbones import PointMAE
from pointpeft.config import DAPTConfig
from pointpeft.counting import format_trainable_parameters
from pointpeft.dapt.model import DAPTModel, wrap_with_dapt


def _sphere(n: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, 3, generator=g), dim=-1)


def _cube(n: int, g: torch.Generator) -> torch.Tensor:
    p = torch.rand(n, 3, generator=g) * 2 - 1
    axis = torch.randint(0, 3, (n,), generator=g)
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    p[torch.arange(n), axis] = sign
    return p


def _cylinder(n: int, g: torch.Generator) -> torch.Tensor:
    theta = torch.rand(n, generator=g) * 2 * math.pi
    z = torch.rand(n, generator=g) * 2 - 1
    return torch.stack([torch.cos(theta), torch.sin(theta), z], dim=-1)


def _cone(n: int, g: torch.Generator) -> torch.Tensor:
    theta = torch.rand(n, generator=g) * 2 * math.pi
    h = torch.sqrt(torch.rand(n, generator=g))  # uniform over the lateral surface
    return torch.stack([h * torch.cos(theta), h * torch.sin(theta), 1 - 2 * h], dim=-1)


def _torus(n: int, g: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=g) * 2 * math.pi
    v = torch.rand(n, generator=g) * 2 * math.pi
    r = 1.0 + 0.35 * torch.cos(v)
    return torch.stack([r * torch.cos(u), r * torch.sin(u), 0.35 * torch.sin(v)], dim=-1)


SHAPES: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "sphere": _sphere,
    "cube": _cube,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
}


def make_shapes(count: int, num_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``count`` labelled clouds of the shapes in :data:`SHAPES`, deterministically from ``seed``.

    Each cloud gets a random anisotropic scale in [0.6, 1.4] per axis, a random rotation about the z axis,
    Gaussian noise (std 0.02) and is centred and scaled into the unit ball.

    Returns:
        ``points (count, num_points, 3)`` float32 and ``labels (count,)`` int64 (index into ``SHAPES``).
    """
    g = torch.Generator().manual_seed(seed)
    makers = list(SHAPES.values())
    labels = torch.arange(count) % len(makers)
    labels = labels[torch.randperm(count, generator=g)]
    clouds = []
    for label in labels.tolist():
        p = makers[label](num_points, g) * (0.6 + 0.8 * torch.rand(3, generator=g))
        angle = float(torch.rand((), generator=g)) * 2 * math.pi
        c, s = math.cos(angle), math.sin(angle)
        p = p @ torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        p = p + 0.02 * torch.randn(p.shape, generator=g)
        p = p - p.mean(dim=0)
        clouds.append(p / p.norm(dim=-1).max())
    return torch.stack(clouds), labels


@dataclass
class DemoResult:
    """What the demo measured: accuracy on held-out shapes before and after training, and the final loss."""

    initial_accuracy: float
    final_accuracy: float
    final_loss: float
    seconds: float


def build_demo_model(num_classes: int, seed: int) -> DAPTModel:
    """A small, randomly initialised Point-MAE (width 64, 4 blocks, 24 patches of 16 points), wrapped.

    The backbone gets PyTorch's default (scale-preserving) initialisation rather than Point-MAE's
    truncated normal with std 0.02, which is meant to be followed by pre-training: frozen and untrained, it
    would shrink the features until LayerNorm's epsilon dominates them.
    """
    torch.manual_seed(seed)
    backbone = PointMAE(
        trans_dim=64, depth=4, num_heads=4, num_group=24, group_size=16, encoder_dims=64, pos_mode="once"
    )
    for module in backbone.modules():
        if module is not backbone and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return wrap_with_dapt(backbone, DAPTConfig(num_classes=num_classes, rank=16, head_dropout=0.1))


@torch.no_grad()
def _accuracy(model: DAPTModel, points: torch.Tensor, labels: torch.Tensor, batch_size: int = 100) -> float:
    model.eval()
    correct = sum(
        int((model(points[i : i + batch_size]).argmax(-1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(points), batch_size)
    )
    model.train()
    return 100.0 * correct / len(points)


def run_demo(
    steps: int = 250,
    batch_size: int = 16,
    seed: int = 0,
    num_points: int = 256,
    log_every: int = 50,
    out: TextIO | None = None,
) -> DemoResult:
    """Train DAPT on synthetic shapes and print the loss and held-out accuracy as it goes.

    Args:
        steps: optimisation steps.
        batch_size: clouds per step (at least 2: the head has BatchNorm).
        seed: seeds the data, the backbone's random weights and the training order.
        num_points: points per cloud.
        log_every: print a line every this many steps.
        out: where to print (stdout by default).

    Returns:
        a :class:`DemoResult`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (the head uses BatchNorm), got {batch_size}")
    out = out if out is not None else sys.stdout
    start = time.perf_counter()
    train_points, train_labels = make_shapes(800, num_points, seed)
    test_points, test_labels = make_shapes(200, num_points, seed + 10_000)
    names = list(SHAPES)
    model = build_demo_model(len(names), seed)
    print(
        f"pointpeft demo: DAPT on a frozen, randomly initialised Point-MAE; {len(names)} synthetic shape "
        f"classes ({', '.join(names)}), {len(train_points)} training / {len(test_points)} held-out clouds of "
        f"{num_points} points",
        file=out,
    )
    print(format_trainable_parameters(model), file=out)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.05
    )
    initial = _accuracy(model, test_points, test_labels)
    print(
        f"step {0:4d}/{steps}  held-out accuracy {initial:5.1f}%  (chance {100 / len(names):.1f}%)", file=out
    )
    order = torch.Generator().manual_seed(seed + 1)
    model.train()
    running, seen, loss_value = 0.0, 0, float("nan")
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train_points), (batch_size,), generator=order)
        loss = F.cross_entropy(model(train_points[idx]), train_labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running, seen = running + loss.item(), seen + 1
        if step % log_every == 0 or step == steps:
            loss_value, running, seen = running / seen, 0.0, 0
            accuracy = _accuracy(model, test_points, test_labels)
            print(
                f"step {step:4d}/{steps}  loss {loss_value:.3f}  held-out accuracy {accuracy:5.1f}%", file=out
            )
    final = _accuracy(model, test_points, test_labels)
    seconds = time.perf_counter() - start
    print(f"done in {seconds:.1f} s: held-out accuracy {initial:.1f}% -> {final:.1f}%", file=out)
    return DemoResult(initial, final, loss_value, seconds)
