from __future__ import annotations

import os
import sys

import pytest
import torch

# Without a GPU, the Triton kernels are tested in Triton's interpreter. The variable must be set before
# triton is first imported, hence here; it only matters where the Triton backend is asked for explicitly
# (the "auto" backend never picks the interpreter).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # for the reference twin module

from pointpeft.backbones import PointMAE  # noqa: E402
from pointpeft.dapt import TFTS, DynamicAdapter  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SMALL = dict(trans_dim=32, depth=3, num_heads=4, num_group=16, group_size=8, encoder_dims=32)


def randomize_dapt(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every TFTS random values and every adapter a random up-projection and a positive per-token
    scale, so that each component of DAPT matters (fresh, they are near identity and exactly zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TFTS):
                module.gamma.copy_(1 + 0.2 * torch.randn(module.gamma.shape, generator=gen))
                module.beta.copy_(0.2 * torch.randn(module.beta.shape, generator=gen))
            elif isinstance(module, DynamicAdapter):
                module.up.weight.copy_(0.3 * torch.randn(module.up.weight.shape, generator=gen))
                module.up.bias.copy_(0.1 * torch.randn(module.up.bias.shape, generator=gen))
                module.scale.weight.mul_(0.1)  # a positive scale on every token, so that no adapter is
                module.scale.bias.fill_(1.0)  # switched off where its output matters


@pytest.fixture
def small_backbone() -> PointMAE:
    torch.manual_seed(0)
    return PointMAE(**SMALL)


@pytest.fixture
def points() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(4, 96, 3, generator=gen) * 2 - 1
