"""The quirks of the real upstream backbones (their test doubles in ``tests/upstream``), each of which broke
pointpeft once:

* PointGPT defines a top-level ``norm`` that its forward never calls; the tokens end in ``blocks.ln_f``.
* ReCon's own fine-tuning model uses a ``*_contrast`` stream and image/text tokens: a checkpoint must fill
  them too.
* openpoints' builder returns ``BaseCls`` (the PointViT is its ``encoder``); its grouping allocates CUDA
  tensors; its checkpoints are ``{'model': ..., 'optimizer', 'scheduler', 'epoch'}`` with ``encoder.`` keys.
* Point-BERT's own fine-tuning loader reads ``transformer_q``, not ``transformer_k``.

Loading is checked against what each upstream's own fine-tuning loader does (``tests/upstream/checkpoints.py``),
in the DataParallel (``module.``) and DDP layouts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from tests.upstream import (
    act_official,
    openpoints_official,
    point_bert_official,
    point_mae_official,
    pointgpt_official,
    recon_official,
)
from tests.upstream import checkpoints as published
from torch import nn

import pointpeft
from pointpeft import DAPTConfig, detect_layout, wrap_with_dapt
from pointpeft.dapt.layout import final_norm_candidates, find_final_norm, observe_final_norm


def tiny_point_mae() -> nn.Module:
    """Point-MAE's fine-tuning model at the doubles' small size (width 48, depth 2, 8 groups of 16)."""
    config = SimpleNamespace(
        trans_dim=48, depth=2, drop_path_rate=0.1, cls_dim=5, num_heads=3, group_size=16, num_group=8,
        encoder_dims=48,
    )  # fmt: skip
    return point_mae_official.PointTransformer(config)


@pytest.fixture
def cpu_openpoints(monkeypatch):
    """openpoints' grouping as on a GPU machine: its CUDA-only buffers made on the points' device."""
    monkeypatch.setattr(openpoints_official, "cuda_buffer", openpoints_official.cpu_buffer)


def _cloud(batch: int = 2, points: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, points, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make()


# ------------------------------------------------------------------------------------------ PointGPT
def test_pointgpt_final_norm_is_the_one_its_forward_calls():
    model = pointgpt_official.tiny_pointgpt().eval()
    blocks = detect_layout(model).blocks
    # Both are named like a final norm; only blocks.ln_f runs after the blocks.
    assert set(final_norm_candidates(model, blocks)) == {"blocks.ln_f", "norm"}
    assert observe_final_norm(model, blocks, _cloud()) == "blocks.ln_f"
    assert find_final_norm(model, blocks) == "blocks.ln_f"  # by structure alone (no forward possible)
    assert detect_layout(model).final_norm == "blocks.ln_f"
    assert detect_layout(model, example_input=_cloud()).final_norm == "blocks.ln_f"
    assert pointpeft.preset_layout("pointgpt", model).final_norm == "blocks.ln_f"


def test_pointgpt_wraps_and_reads_the_tokens_after_ln_f():
    backbone = pointgpt_official.tiny_pointgpt().eval()
    original = copy.deepcopy(backbone)
    config = DAPTConfig(num_classes=4, rank=4, prompts=False, pool=("cls", "patch"))
    model = wrap_with_dapt(backbone, config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, pointpeft.dapt.TFTS):
                module.gamma.fill_(1.0)
                module.beta.zero_()
    seen = []
    original.blocks.ln_f.register_forward_hook(lambda m, a, out: seen.append(out))
    cloud = _cloud()
    with torch.no_grad():
        original(cloud)
        tokens = model.forward_features(cloud).tokens
    torch.testing.assert_close(tokens, seen[0].transpose(0, 1), rtol=1e-5, atol=1e-5)  # (L, B, C) there
    logits = model.train()(cloud)
    logits.sum().backward()
    assert logits.shape == (2, 4)


class _PostNormNamed(nn.Module):
    """A user's point transformer whose final norm is ``ln_post`` and which also keeps a ``norm`` that its
    forward never calls: ``points (B, N, 3)`` → tokens ``(B, 1 + N, 16)``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.blocks = nn.ModuleList([point_mae_official.Block(16, 2) for _ in range(2)])
        self.norm = nn.LayerNorm(16)  # unused, as PointGPT's
        self.ln_post = nn.LayerNorm(16)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.cls_token.expand(points.shape[0], -1, -1), self.encoder(points)), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def test_a_final_norm_of_any_name_is_found_by_observing_the_forward():
    model = _PostNormNamed()
    assert final_norm_candidates(model, ("blocks.0", "blocks.1")) == ["norm"]  # by name: the wrong one
    assert observe_final_norm(model, ("blocks.0", "blocks.1"), _cloud()) == "ln_post"
    assert detect_layout(model, example_input=_cloud()).final_norm == "ln_post"
    dapt = wrap_with_dapt(model, DAPTConfig(num_classes=3, rank=4), example_input=_cloud())
    assert dapt.layout.final_norm == "ln_post"
    assert dapt(_cloud()).shape == (2, 3)


