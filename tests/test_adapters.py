"""Adapter-only files (peft layout) and several named adapters on one backbone."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import pointpeft
from conftest import SMALL
from pointpeft import DAPTConfig, count_parameters, wrap_with_dapt
from pointpeft.adapter_io import adapter_state_dict
from pointpeft.backbones import PointMAE
from pointpeft.dapt import TFTS, DynamicAdapter


def _backbone(seed: int = 0, **overrides) -> PointMAE:
    torch.manual_seed(seed)
    return PointMAE(**{**SMALL, **overrides})


def _train_steps(model: nn.Module, points: torch.Tensor, steps: int = 2, seed: int = 0) -> None:
    """A few AdamW steps in train mode: every trainable tensor and the BatchNorm statistics move."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    labels = torch.arange(points.shape[0]) % model.config.num_classes
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(points), labels).backward()
        optimizer.step()
    model.eval()


def _perturb(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (TFTS, DynamicAdapter)):
                for p in module.parameters():
                    if p.requires_grad:
                        p.add_(0.2 * torch.randn(p.shape, generator=gen))


# ------------------------------------------------------------------------------------------ save / load
def test_round_trip_gives_identical_logits(tmp_path, points):
    model = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=4, rank=8))
    _train_steps(model, points)
    with torch.no_grad():
        expected = model(points)
    model.save_adapter(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]

    loaded = pointpeft.load_adapter(_backbone(), tmp_path).eval()  # same frozen weights, fresh DAPT
    with torch.no_grad():
        assert torch.equal(loaded(points), expected)
    assert count_parameters(loaded) == count_parameters(model)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "DAPT"
    assert saved["pointpeft_version"] == pointpeft.__version__
    assert saved["base_model_class"] == "pointpeft.backbones.point_mae.PointMAE"
    assert saved["layout"]["blocks"] == [f"blocks.blocks.{i}" for i in range(SMALL["depth"])]
    assert saved["config"]["num_classes"] == 4 and saved["config"]["pool"] == ["cls", "prompt", "patch"]


def test_file_holds_only_what_training_changed(tmp_path, points):
    model = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=4, rank=8))
    model.save_adapter(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    trainable = {
        name.replace("heads.default.", "head.").replace(".default.", ".")  # the adapter name is left out
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    stats = ("running_mean", "running_var", "num_batches_tracked")
    head_stats = {f"head.{k}" for k in model.head.state_dict() if k.endswith(stats)}
    encoder_stats = {
        f"base_model.encoder.base_layer.{k}"
        for k in model.base_model.encoder.base_layer.state_dict()
        if k.endswith(stats)
    }
    assert encoder_stats and set(tensors) == trainable | head_stats | encoder_stats
    assert sum(tensors[k].numel() for k in trainable) == count_parameters(model)[0]

    frozen = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=4, rank=8, update_bn_stats=False))
    frozen.save_adapter(tmp_path / "frozen_bn")
    kept = load_file(tmp_path / "frozen_bn" / "adapter_model.safetensors")
    assert not any(k.startswith("base_model.") and k.endswith(stats) for k in kept)


def test_obj_bg_adapter_is_at_most_5_mb(tmp_path):
    model = wrap_with_dapt(PointMAE(), DAPTConfig(num_classes=15))  # Point-MAE, OBJ_BG setting
    model.save_adapter(tmp_path)
    size = sum(f.stat().st_size for f in tmp_path.iterdir())
    full = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert size <= 5_000_000, size
    assert full > 85_000_000 and size < full / 19  # the full model is ~88 MB


def test_broken_or_mismatched_adapter_files_give_clear_errors(tmp_path, points):
    model = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=4, rank=8))
    model.save_adapter(tmp_path / "good")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        pointpeft.load_adapter(_backbone(), tmp_path / "nothing")

    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "adapter_config.json").write_text("{not json")
    (bad_json / "adapter_model.safetensors").write_bytes(
        (tmp_path / "good" / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="not valid JSON"):
        pointpeft.load_adapter(_backbone(), bad_json)

    (bad_json / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not a pointpeft adapter config"):
        pointpeft.load_adapter(_backbone(), bad_json)

    (bad_json / "adapter_config.json").write_text((tmp_path / "good" / "adapter_config.json").read_text())
    (bad_json / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        pointpeft.load_adapter(_backbone(), bad_json)

    tensors = load_file(tmp_path / "good" / "adapter_model.safetensors")
    del tensors["head.mlp.0.weight"]
    save_file(tensors, bad_json / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"1 tensor\(s\) missing \['head\.mlp\.0\.weight'\]"):
        pointpeft.load_adapter(_backbone(), bad_json)

    wider = _backbone(trans_dim=48, encoder_dims=48)
    with pytest.raises(ValueError, match="shapes do not match"):
        pointpeft.load_adapter(wider, tmp_path / "good")

    class OtherBackbone(PointMAE):
        pass

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="was saved for a pointpeft.backbones.point_mae.PointMAE"):
        pointpeft.load_adapter(OtherBackbone(**SMALL), tmp_path / "good")


def test_adapter_of_another_layout_is_refused(tmp_path):
    model = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=4, rank=8))
    model.save_adapter(tmp_path)
    shallow = wrap_with_dapt(_backbone(depth=2), DAPTConfig(num_classes=4, rank=8))
    with pytest.raises(ValueError, match="saved for other blocks"):
        shallow.load_adapter(tmp_path, "other")
    assert shallow.adapters == ("default",)


