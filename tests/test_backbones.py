"""Third-party backbones: the test doubles of the upstream fine-tuning models (tests/upstream: ReCon,
PointGPT, Point-BERT, ACT, openpoints' PointViT, with their module names, forward structure and quirks),
the built-in Point-BERT and user models on ``nn.TransformerEncoder`` (standins.py). The walker and the
presets find every block, only DAPT trains, the forward works with prompts, the trainable count equals the
hand computation, and DAPT set to identity (or disabled) gives the backbone's own output."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytest
import torch
from tests.upstream import openpoints_official
from tests.upstream.act_official import tiny_act
from tests.upstream.point_bert_official import tiny_point_bert
from tests.upstream.pointgpt_official import tiny_pointgpt
from tests.upstream.recon_official import tiny_recon
from torch import nn

import pointpeft
from conftest import randomize_dapt
from pointpeft import DAPTConfig, count_parameters, detect_layout, preset_layout, wrap_with_dapt
from pointpeft.backbones import PointMAE
from pointpeft.dapt import TFTS, DynamicAdapter
from pointpeft.dapt.prompt import pad_square_mask
from standins import TorchEncoderModel

POINTS = 128  # points per cloud: 8 patches for openpoints (sample_ratio 1/16), as the other doubles


def _point_bert() -> nn.Module:
    return PointMAE(trans_dim=32, encoder_dims=24, depth=3, num_heads=4, num_group=16, group_size=8)


def _torch_batch_first() -> nn.Module:
    return TorchEncoderModel(batch_first=True, norm_first=True, final_norm=True)


def _torch_seq_first() -> nn.Module:
    return TorchEncoderModel(batch_first=False, norm_first=False, final_norm=False)


# name: (constructor, preset, expected layout fields)
CASES: dict[str, tuple[Callable[[], nn.Module], str, dict]] = {
    "point_bert": (
        _point_bert,
        "point_bert",
        dict(prefix="blocks.blocks", patch_encoder="reduce_dim", final_norm="norm", num_global_tokens=1),
    ),
    "point_bert_official": (
        tiny_point_bert,
        "point_bert",
        dict(prefix="blocks.blocks", patch_encoder="reduce_dim", final_norm="norm", num_global_tokens=1),
    ),
    "act": (
        tiny_act,
        "point_mae",
        dict(prefix="blocks.blocks", patch_encoder="encoder", final_norm="norm", num_global_tokens=1),
    ),
    "recon": (
        tiny_recon,
        "recon",
        dict(prefix="blocks.blocks", patch_encoder="encoder", final_norm="norm", num_global_tokens=3),
    ),
    "pointgpt": (
        tiny_pointgpt,
        "pointgpt",
        dict(
            prefix="blocks.layers",
            patch_encoder="encoder",
            final_norm="blocks.ln_f",
            num_global_tokens=2,
            cls_index=1,
            seq_first=True,
        ),
    ),
    "openpoints": (
        openpoints_official.tiny_openpoints,
        "openpoints_pointvit",
        dict(
            prefix="encoder.blocks",
            patch_encoder="encoder.proj",
            final_norm="encoder.norm",
            num_global_tokens=1,
            trainable_tokens=("encoder.cls_token", "encoder.cls_pos"),
        ),
    ),
    "torch_batch_first": (
        _torch_batch_first,
        "torch_transformer_encoder",
        dict(prefix="transformer.layers", patch_encoder="patch_encoder", final_norm="transformer.norm"),
    ),
    "torch_seq_first": (
        _torch_seq_first,
        "torch_transformer_encoder",
        dict(prefix="transformer.layers", patch_encoder="patch_encoder", final_norm=None, seq_first=True),
    ),
}


@pytest.fixture(autouse=True)
def cpu_openpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """openpoints' grouping allocates torch.cuda tensors; on these CPU clouds it allocates on the CPU."""
    monkeypatch.setattr(openpoints_official, "cuda_buffer", openpoints_official.cpu_buffer)


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return CASES[name][0]().eval()