def test_without_example_input_a_forward_on_random_points_decides_where_no_name_does():
    model = _PostNormNamed()
    del model.norm  # no norm named like a final norm: a forward on random points is observed
    assert final_norm_candidates(model, ("blocks.0", "blocks.1")) == []
    assert detect_layout(model).final_norm == "ln_post"


def test_a_single_final_norm_by_name_that_the_forward_skips_fails_the_first_forward():
    model = wrap_with_dapt(_PostNormNamed(), DAPTConfig(num_classes=3, rank=4))  # by name: 'norm'
    assert model.layout.final_norm == "norm"
    with pytest.raises(RuntimeError, match="did not call its final norm \\('norm'\\).*example_input=points"):
        model(_cloud())


class _NeedsLengths(_PostNormNamed):
    """As :class:`_PostNormNamed`, with a forward that needs a second argument (no probe can run it)."""

    def forward(self, points: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return super().forward(points)


def test_where_no_forward_can_be_observed_a_wrong_final_norm_fails_at_the_first_forward():
    model = wrap_with_dapt(_NeedsLengths(), DAPTConfig(num_classes=3, rank=4))  # by name: 'norm'
    assert model.layout.final_norm == "norm"
    with pytest.raises(RuntimeError, match="did not call its final norm \\('norm'\\)"):
        model(_cloud(), torch.ones(2))
    right = wrap_with_dapt(_NeedsLengths(), DAPTConfig(num_classes=3, rank=4), example_input=(_cloud(), None))
    assert right.layout.final_norm == "ln_post"


def test_a_forward_that_fails_on_example_input_is_a_value_error():
    model = pointgpt_official.tiny_pointgpt()
    with pytest.raises(ValueError, match="example_input: the forward of PointTransformer on it failed"):
        detect_layout(model, example_input=torch.rand(2, 4))


def test_observing_the_forward_leaves_the_model_as_it_was():
    model = pointgpt_official.tiny_pointgpt().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    observe_final_norm(model, detect_layout(model).blocks, _cloud())
    assert all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------------------------------- openpoints
def test_openpoints_base_cls_is_detected_inside_its_wrapper():
    model = openpoints_official.tiny_openpoints()
    layout = detect_layout(model)  # no forward needed: this works on a CPU, where its grouping cannot run
    assert layout.blocks == ("encoder.blocks.0", "encoder.blocks.1")
    assert layout.final_norm == "encoder.norm"
    assert layout.patch_encoder == "encoder.proj"
    assert layout.trainable_tokens == ("encoder.cls_token", "encoder.cls_pos")
    assert layout.num_global_tokens == 1
    preset = pointpeft.preset_layout("openpoints_pointvit", model)
    assert preset.blocks == layout.blocks and preset.final_norm == layout.final_norm
    assert preset.patch_encoder == layout.patch_encoder and preset.trainable_tokens == layout.trainable_tokens


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without CUDA")
def test_openpoints_grouping_fails_on_a_cpu_as_upstream_does():
    model = wrap_with_dapt(openpoints_official.tiny_openpoints(), DAPTConfig(num_classes=3, rank=4))
    with pytest.raises(TypeError, match="torch.cuda"):
        model(_cloud())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_openpoints_runs_unpatched_on_a_gpu():
    model = wrap_with_dapt(openpoints_official.tiny_openpoints().cuda(), DAPTConfig(num_classes=3, rank=4))
    logits = model.train()(_cloud().cuda())
    logits.sum().backward()
    assert logits.shape == (2, 3) and model.base_model.encoder.cls_token.grad is not None


def test_openpoints_trains_inside_base_cls(cpu_openpoints):
    model = wrap_with_dapt(openpoints_official.tiny_openpoints(), DAPTConfig(num_classes=3, rank=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.encoder.cls_token" in trainable
    assert not any(n.startswith("base_model.prediction.") for n in trainable)  # its own head stays frozen
    logits = model.train()(_cloud())
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert model.base_model.encoder.cls_token.grad is not None


# ------------------------------------------------------------------------------- checkpoint loading
# name: (double, published layout, the upstream's own loader)
LOADING: dict[str, tuple[Callable[[], nn.Module], Callable[..., dict], Callable[..., tuple]]] = {
    "point_mae": (tiny_point_mae, published.point_mae_checkpoint, published.load_like_point_mae),
    "act": (act_official.tiny_act, published.act_checkpoint, published.load_like_act),
    "recon": (recon_official.tiny_recon, published.recon_checkpoint, published.load_like_recon),
    "pointgpt": (
        pointgpt_official.tiny_pointgpt,
        published.pointgpt_checkpoint,
        published.load_like_pointgpt,
    ),
    "point_bert": (
        point_bert_official.tiny_point_bert,
        published.point_bert_checkpoint,
        published.load_like_point_bert,
    ),
}


@pytest.mark.parametrize("data_parallel", [True, False])
@pytest.mark.parametrize("name", list(LOADING))
def test_load_pretrained_loads_what_the_upstream_loader_loads(name, data_parallel):
    make, layout, upstream_loader = LOADING[name]
    pretrained = _seeded(make, 1).state_dict()
    checkpoint = layout(pretrained, data_parallel=data_parallel)
    theirs, ours = _seeded(make, 2), _seeded(make, 2)
    missing, unexpected = upstream_loader(theirs, checkpoint)
    result = pointpeft.load_pretrained(ours, checkpoint)
    assert result.source == name
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # Both report the same backbone tensors as missing (BatchNorm counters aside, which both leave).
    assert set(result.missing_keys) == {k for k in missing if not k.endswith("num_batches_tracked")}
    # Decoders, masks, ... are reported (Point-BERT's loader drops transformer_k and the dVAE silently).
    assert len(result.unexpected_keys) >= len(unexpected)


def test_recon_loads_its_contrast_stream_and_image_text_tokens():
    pretrained = _seeded(recon_official.tiny_recon, 1).state_dict()
    model = _seeded(recon_official.tiny_recon, 2)
    result = pointpeft.load_pretrained(
        model, published.recon_checkpoint(pretrained, with_frozen_encoders=True)
    )
    loaded = model.state_dict()
    extra = [
        k for k in pretrained if "_contrast." in k or k in ("img_token", "text_token", "img_pos", "text_pos")
    ]
    assert len(extra) > 20
    for key in extra:
        assert torch.equal(loaded[key], pretrained[key]), key
    assert not any("_contrast" in k or k.startswith(("img_", "text_")) for k in result.missing_keys)
    assert any(k.startswith("img_encoder.") for k in result.unexpected_keys)


def test_point_bert_reads_the_online_encoder_by_default_as_its_own_loader_does():
    pretrained = _seeded(point_bert_official.tiny_point_bert, 1).state_dict()
    checkpoint = published.point_bert_checkpoint(pretrained)
    model = _seeded(point_bert_official.tiny_point_bert, 2)
    pointpeft.load_pretrained(model, checkpoint)
    key = "blocks.blocks.0.attn.qkv.weight"
    assert torch.equal(model.state_dict()[key], pretrained[key])  # transformer_q
    pointpeft.load_pretrained(model, checkpoint, point_bert_encoder="momentum")
    assert torch.equal(model.state_dict()[key], pretrained[key] + 1.0)  # transformer_k (the double's + 1)


def test_openpoints_checkpoint_loads_into_base_cls_and_into_the_bare_pointvit():
    pretrained = _seeded(openpoints_official.tiny_openpoints, 1).state_dict()
    checkpoint = published.openpoints_checkpoint(pretrained)
    whole = _seeded(openpoints_official.tiny_openpoints, 2)
    result = pointpeft.load_pretrained(whole, checkpoint)
    assert result.source == "openpoints" and result.missing_keys == [] and result.unexpected_keys == []
    for key, value in whole.state_dict().items():
        assert torch.equal(value, pretrained[key]), key

    vit = _seeded(openpoints_official.tiny_openpoints, 3).encoder
    result = pointpeft.load_pretrained(vit, checkpoint)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(k.startswith("prediction.") for k in result.unexpected_keys)
    for key, value in vit.state_dict().items():
        assert torch.equal(value, pretrained["encoder." + key]), key


def test_loading_into_a_wrapped_backbone_fills_the_backbone(cpu_openpoints):
    pretrained = _seeded(recon_official.tiny_recon, 1).state_dict()
    model = wrap_with_dapt(_seeded(recon_official.tiny_recon, 2), DAPTConfig(num_classes=3, rank=4))
    result = pointpeft.load_pretrained(model, published.recon_checkpoint(pretrained))
    assert "blocks.blocks.0.attn_contrast.q.weight" not in result.missing_keys
    got = model.base_model.blocks.blocks[0].attn_contrast.q.weight
    assert torch.equal(got, pretrained["blocks.blocks.0.attn_contrast.q.weight"])


# ------------------------------------------------------------------------------------- adapter files
ROUND_TRIP: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "point_mae": (tiny_point_mae, "point_mae"),
    "act": (act_official.tiny_act, "point_mae"),
    "point_bert": (point_bert_official.tiny_point_bert, "point_bert"),
    "recon": (recon_official.tiny_recon, "recon"),
    "pointgpt": (pointgpt_official.tiny_pointgpt, "pointgpt"),
    "openpoints": (openpoints_official.tiny_openpoints, "openpoints_pointvit"),
}


@pytest.mark.parametrize("layout", ["detected", "preset"])
@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_adapter_round_trip_on_each_upstream_model(name, layout, tmp_path, cpu_openpoints):
    make, preset = ROUND_TRIP[name]
    chosen = None if layout == "detected" else preset
    model = wrap_with_dapt(_seeded(make, 0), DAPTConfig(num_classes=3, rank=4), layout=chosen)
    randomize = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=randomize))
    model.eval()
    cloud = _cloud()
    with torch.no_grad():
        expected = model(cloud)
    pointpeft.save_adapter(model, tmp_path)
    again = pointpeft.load_adapter(_seeded(make, 0), tmp_path).eval()  # the same frozen backbone
    with torch.no_grad():
        torch.testing.assert_close(again(cloud), expected, rtol=0, atol=0)
    other = _seeded(make, 9)  # another backbone of the same structure: the adapter loads, logits differ
    with torch.no_grad():
        assert not torch.equal(pointpeft.load_adapter(other, tmp_path).eval()(cloud), expected)


