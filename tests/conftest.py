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

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SMALL = dict(trans_dim=32, depth=3, num_heads=4, num_group=16, group_size=8, encoder_dims=32)


@pytest.fixture
def small_backbone() -> PointMAE:
    torch.manual_seed(0)
    return PointMAE(**SMALL)


@pytest.fixture
def points() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(4, 96, 3, generator=gen) * 2 - 1