# ------------------------------------------------------------------------------------ several adapters
def test_second_adapter_trains_alone_and_switching_restores_each(points):
    backbone = _backbone()
    original = copy.deepcopy(backbone).eval()
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=4, rank=8))
    _train_steps(model, points, seed=1)
    with torch.no_grad():
        default_logits = model(points)

    model.add_adapter("other", DAPTConfig(num_classes=7, rank=4, pool=("cls", "patch")))
    assert model.adapters == ("default", "other") and model.active_adapter == "default"
    model.set_adapter("other")
    other_ids = {id(p) for p in adapter_state_dict(model, "other").values()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in other_ids), name  # only the active adapter trains
    _train_steps(model, points, seed=2)
    with torch.no_grad():
        other_logits = model(points)
    assert other_logits.shape == (4, 7)

    model.set_adapter("default")
    with torch.no_grad():
        assert torch.equal(model(points), default_logits)  # untouched by training "other"
    with torch.no_grad(), model.disable_adapter():
        assert model.active_adapter is None
        assert torch.equal(model(points), original(points))  # pre-trained CLS token and BN statistics
    assert model.active_adapter == "default"
    model.set_adapter("other")
    with torch.no_grad():
        assert torch.equal(model(points), other_logits)


def test_each_adapter_keeps_its_own_cls_token_and_bn_statistics(points):
    backbone = _backbone()
    start_cls = backbone.cls_token.detach().clone()
    start_bn = backbone.encoder.first_conv[1].running_mean.clone()
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=4, rank=8))
    model.add_adapter("b", DAPTConfig(num_classes=4, rank=8))
    _train_steps(model, points)
    bn = model.base_model.encoder.base_layer.first_conv[1]
    assert not torch.equal(model.base_model.cls_token, start_cls) and not torch.equal(
        bn.running_mean, start_bn
    )
    model.set_adapter("b")  # b starts from the pre-trained values
    assert torch.equal(model.base_model.cls_token, start_cls)
    assert torch.equal(model.base_model.encoder.base_layer.first_conv[1].running_mean, start_bn)


def test_save_all_adapters_and_load_one_under_a_new_name(tmp_path, points):
    model = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=4, rank=8))
    model.add_adapter("b", DAPTConfig(num_classes=3, rank=4))
    model.set_adapter("b")
    _perturb(model, seed=5)
    _train_steps(model, points)
    with torch.no_grad():
        b_logits = model(points)
    model.save_adapter(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists() and (
        tmp_path / "b" / "adapter_config.json"
    ).exists()

    fresh = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=2, rank=2))
    fresh.load_adapter(tmp_path / "b", "from_b")
    fresh.set_adapter("from_b")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(points), b_logits)


def test_adapter_management_errors():
    model = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=4, rank=8))
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter("default", DAPTConfig(num_classes=2))
    with pytest.raises(ValueError, match="without '.'"):
        model.add_adapter("a.b", DAPTConfig(num_classes=2))
    with pytest.raises(ValueError, match="no adapter named 'x'"):
        model.set_adapter("x")
    with pytest.raises(ValueError, match="cannot delete the active adapter"):
        model.delete_adapter("default")
    with pytest.raises(TypeError, match=r"config must be one of pointpeft\.DAPTConfig, .* got dict"):
        model.add_adapter("c", {"num_classes": 2})
    model.add_adapter("c", DAPTConfig(num_classes=2))
    model.delete_adapter("c")
    assert model.adapters == ("default",)
    assert not any("c" in m for m in model.modules() if isinstance(m, pointpeft.dapt.AdapterModules))
    with model.disable_adapter(), pytest.raises(RuntimeError, match="adapters are disabled"):
        model.forward_features(torch.rand(2, 96, 3))


def test_load_pretrained_after_wrapping_sets_the_values_disable_adapter_uses(points):
    donor = _backbone(seed=7)
    checkpoint = {f"MAE_encoder.{k}": v for k, v in donor.state_dict().items()}
    model = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=4, rank=8))
    pointpeft.load_pretrained(model, checkpoint)
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(points), donor.eval()(points))


def test_training_with_adapters_disabled_keeps_the_pretrained_bn_statistics(points):
    backbone = _backbone()
    start = backbone.encoder.first_conv[1].running_mean.clone()
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=4, rank=8)).train()
    with model.disable_adapter():
        model(points)
    assert torch.equal(
        model.backbone_copies.base_value("encoder.base_layer.first_conv.1.running_mean"), start
    )
    assert model.base_model.encoder.base_layer.first_conv[1].training  # train mode is back for the adapter