@pytest.mark.parametrize("name", ["point_mae", "point_bert", "recon", "pointgpt"])
def test_a_hand_built_pretrained_builtin_is_rebuilt_from_its_adapter_folder(name, tmp_path):
    """build, load_pretrained(file), wrap, save: load_adapter(DIR) alone rebuilds the backbone from the folder
    (its class, constructor arguments and checkpoint file) and computes the same logits."""
    cls = pointpeft.backbones.BACKBONES[name]
    sizes = dict(trans_dim=48, depth=2, num_heads=3, num_group=8, group_size=16)
    if name == "point_bert":
        sizes["encoder_dims"] = 32
    torch.manual_seed(1)
    torch.save({"base_model": cls(**sizes).state_dict()}, tmp_path / "pretrained.pth")
    torch.manual_seed(2)
    backbone = cls(**sizes)
    pointpeft.load_pretrained(backbone, tmp_path / "pretrained.pth")
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=3, rank=4)).eval()
    pointpeft.save_adapter(model, tmp_path / "adapter")
    torch.manual_seed(3)  # another random state: only the checkpoint makes the weights
    again = pointpeft.load_adapter(tmp_path / "adapter").eval()
    assert type(again.base_model) is cls
    with torch.no_grad():
        torch.testing.assert_close(again(_cloud()), model(_cloud()), rtol=0, atol=0)


def test_a_later_load_that_no_file_reproduces_forgets_the_recorded_checkpoint(tmp_path):
    sizes = dict(trans_dim=48, depth=2, num_heads=3, num_group=8, group_size=16)
    torch.manual_seed(1)
    torch.save({"base_model": pointpeft.backbones.ReCon(**sizes).state_dict()}, tmp_path / "pretrained.pth")
    backbone = pointpeft.backbones.ReCon(**sizes)
    pointpeft.load_pretrained(backbone, tmp_path / "pretrained.pth")
    other = {"base_model": pointpeft.backbones.ReCon(**sizes).state_dict()}
    pointpeft.load_pretrained(backbone, other)  # a mapping: no file to rebuild from
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=3, rank=4))
    pointpeft.save_adapter(model, tmp_path / "adapter")
    record = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["backbone"]
    assert record["pretrained"] is None  # not pretrained.pth, whose weights the backbone no longer has
