from __future__ import annotations

import pytest
import torch

import pointpeft
from reference_dapt import reference_logits, reference_state_dict

KW = dict(num_heads=4, num_group=16, group_size=8)


def test_file_round_trip_with_module_prefix(tmp_path, points):
    sd = reference_state_dict(dim=32, depth=2, rank=8, num_classes=6, seed=5)
    path = tmp_path / "scan_objbg.pth"
    torch.save({"base_model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = pointpeft.load_reference_dapt(path, **KW)
    assert (model.config.rank, model.config.num_classes, len(model.layout.blocks)) == (8, 6, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(points), reference_logits(sd, points, **KW), rtol=1e-5, atol=1e-6)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"base_model": {"x": Evil()}}, path)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        pointpeft.load_reference_dapt(path, **KW)


def test_unmatched_keys_are_listed():
    sd = reference_state_dict(dim=32, depth=2, rank=8)
    sd["blocks.blocks.0.extra_thing"] = torch.zeros(3)
    sd["mask_token"] = torch.zeros(1, 1, 32)
    with pytest.raises(ValueError, match=r"2 checkpoint key\(s\) match no tensor.*extra_thing.*mask_token"):
        pointpeft.load_reference_dapt(sd, **KW)


def test_missing_tensors_are_listed():
    sd = reference_state_dict(dim=32, depth=2, rank=8)
    del sd["blocks.blocks.1.tfts_beta_3"]
    with pytest.raises(
        ValueError, match=r"not in the checkpoint.*blocks\.blocks\.1\.prompt\.default\.tfts\.beta"
    ):
        pointpeft.load_reference_dapt(sd, **KW)


def test_shape_mismatch_is_reported():
    sd = reference_state_dict(dim=32, depth=2, rank=8)
    sd["blocks.blocks.1.Adapter_MLP.down_proj.weight"] = torch.zeros(9, 32)
    with pytest.raises(ValueError, match=r"down_proj.weight: checkpoint \(9, 32\), model \(8, 32\)"):
        pointpeft.load_reference_dapt(sd, **KW)


def test_two_feature_head_needs_pool():
    sd = reference_state_dict(dim=32, depth=2, rank=8, head_parts=2)
    with pytest.raises(ValueError, match="pass pool="):
        pointpeft.load_reference_dapt(sd, **KW)
    with pytest.raises(ValueError, match="gives 3 feature"):
        pointpeft.load_reference_dapt(sd, pool=("cls", "prompt", "patch"), **KW)
    assert pointpeft.load_reference_dapt(sd, pool=("cls", "patch"), **KW).head.pool == ("cls", "patch")


def test_not_a_checkpoint():
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        pointpeft.load_reference_dapt("/nonexistent/ckpt.pth")
    with pytest.raises(TypeError, match="path or a mapping"):
        pointpeft.load_reference_dapt(42)
    with pytest.raises(ValueError, match="'cls_token' is missing"):
        pointpeft.load_reference_dapt({"base_model": {"norm.weight": torch.ones(3)}})
