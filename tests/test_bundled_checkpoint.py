"""The pre-trained checkpoint shipped with pointpeft: small, in the released layout, read with nothing of the
encoder missing, reachable as ``model.pretrained=bundled``, and made by the command it names."""

from __future__ import annotations

import os
import shlex

import pytest
import torch

import pointpeft
from pointpeft.backbones import PointMAE
from pointpeft.pretrain import BUNDLED_COMMAND, BUNDLED_SIZES, bundled_checkpoint


def test_the_bundled_checkpoint_is_small_and_loads_with_only_the_cls_tensors_missing():
    path = bundled_checkpoint()
    assert os.path.getsize(path) <= 5 * 2**20
    backbone = PointMAE(**BUNDLED_SIZES)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = pointpeft.load_pretrained(backbone, path)
    assert result.source == "point_mae" and sorted(result.missing_keys) == ["cls_pos", "cls_token"]
    changed = [k for k, v in backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before) - 2  # every encoder tensor but the CLS ones came from the file
    assert torch.load(path, weights_only=True)["epoch"] == int(_flag("--epochs")) - 1


def _flag(name: str) -> str:
    words = shlex.split(BUNDLED_COMMAND)
    return words[words.index(name) + 1]


def test_the_bundled_command_makes_a_checkpoint_of_the_same_layout(tmp_path, capsys):
    """One epoch of the command that made the file writes the same tensors, shapes and dtypes."""
    from pointpeft.cli import main

    words = shlex.split(BUNDLED_COMMAND)
    assert words[:2] == ["pointpeft", "pretrain"]
    args = words[1:]
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--clouds") + 1] = "32"
    args[args.index("--output-dir") + 1] = str(tmp_path)
    assert main([*args, "--no-progress"]) == 0
    made = torch.load(tmp_path / "pretrain.pth", weights_only=True)["base_model"]
    shipped = torch.load(bundled_checkpoint(), weights_only=True)["base_model"]
    assert {k: (v.shape, v.dtype) for k, v in made.items()} == {
        k: (v.shape, v.dtype) for k, v in shipped.items()
    }
    assert f"--trans-dim {BUNDLED_SIZES['trans_dim']}" in BUNDLED_COMMAND
    capsys.readouterr()


def test_model_pretrained_bundled_builds_the_backbone_from_the_shipped_file():
    from pointpeft.train import backbone_record_of, build_backbone, load_config

    configs = os.path.join(os.path.dirname(__file__), "..", "configs")
    config = load_config(os.path.join(configs, "synthetic.yaml"), ["model.pretrained=bundled"])
    assert backbone_record_of(config)["pretrained"] == bundled_checkpoint()
    backbone = build_backbone(config)
    shipped = torch.load(bundled_checkpoint(), weights_only=True)["base_model"]
    loaded = {k: v for k, v in backbone.state_dict().items() if f"MAE_encoder.{k}" in shipped}
    assert len(loaded) == len(backbone.state_dict()) - 2
    for name, value in loaded.items():
        assert torch.equal(value, shipped[f"MAE_encoder.{name}"]), name


def test_a_missing_bundled_file_says_how_to_make_it(monkeypatch):
    from pointpeft.pretrain import bundled

    monkeypatch.setattr(bundled, "BUNDLED_FILE", "no_such_file.pth")
    with pytest.raises(
        FileNotFoundError, match=r"not installed with pointpeft .* pointpeft pretrain --epochs"
    ):
        bundled.bundled_checkpoint()
