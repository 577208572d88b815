"""Tests of the upstream test doubles (tests/upstream) and the upstream checkpoint layouts/loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from tests.upstream import checkpoints as ck
from tests.upstream import openpoints_official
from tests.upstream.act_official import tiny_act
from tests.upstream.point_bert_official import tiny_point_bert
from tests.upstream.pointgpt_official import nearest_chain_order, tiny_pointgpt
from tests.upstream.recon_official import tiny_recon
from torch import nn


@pytest.fixture
def cpu_openpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openpoints_official, "cuda_buffer", openpoints_official.cpu_buffer)


def _logits(model: nn.Module, pts: torch.Tensor) -> torch.Tensor:
    out = model(pts)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("factory", [tiny_recon, tiny_pointgpt, tiny_point_bert, tiny_act])
def test_forward_shape_on_cpu(factory: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    logits = _logits(model, torch.randn(2, 256, 3))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without CUDA")
def test_openpoints_fails_on_cpu_in_its_cuda_allocation_until_patched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = openpoints_official.tiny_openpoints().eval()
    with pytest.raises(TypeError, match=r"torch\.cuda\.IntTensor"):
        model(torch.randn(2, 256, 3))
    monkeypatch.setattr(openpoints_official, "cuda_buffer", openpoints_official.cpu_buffer)
    assert model(torch.randn(2, 256, 3)).shape == (2, 5)


def test_pointgpt_forward_returns_logits_and_generation_loss_and_never_calls_top_norm() -> None:
    model = tiny_pointgpt().eval()
    called: list[str] = []
    model.norm.register_forward_hook(lambda *_: called.append("norm"))
    model.blocks.ln_f.register_forward_hook(lambda *_: called.append("ln_f"))
    logits, loss = model(torch.randn(2, 256, 3))
    assert logits.shape == (2, 5) and loss.dim() == 0 and loss.item() > 0
    assert called == ["ln_f"]


def test_pointgpt_chain_order_visits_every_centre_once_from_zero() -> None:
    center = torch.tensor([[[0.0, 0, 0], [3, 0, 0], [1, 0, 0], [2, 0, 0]]])
    assert nearest_chain_order(center).tolist() == [[0, 2, 3, 1]]


def test_recon_feature_uses_the_image_and_text_tokens() -> None:
    torch.manual_seed(0)
    model = tiny_recon().eval()
    pts = torch.randn(2, 256, 3)
    before = model(pts)
    with torch.no_grad():
        model.text_token.add_(torch.randn_like(model.text_token))  # a constant is normalised away
    assert not torch.allclose(before, model(pts))
    assert model.cls_head_finetune[0].in_features == 4 * 48


def test_recon_block_global_tokens_do_not_change_patch_tokens() -> None:
    block = tiny_recon().blocks.blocks[0].eval()
    x = torch.randn(2, 3 + 8, 48)
    y = x.clone()
    y[:, :3] += 5.0 * torch.randn(
        2, 3, 48, generator=torch.Generator().manual_seed(1)
    )  # not a constant shift,
    # which the block's LayerNorm would remove (then the second assertion rests on rounding alone)
    assert torch.allclose(block(x)[:, 3:], block(y)[:, 3:])
    assert not torch.allclose(block(x)[:, :3], block(y)[:, :3])


def _backbone_keys(model: nn.Module, head: tuple[str, ...]) -> set[str]:
    return {k for k in model.state_dict() if not any(h in k for h in head)}


CASES: list[
    tuple[str, Callable[[], nn.Module], Callable[..., dict[str, Any]], Callable[..., ck.LoadResult], str]
] = [
    ("recon", tiny_recon, ck.recon_checkpoint, ck.load_like_recon, "MAE_encoder."),
    ("pointgpt", tiny_pointgpt, ck.pointgpt_checkpoint, ck.load_like_pointgpt, "GPT_Transformer."),
    ("point_bert", tiny_point_bert, ck.point_bert_checkpoint, ck.load_like_point_bert, "transformer_q."),
    ("act", tiny_act, ck.act_checkpoint, ck.load_like_act, "ACT_encoder."),
]


@pytest.mark.parametrize("data_parallel", [True, False])
@pytest.mark.parametrize(("name", "factory", "save", "load", "prefix"), CASES)
def test_published_layout_and_upstream_loader(
    name: str,
    factory: Callable[[], nn.Module],
    save: Callable[..., dict[str, Any]],
    load: Callable[..., ck.LoadResult],
    prefix: str,
    data_parallel: bool,
) -> None:
    torch.manual_seed(0)
    source = factory()
    ckpt = save(source.state_dict(), data_parallel=data_parallel)
    assert set(ckpt) == {"base_model", "optimizer", "epoch", "metrics", "best_metrics"}
    keys = list(ckpt["base_model"])
    lead = ("module." if data_parallel else "") + prefix
    assert all(k.startswith("module.") == data_parallel for k in keys)
    assert any(k.startswith(lead) for k in keys)

    torch.manual_seed(1)
    target = factory()
    missing, unexpected = load(target, ckpt)
    expected_missing = {
        "recon": {k for k in target.state_dict() if k.startswith("cls_head_finetune")},
        "pointgpt": {k for k in target.state_dict() if "cls_head_finetune" in k or "cls_norm" in k}
        | {"cls_token", "cls_pos"},
        "point_bert": {k for k in target.state_dict() if k.startswith("cls_head_finetune")},
        "act": {k for k in target.state_dict() if k.startswith("cls_head_finetune")},
    }[name]
    # BatchNorm fills in a missing num_batches_tracked itself, so load_state_dict does not report it.
    assert set(missing) == {k for k in expected_missing if not k.endswith("num_batches_tracked")}
    assert all("cls_head_finetune" not in k for k in unexpected)
    loaded = set(target.state_dict()) - expected_missing
    for key in loaded:
        assert torch.equal(target.state_dict()[key], source.state_dict()[key]), key


def test_point_bert_reads_transformer_q_and_drops_the_rest() -> None:
    model = tiny_point_bert()
    ckpt = ck.point_bert_checkpoint(model.state_dict())
    keys = ckpt["base_model"]
    assert any(k.startswith("module.transformer_k.") for k in keys)
    assert "module.queue" in keys and any(k.startswith("module.dvae.") for k in keys)
    _, unexpected = ck.load_like_point_bert(tiny_point_bert(), ckpt)
    assert set(unexpected) == {"mask_token", "lm_head.weight"}


def test_point_mae_layout_has_mae_encoder_prefix_and_no_cls_token() -> None:
    from types import SimpleNamespace

    from tests.upstream.point_mae_official import PointTransformer

    config = SimpleNamespace(
        trans_dim=48,
        depth=2,
        drop_path_rate=0.0,
        cls_dim=5,
        num_heads=3,
        group_size=16,
        num_group=8,
        encoder_dims=48,
    )
    model = PointTransformer(config)
    ckpt = ck.point_mae_checkpoint(model.state_dict())
    assert "module.MAE_encoder.norm.weight" in ckpt["base_model"]
    missing, unexpected = ck.load_like_point_mae(PointTransformer(config), ckpt)
    assert {"cls_token", "cls_pos"} <= set(missing)
    assert "mask_token" in unexpected


def test_pointgpt_loader_keyerror_on_pretrain_key_with_head() -> None:
    ckpt = {"base_model": {"module.GPT_Transformer.blocks.cls_head_finetune.0.weight": torch.zeros(1)}}
    with pytest.raises(KeyError):
        ck.load_like_pointgpt(tiny_pointgpt(), ckpt)


@pytest.mark.usefixtures("cpu_openpoints")
def test_openpoints_layout_and_loader_modes() -> None:
    torch.manual_seed(0)
    source = openpoints_official.tiny_openpoints()
    ckpt = ck.openpoints_checkpoint(source.state_dict())
    assert set(ckpt) == {"model", "optimizer", "scheduler", "epoch", "best_val"}
    assert all(k.startswith(("encoder.", "prediction.")) for k in ckpt["model"])
    torch.manual_seed(1)
    target = openpoints_official.tiny_openpoints()
    assert ck.load_like_openpoints(target, ckpt) == ([], [])
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    missing, unexpected = ck.load_like_openpoints(target.encoder, ckpt)  # 'finetune_encoder' mode
    encoder_keys = {k for k in target.encoder.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(missing) == encoder_keys and len(unexpected) == len(ckpt["model"])