@pytest.fixture
def cloud() -> torch.Tensor:
    return torch.rand(4, POINTS, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _width_depth_groups(model: nn.Module, name: str, num_points: int = POINTS) -> tuple[int, int, int]:
    """The backbone's width, block count and patch count, read from the model itself (its CLS token, its
    block list at the expected prefix, its grouping settings), not from the detected layout."""
    widths = [p.shape[-1] for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "cls_token"]
    assert len(widths) == 1, widths
    depth = len(model.get_submodule(CASES[name][2]["prefix"]))
    if hasattr(model, "num_group"):
        groups = int(model.num_group)
    else:  # openpoints: PointPatchEmbed samples int(N * sample_ratio) centres
        groups = int(num_points * model.get_submodule("encoder.patch_embed").sample_ratio)
    return widths[0], depth, groups


def _expected_trainable(config: DAPTConfig, tokens: int, depth: int, c: int) -> int:
    """DAPT's trainable parameters, counted by hand from the shapes (as the DAPT reference implementation builds them)."""
    h, r = 4 * c, config.rank
    adapter = 2 * c + (c + 1) + (c * r + r) + (r * c + c)  # LayerNorm, scale, down, up
    tfts_block = 2 * (c + 3 * c + c + c + h + c)  # norm1, qkv, proj, norm2, fc1, fc2
    prompts = depth if "prompt" in config.pool else depth - 1  # no prompt that nothing reads
    tfts = depth * tfts_block + 2 * c * prompts + 2 * (2 * c)  # + patch tokens and final norm
    k = len(config.pool)
    head = (k * c * 256 + 256) + 2 * 256 + (256 * 256 + 256) + 2 * 256 + (256 * config.num_classes)
    head += config.num_classes
    return depth * adapter + tfts + tokens * c + head


def _dapt_parameter_ids(model: pointpeft.DAPTModel) -> set[int]:
    ids = {id(p) for p in model.heads.parameters()}
    for module in model.modules():
        if isinstance(module, (TFTS, DynamicAdapter)):
            ids.update(id(p) for p in module.parameters())
    ids.update(id(model.base_model.get_parameter(n)) for n in model.layout.trainable_tokens)
    return ids


@pytest.mark.parametrize("name", list(CASES))
def test_detection_and_preset_agree_and_find_every_block(name):
    model = _build(name)
    _, preset, expected = CASES[name]
    layout = detect_layout(model)
    assert layout == dataclasses.replace(preset_layout(preset, model), preset=None)
    _, depth, _ = _width_depth_groups(model, name)
    assert layout.blocks == tuple(f"{expected['prefix']}.{i}" for i in range(depth))
    for key, value in expected.items():
        if key != "prefix":
            assert getattr(layout, key) == value, key
    defaults = {"cls_index": 0, "seq_first": False}
    for key, value in defaults.items():
        if key not in expected:
            assert getattr(layout, key) == value, key


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("pool", [("cls", "prompt", "patch"), ("cls", "patch")])
def test_only_dapt_trains_counts_match_and_every_trainable_gets_a_gradient(name, pool, cloud):
    model = wrap_with_dapt(_build(name), DAPTConfig(num_classes=5, rank=8, pool=pool), layout=CASES[name][1])
    dapt_ids = _dapt_parameter_ids(model)
    for pname, parameter in model.named_parameters():
        assert parameter.requires_grad == (id(parameter) in dapt_ids), pname
    tokens = len(model.layout.trainable_tokens)
    width, depth, _ = _width_depth_groups(model.base_model, name)
    assert count_parameters(model)[0] == _expected_trainable(model.config, tokens, depth=depth, c=width)

    randomize_dapt(model)
    model.train()
    logits = model(cloud)
    assert logits.shape == (4, 5)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for pname, parameter in model.named_parameters():
        if parameter.requires_grad:  # DDP-safe: no trainable parameter is left without a gradient
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, pname
        else:
            assert parameter.grad is None, pname


@pytest.mark.parametrize("name", list(CASES))
def test_features_carry_one_prompt_per_block(name, cloud):
    model = wrap_with_dapt(_build(name), DAPTConfig(num_classes=5, rank=8), layout=CASES[name][1]).eval()
    randomize_dapt(model)
    with torch.no_grad():
        tokens, prompts = model.forward_features(cloud)
    width, depth, groups = _width_depth_groups(model.base_model, name)
    assert tokens.shape == (4, model.layout.num_global_tokens + groups, width)
    assert prompts.shape == (4, depth, width)
    assert torch.isfinite(tokens).all() and torch.isfinite(prompts).all()


def _final_tokens(model: nn.Module, layout: pointpeft.BackboneLayout, cloud: torch.Tensor) -> torch.Tensor:
    """The backbone's own tokens at the place DAPT reads them (final norm, or last block)."""
    seen = []
    site = model.get_submodule(layout.final_norm or layout.blocks[-1])
    handle = site.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        model(cloud)
    handle.remove()
    out = seen[0]
    return out.transpose(0, 1) if layout.seq_first else out


@pytest.mark.parametrize("name", list(CASES))
def test_identity_dapt_and_disabled_adapter_reproduce_the_backbone(name, cloud):
    backbone = _build(name)
    original = copy.deepcopy(backbone)
    config = DAPTConfig(num_classes=5, rank=8, prompts=False, pool=("cls", "patch"))
    model = wrap_with_dapt(backbone, config, layout=CASES[name][1]).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TFTS):
                module.gamma.fill_(1.0)
                module.beta.zero_()
    expected = _final_tokens(original, model.layout, cloud)
    with torch.no_grad():
        tokens = model.forward_features(cloud).tokens
    # Not bit-exact everywhere: nn.TransformerEncoderLayer's fused eval path vs its Python path.
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)

    randomize_dapt(model)
    with torch.no_grad(), model.disable_adapter():
        bare, reference = model(cloud), original(cloud)
        if name == "openpoints":  # also the encoder's own output: (p_list, x_list, tokens)
            bare, reference = (bare, model.base_model.encoder(cloud)), (reference, original.encoder(cloud))

    def assert_same(got, want):  # a tensor, None, or (nested) tuples/lists of them
        if isinstance(want, (tuple, list)):
            assert isinstance(got, type(want)) and len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert_same(g, w)
        elif want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    assert_same(bare, reference)
    if name == "pointgpt":  # PointGPT's forward returns (logits, generation loss), both reproduced
        assert isinstance(reference, tuple) and len(reference) == 2 and reference[1].dim() == 0


