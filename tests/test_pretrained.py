"""load_pretrained on checkpoints laid out as each family's pre-training checkpoint (documented key names)."""

from __future__ import annotations

import logging

import pytest
import torch

import pointpeft
from conftest import SMALL
from pointpeft.backbones import PointMAE


def _encoder_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in PointMAE(**SMALL).state_dict().items()}


def _assert_loaded(
    model: torch.nn.Module, encoder: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> None:
    own = {pointpeft.checkpoints.strip_wrapper_names(k): v for k, v in model.state_dict().items()}
    for key, value in encoder.items():
        if key not in skip:
            assert torch.equal(own[key], value), key


def test_point_mae_pretrain_checkpoint_file(tmp_path, caplog):
    encoder = _encoder_state(1)
    ckpt = {f"module.MAE_encoder.{k}": v for k, v in encoder.items() if k not in ("cls_token", "cls_pos")}
    ckpt.update(
        {
            "module.mask_token": torch.zeros(1, 1, 32),
            "module.MAE_decoder.blocks.0.norm1.weight": torch.ones(32),
            "module.decoder_pos_embed.0.weight": torch.zeros(128, 3),
            "module.increase_dim.0.weight": torch.zeros(96, 32, 1),
        }
    )
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": ckpt, "epoch": 300}, path)
    torch.manual_seed(0)
    backbone = PointMAE(**SMALL)
    cls_before = backbone.cls_token.detach().clone()
    with caplog.at_level(logging.INFO, logger="pointpeft"):
        result = pointpeft.load_pretrained(backbone, path)
    assert result.source == "point_mae"
    assert sorted(result.missing_keys) == ["cls_pos", "cls_token"]  # Point-MAE pre-training has no CLS
    assert set(result.unexpected_keys) == {
        "mask_token",
        "MAE_decoder.blocks.0.norm1.weight",
        "decoder_pos_embed.0.weight",
        "increase_dim.0.weight",
    }
    _assert_loaded(backbone, encoder, skip=("cls_token", "cls_pos"))
    assert torch.equal(backbone.cls_token, cls_before)
    assert "missing" in caplog.text


def test_loads_into_an_already_wrapped_backbone():
    encoder = _encoder_state(2)
    torch.manual_seed(0)
    model = pointpeft.wrap_with_dapt(PointMAE(**SMALL), pointpeft.DAPTConfig(num_classes=3, rank=4))
    result = pointpeft.load_pretrained(model.base_model, {f"ACT_encoder.{k}": v for k, v in encoder.items()})
    assert result.source == "act" and result.missing_keys == [] and result.unexpected_keys == []
    _assert_loaded(model.base_model, encoder)
    assert not model.base_model.blocks.blocks[
        0
    ].base_layer.norm1.base_layer.weight.requires_grad  # still frozen


def test_recon_drops_the_contrast_stream_and_image_text_tokens():
    encoder = _encoder_state(3)
    ckpt = {f"MAE_encoder.{k}": v for k, v in encoder.items()}
    extras = [
        "img_token",
        "text_token",
        "img_pos",
        "text_pos",
        "blocks.blocks.0.norm1_contrast.weight",
        "blocks.blocks.0.attn_contrast.q.weight",
        "blocks.blocks.1.mlp_contrast.fc1.weight",
    ]
    ckpt.update({f"MAE_encoder.{k}": torch.zeros(2) for k in extras})
    backbone = PointMAE(**SMALL)
    result = pointpeft.load_pretrained(backbone, ckpt)
    assert result.source == "recon" and result.missing_keys == []  # ReCon has a CLS token
    assert sorted(result.unexpected_keys) == sorted(f"MAE_encoder.{k}" for k in extras)
    _assert_loaded(backbone, encoder)


@pytest.mark.parametrize(("which", "seed"), [("momentum", 4), ("online", 5)])
def test_point_bert_reads_the_chosen_encoder(which, seed):
    momentum, online = _encoder_state(4), _encoder_state(5)
    ckpt = {f"module.transformer_k.{k}": v for k, v in momentum.items()}
    ckpt.update({f"module.transformer_q.{k}": v for k, v in online.items()})
    ckpt.update({"module.dvae.dgcnn_1.weight": torch.zeros(3), "module.queue": torch.zeros(4, 8)})
    backbone = PointMAE(**SMALL)
    result = pointpeft.load_pretrained(backbone, {"base_model": ckpt}, point_bert_encoder=which)
    assert result.source == "point_bert"
    _assert_loaded(backbone, momentum if which == "momentum" else online)
    assert "dvae.dgcnn_1.weight" in result.unexpected_keys and "queue" in result.unexpected_keys


def test_shape_mismatch_lists_every_key():
    ckpt = {f"MAE_encoder.{k}": v for k, v in _encoder_state(6).items()}
    ckpt["MAE_encoder.norm.weight"] = torch.ones(64)
    ckpt["MAE_encoder.blocks.blocks.1.attn.qkv.weight"] = torch.ones(10, 32)
    with pytest.raises(ValueError) as error:
        pointpeft.load_pretrained(PointMAE(**SMALL), ckpt)
    assert "MAE_encoder.norm.weight: checkpoint (64,), model (32,)" in str(error.value)
    assert "MAE_encoder.blocks.blocks.1.attn.qkv.weight: checkpoint (10, 32), model (96, 32)" in str(
        error.value
    )


def test_nothing_matching_and_bad_arguments():
    with pytest.raises(ValueError, match="no tensor of the checkpoint matches"):
        pointpeft.load_pretrained(PointMAE(**SMALL), {"something.else": torch.zeros(3)})
    with pytest.raises(ValueError, match="source must be one of"):
        pointpeft.load_pretrained(PointMAE(**SMALL), {"a": torch.zeros(1)}, source="pointnet")
    with pytest.raises(TypeError, match="backbone must be a torch.nn.Module"):
        pointpeft.load_pretrained("model", {"a": torch.zeros(1)})


def test_pointpeft_train_prints_what_the_checkpoint_loaded(tmp_path, capsys):
    """A run from a checkpoint and one without print different lines: the file, its family, the keys it
    lacked (Point-MAE's pre-training has no CLS token) and those ignored (the decoder), grouped."""
    from pointpeft.cli import main
    from tiny_run import TINY

    torch.manual_seed(1)
    encoder = PointMAE(trans_dim=32, depth=1, num_heads=4, num_group=8, group_size=8, encoder_dims=32)
    ckpt = {
        f"MAE_encoder.{k}": v for k, v in encoder.state_dict().items() if k not in ("cls_token", "cls_pos")
    }
    ckpt.update({f"MAE_decoder.blocks.0.norm1.{p}": torch.ones(32) for p in ("weight", "bias")})
    ckpt["mask_token"] = torch.zeros(1, 1, 32)
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": ckpt}, path)
    common = [*TINY, "run.device=cpu"]
    assert main(["train", *common, f"run.output_dir={tmp_path / 'a'}", f"model.pretrained={path}"]) == 0
    loaded = capsys.readouterr().out
    assert (
        f"pre-trained weights: {path}: read as point_mae; missing (kept as initialised): cls_token, cls_pos; "
        "unexpected (ignored): MAE_decoder (2), mask_token\n"
    ) in loaded
    assert main(["train", *common, f"run.output_dir={tmp_path / 'b'}"]) == 0
    bare = capsys.readouterr().out
    assert "pre-trained weights: none (model.pretrained is null)" in bare and "read as" not in bare
