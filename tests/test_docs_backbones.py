"""The code blocks of docs/backbones.md run as written: for each backbone, build, load its checkpoint, wrap
and train.

The upstream projects' own classes (openpoints' builder, timm, a user's model) are played by the test
doubles in ``tests/upstream`` and ``tests/test_timm_like.py``; each checkpoint file the page names is
written here in its upstream's published layout (``tests/upstream/checkpoints.py``), from a model of the
same class. The built-in backbones run at their published sizes; training runs one short epoch on a few
small synthetic clouds.
"""

from __future__ import annotations

import pathlib
import re
from types import SimpleNamespace

import pytest
import torch
from tests.test_timm_like import PointViT as TimmStylePointViT
from tests.upstream import checkpoints as published
from tests.upstream import openpoints_official
from torch import nn

import pointpeft
from pointpeft.backbones import PointBERT, PointGPT, PointMAE, ReCon
from pointpeft.data.synthetic import SyntheticShapes

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "backbones.md"
SECTIONS = (
    "Point-MAE and ACT",
    "Point-BERT",
    "ReCon",
    "PointGPT",
    "openpoints PointViT",
    "timm ViT",
    "`nn.TransformerEncoder`",
)


def _blocks(section: str) -> list[str]:
    """The ```python blocks under the page's ``## <section>`` heading."""
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match is not None, f"docs/backbones.md has no section {section!r}"
    return re.findall(r"```python\n(.*?)```", match.group(1), re.S)


def _write_checkpoints(folder: pathlib.Path) -> None:
    """The files the page loads, in their upstream layouts, from models of the classes it builds."""
    torch.manual_seed(1)
    files = {
        "pretrain.pth": published.point_mae_checkpoint(PointMAE().state_dict()),
        "Point-BERT.pth": published.point_bert_checkpoint(PointBERT().state_dict()),
        "recon.pth": published.recon_checkpoint(ReCon().state_dict()),
        "pointgpt.pth": published.pointgpt_checkpoint(PointGPT().state_dict()),
        "pointvit.pth": published.openpoints_checkpoint(openpoints_official.tiny_openpoints().state_dict()),
    }
    for name, content in files.items():
        torch.save(content, folder / name)


class _PointPatchEmbed(nn.Module):
    """A point tokenizer in place of timm's image patch embedding: ``(B, G, K, 3)`` → ``(B, G, K, C)``."""

    def __init__(self, dim: int = 48) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)

    def forward(self, neighborhood: torch.Tensor) -> torch.Tensor:
        return self.proj(neighborhood)


class _MyPointModel(nn.Module):
    """A user's point transformer around an ``nn.TransformerEncoder``: ``points (B, N, 3)`` → tokens."""

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        width = encoder.layers[0].linear1.in_features
        self.patch_encoder = nn.Sequential(nn.Linear(3, 64), nn.GELU(), nn.Linear(64, width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.transformer = encoder

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        neighborhood, _ = pointpeft.ops.group(points, 16, 8)
        tokens = self.patch_encoder(neighborhood).max(dim=2)[0]  # (B, G, C)
        x = torch.cat((self.cls_token.expand(points.shape[0], -1, -1), tokens), dim=1)
        return self.transformer(x)


def _namespace(tmp_path: pathlib.Path) -> dict:
    data = dict(num_points=256, num_classes=10)  # labels 0-9, within the 15 classes of the page's heads
    return {
        "torch": torch,
        "pointpeft": pointpeft,
        "points": torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1,
        "train_set": SyntheticShapes(4, seed=0, **data),
        "test_set": SyntheticShapes(2, seed=1, **data),
        "config": {
            "data": {"npoints": 256, "point_all": 256, "num_classes": 15},
            "dapt": {"rank": 8},
            "optim": {"epochs": 1, "warmup_epochs": 0, "batch_size": 2, "eval_batch_size": 2},
            "run": {"device": "cpu", "output_dir": str(tmp_path / "run"), "execution": "plain"},
        },
        "build_model_from_cfg": lambda cfg: openpoints_official.tiny_openpoints(),
        "cfg": SimpleNamespace(model=None),
        "timm": SimpleNamespace(create_model=lambda name, pretrained: TimmStylePointViT(dim=48, groups=16)),
        "MyPointPatchEmbed": _PointPatchEmbed,
        "MyPointModel": _MyPointModel,
    }


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    _write_checkpoints(folder)
    return folder


def test_the_page_shows_build_load_wrap_and_train_for_every_backbone():
    for section in SECTIONS:
        code = "\n".join(_blocks(section))
        assert "wrap_with_dapt(" in code and "train.train(" in code, section


@pytest.mark.parametrize("section", SECTIONS)
def test_each_backbone_block_runs(section, checkpoint_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(openpoints_official, "cuda_buffer", openpoints_official.cpu_buffer)  # no GPU here
    monkeypatch.chdir(checkpoint_folder)
    namespace = _namespace(tmp_path)
    torch.manual_seed(0)
    for code in _blocks(section):
        exec(compile(code, f"docs/backbones.md ({section})", "exec"), namespace)
    model, logits = namespace["model"], namespace["logits"]
    assert isinstance(model, pointpeft.DAPTModel)
    assert logits.shape == (2, 15) and torch.isfinite(logits).all()
    assert (tmp_path / "run" / "best" / "adapter_config.json").is_file()  # trained, best adapter saved