def test_transformer_encoder_layer_fast_path_does_not_bypass_dapt(cloud):
    """In eval + no_grad, nn.TransformerEncoderLayer has a fused path that reads its weights directly;
    DAPT must still run (a non-identity TFTS changes the output)."""
    model = wrap_with_dapt(_torch_batch_first(), DAPTConfig(num_classes=5, rank=8)).eval()
    with torch.no_grad():
        before = model.forward_features(cloud).tokens
        layer_tfts = model.base_model.transformer.layers[1].base_layer.linear2.base_layer.tfts["default"]
        layer_tfts.beta.fill_(3.0)
        after = model.forward_features(cloud).tokens
    assert not torch.allclose(before, after)


def test_key_padding_mask_is_extended_for_prompts(cloud):
    model = wrap_with_dapt(_torch_batch_first(), DAPTConfig(num_classes=5, rank=8)).eval()
    randomize_dapt(model)
    mask = torch.zeros(4, 1 + model.base_model.num_group, dtype=torch.bool)
    mask[:, -4:] = True  # the last 4 patches are padding
    with torch.no_grad():
        masked = model(cloud, key_padding_mask=mask)
        plain = model(cloud)
    assert masked.shape == (4, 5) and torch.isfinite(masked).all()
    assert not torch.allclose(masked, plain)


def test_square_mask_padding_keeps_both_conventions():
    causal = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)  # MHA: True = blocked
    padded = pad_square_mask(causal, 1, 2)
    assert padded.shape == (6, 6)
    assert not padded[1:3].any() and not padded[:, 1:3].any()  # prompts see and are seen by all
    assert torch.equal(padded[[0, 3, 4, 5]][:, [0, 3, 4, 5]], causal)
    allowed = ~causal  # scaled_dot_product_attention: True = allowed
    padded = pad_square_mask(allowed, 1, 2)
    assert padded[1:3].all() and padded[:, 1:3].all()
    additive = torch.zeros(2, 4, 4).masked_fill(causal, float("-inf"))
    padded = pad_square_mask(additive, 1, 2)
    assert padded.shape == (2, 6, 6) and (padded[:, 1:3] == 0).all() and (padded[:, :, 1:3] == 0).all()


def test_pointgpt_cls_is_pooled_after_the_start_token(cloud):
    model = wrap_with_dapt(tiny_pointgpt(), DAPTConfig(num_classes=5, rank=8, pool=("cls",))).eval()
    assert model.head.cls_index == 1
    tokens, prompts = model.forward_features(cloud)
    torch.testing.assert_close(model.head.pooled_features(tokens, prompts), tokens[:, 1])


def test_packed_qkv_tfts_equals_a_tfts_after_the_projection():
    attention = nn.MultiheadAttention(16, 4, bias=False)
    wrapped = pointpeft.dapt.PackedQKVScaleShift(attention, pointpeft.dapt.backbone_copies.CopiesLink(), 48)
    wrapped.active_adapter = "a"
    tfts = TFTS(48, init_std=0.3)
    wrapped.tfts["a"] = tfts
    x = torch.randn(5, 2, 16)
    got = wrapped(x, x, x, need_weights=False)[0]
    # Twin: the same attention computed from a qkv Linear followed by the TFTS.
    qkv = tfts(x @ attention.in_proj_weight.T)
    q, k, v = qkv.chunk(3, dim=-1)

    def heads(t):
        return t.reshape(5, 2 * 4, 4).transpose(0, 1)

    weights = torch.softmax(heads(q) @ heads(k).transpose(1, 2) / 2.0, dim=-1)
    out = (weights @ heads(v)).transpose(0, 1).reshape(5, 2, 16)
    want = nn.functional.linear(out, attention.out_proj.weight, attention.out_proj.bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_separate_qkv_attention_is_skipped_with_one_warning(cloud):
    model = _torch_batch_first()
    dim = model.cls_token.shape[-1]
    for layer in model.transformer.layers:
        layer.self_attn = nn.MultiheadAttention(dim, 4, batch_first=True, kdim=dim + 1, vdim=dim + 1)
    layout = detect_layout(model)
    assert layout.block.qkv is None and layout.block.proj == "self_attn"
    with pytest.warns(UserWarning, match=r"no module for \['qkv'\]"):
        wrap_with_dapt(model, DAPTConfig(num_classes=5, rank=8))


def test_preset_on_the_wrong_model_says_what_is_missing():
    with pytest.raises(ValueError, match="preset 'pointgpt' expects the blocks at 'blocks.layers'"):
        wrap_with_dapt(tiny_recon(), DAPTConfig(num_classes=5), layout="pointgpt")
    with pytest.raises(ValueError, match="found no nn.TransformerEncoder"):
        preset_layout("torch_transformer_encoder", tiny_recon())
    with pytest.raises(ValueError, match="one of the presets"):
        wrap_with_dapt(tiny_recon(), DAPTConfig(num_classes=5), layout="point-mae")


def test_layout_round_trips_through_a_dict():
    layout = detect_layout(tiny_pointgpt())
    assert pointpeft.BackboneLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError, match="unknown keys"):
        pointpeft.BackboneLayout.from_dict({**layout.to_dict(), "stack": "x"})


def test_backbones_page_shows_every_preset():
    """docs/backbones.md gives the three lines for each preset, and names no preset that does not exist."""
    import pathlib
    import re

    page = (pathlib.Path(__file__).parents[1] / "docs" / "backbones.md").read_text()
    named = set(re.findall(r'layout="([a-z_]+)"', page))
    assert named == set(pointpeft.PRESETS)


def test_a_tfts_site_that_returns_no_tensor_is_named(cloud):
    """openpoints' patch_embed returns (points, features): naming it as the patch encoder is an error
    that says what to name instead, not a failure deep inside torch."""
    model = openpoints_official.tiny_openpoints()
    layout = dataclasses.replace(detect_layout(model), patch_encoder="encoder.patch_embed")
    dapt = wrap_with_dapt(model, DAPTConfig(num_classes=5, rank=8), layout=layout).eval()
    with pytest.raises(TypeError, match=r"PointPatchEmbed returned a tuple.*name the module that outputs"):
        dapt(cloud)
