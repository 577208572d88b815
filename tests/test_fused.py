"""The fused execution (each block under selective activation checkpointing, pointpeft.dapt.execution)
against its plain twin (the wrappers running the backbone's own modules): same logits and gradients on
random models and inputs, and less saved for backward, on every block whatever its class or forward."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.upstream import openpoints_official
from tests.upstream.act_official import tiny_act
from tests.upstream.point_bert_official import tiny_point_bert
from tests.upstream.pointgpt_official import tiny_pointgpt
from tests.upstream.recon_official import tiny_recon
from torch import nn

import pointpeft
from conftest import randomize_dapt
from pointpeft import DAPTConfig, wrap_with_dapt
from pointpeft.backbones import PointMAE
from pointpeft.backbones.point_mae import Block
from pointpeft.dapt import prompt as prompt_module
from standins import TorchEncoderModel


def _step(model: nn.Module, points: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and every parameter gradient of one cross-entropy step, with the RNG at ``seed``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = model(points)
    labels = torch.arange(points.shape[0], device=logits.device) % logits.shape[-1]
    nn.functional.cross_entropy(logits.float(), labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _seeded(model: nn.Module, points: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return model(points)


def _relative_errors(got, ref) -> dict[str, float]:
    """``max|a - b| / max|b|`` of the logits and of each gradient. Gradients that are zero in exact
    arithmetic (the bias before the head's BatchNorm, a shift of the final tokens that the BatchNorm
    removes) hold only rounding noise of the terms that cancel, and small ones keep much of it; those
    (under 1e-2 of the largest gradient) are measured against the largest gradient of the model instead of
    their own size. (A CI run found a gradient 2.7e-3 of the largest, 3e-13 off in float64: 1.1e-10 of its
    own size, 3e-13 of the largest.) A wrong small gradient still fails: it is off by far more than 1e-10
    of the largest."""
    (logits, grads), (ref_logits, ref_grads) = got, ref
    assert torch.isfinite(logits).all()
    assert set(grads) == set(ref_grads)
    errors = {"logits": ((logits.double() - ref_logits.double()).abs().max() / ref_logits.abs().max()).item()}
    largest = max(g.abs().max().item() for g in ref_grads.values())
    for name, ref_grad in ref_grads.items():
        own = ref_grad.abs().max().item()
        scale = own if own >= 1e-2 * largest else largest
        errors[name] = (grads[name].double() - ref_grad.double()).abs().max().item() / scale
    return errors


def _global_errors(got, ref) -> tuple[float, float]:
    """Relative L2 errors of the logits and of all gradients taken as one vector."""
    (logits, grads), (ref_logits, ref_grads) = got, ref
    assert set(grads) == set(ref_grads) and torch.isfinite(logits).all()
    g = torch.cat([grads[n].double().flatten() for n in ref_grads])
    r = torch.cat([ref_grads[n].double().flatten() for n in ref_grads])
    return (
        ((logits.double() - ref_logits.double()).norm() / ref_logits.double().norm()).item(),
        ((g - r).norm() / r.norm()).item(),
    )


def _assert_as_accurate(got, plain, truth) -> None:
    """``got`` (float32) is as close to ``truth`` (float64) as the plain float32 path: within 1e-5, or
    twice the plain path's own error where that is larger (small random models cancel badly in float32
    on any path)."""
    for error, plain_error, what in zip(
        _global_errors(got, truth), _global_errors(plain, truth), ("logits", "grads"), strict=True
    ):
        assert error <= max(1e-5, 2 * plain_error), (what, error, plain_error)


def _assert_same_step(got, ref, tolerance: float) -> None:
    """Logits and every gradient within ``tolerance`` in :func:`_relative_errors`."""
    for name, error in _relative_errors(got, ref).items():
        assert error <= tolerance, f"{name}: relative error {error:.3g}"


class _Counting:
    """Counts the checkpointed block runs (a fast path that silently fell back to the plain one would make
    every comparison trivially true)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.blocks = 0
        run = prompt_module.run_checkpointed

        def count(*args, **kwargs):
            self.blocks += 1
            return run(*args, **kwargs)

        monkeypatch.setattr(prompt_module, "run_checkpointed", count)


@st.composite
def _settings(draw):
    dim = draw(st.sampled_from([16, 32]))
    return dict(
        backbone=dict(
            trans_dim=dim,
            encoder_dims=dim,
            depth=draw(st.integers(1, 3)),
            num_heads=draw(st.sampled_from([1, 2, 4])),
            num_group=draw(st.integers(4, 12)),
            group_size=draw(st.integers(2, 8)),
            drop_path_rate=draw(st.sampled_from([0.0, 0.3])),
            pos_mode=draw(st.sampled_from(["once", "every_block"])),
            qkv_bias=draw(st.booleans()),
        ),
        config=dict(
            rank=draw(st.integers(1, 8)),
            adapter_dropout=draw(st.sampled_from([0.0, 0.4])),
            tfts=draw(st.booleans()),
            prompts=(prompts := draw(st.booleans())),
            pool=draw(
                st.sampled_from(
                    [("cls", "prompt", "patch"), ("cls", "prompt"), ("prompt",)]
                    if prompts
                    else [("cls", "patch"), ("patch",), ("cls",)]
                )
            ),
        ),
        batch=draw(st.integers(2, 4)),
        train=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_settings())
def test_fused_and_recompute_compute_the_plain_function(case, monkeypatch):
    """In float64 the three executions agree to 1e-10: the same function, for any shape and setting.
    (float32 rounding is compared at realistic widths in the next test: on tiny random models a head
    BatchNorm over two clouds amplifies the rounding of any path past 1e-5.)"""
    seed = case["seed"]
    torch.manual_seed(seed)
    backbone = PointMAE(**case["backbone"]).double()
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=3, **case["config"]), execution="plain")
    randomize_dapt(model, seed)
    model.train(case["train"])
    points = torch.rand(case["batch"], 48, 3, generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
    truth = _step(model, points, seed)
    counting = _Counting(monkeypatch)
    results = {}
    for execution in ("fused", "recompute"):
        twin = copy.deepcopy(model)
        twin.execution = execution
        results[execution] = _step(twin, points, seed)
        _assert_same_step(results[execution], truth, 1e-10)
    assert counting.blocks == 2 * case["backbone"]["depth"]  # every block ran checkpointed, in both modes
    # without gradients every TFTS after a LayerNorm is folded into it
    twin = copy.deepcopy(model)
    twin.execution = "fused"
    with torch.no_grad():
        logits = [_seeded(m, points, seed) for m in (model, twin)]
    error = ((logits[1] - logits[0]).abs().max() / logits[0].abs().max()).item()
    assert error <= 1e-10, error
    # both re-run the block's forward in backward: bit for bit the same gradients
    for name, grad in results["fused"][1].items():
        assert torch.equal(grad, results["recompute"][1][name]), name


def _point_mae_like(options: dict, train: bool) -> tuple[nn.Module, torch.Tensor]:
    """Width 96 with 6 heads of 16, MLP 4C, 3 blocks, 32 groups of 16, drop path 0.2, random DAPT."""
    torch.manual_seed(0)
    backbone = PointMAE(
        trans_dim=96, encoder_dims=96, depth=3, num_heads=6, num_group=32, group_size=16, drop_path_rate=0.2
    )
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=5, **options), execution="plain")
    randomize_dapt(model, 0)
    model.train(train)
    return model, torch.rand(6, 256, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("train", [True, False])
def test_float32_fused_equals_plain_at_a_point_mae_like_shape(train):
    """The reference's OBJ_BG setting (rank 16 here, adapter dropout): fused and recompute within 1e-5
    of the plain path on the logits and every gradient."""
    model, points = _point_mae_like(dict(rank=16, adapter_dropout=0.3), train)
    plain = _step(model, points, 0)
    with torch.no_grad():
        plain_inference = _seeded(model, points, 0)
    for execution in ("fused", "recompute"):
        model.execution = execution
        _assert_same_step(_step(model, points, 0), plain, 1e-5)
    with torch.no_grad():
        error = (_seeded(model, points, 0) - plain_inference).abs().max() / plain_inference.abs().max()
    assert error <= 1e-5, error


@pytest.mark.parametrize(
    "options",
    [dict(rank=8, tfts=False, prompts=False, pool=("cls", "patch")), dict(rank=8, pool=("prompt",))],
)
def test_float32_fused_is_as_accurate_as_plain_in_ablations(options):
    """Without TFTS and prompts, or pooling prompts only, some gradients of a random model cancel badly:
    the plain float32 path is itself up to 5e-4 off the float64 result there. The fused path is as close
    to the float64 result as the plain one (:func:`_assert_as_accurate`)."""
    model, points = _point_mae_like(options, True)
    truth = _step(copy.deepcopy(model).double(), points.double(), 0)
    plain = _step(model, points, 0)
    model.execution = "fused"
    _assert_as_accurate(_step(model, points, 0), plain, truth)


def test_recompute_equals_fused_after_optimizer_steps(small_backbone, points):
    """Several AdamW steps in each mode, with drop path and adapter dropout: the same trajectory."""
    small_backbone.drop_path_rate = 0.0
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=4, rank=8, adapter_dropout=0.3))
    twins = {}
    for execution in ("fused", "recompute"):
        twin = copy.deepcopy(model)
        twin.execution = execution
        optimizer = torch.optim.AdamW([p for p in twin.parameters() if p.requires_grad], lr=1e-2)
        for step in range(3):
            logits, _ = _step(twin, points, seed=step)
            optimizer.step()
        twins[execution] = twin
    recomputed = twins["recompute"].state_dict()
    for name, value in twins["fused"].state_dict().items():
        assert torch.equal(value, recomputed[name]), name


def cuda_live_bytes(model: nn.Module, points: torch.Tensor) -> int:
    """Bytes of GPU memory that one training forward leaves allocated while its graph is alive: what it keeps
    for backward. (Saved-tensor hooks cannot count this: a checkpointed block's saved products are held by
    the checkpoint, not packed through the hooks.)"""
    import gc

    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    out = model(points)
    torch.cuda.synchronize()
    live = torch.cuda.memory_allocated() - base
    del out
    return live


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (memory is measured there)")
def test_fused_execution_keeps_far_less_for_backward():
    """The point of the fast path: at a Point-MAE-like shape (C = 64, 4 heads, MLP 4C, rank 16, 32
    groups) the fused blocks keep under 45% of what the plain path keeps, recompute under 10%."""
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=64, depth=4, num_heads=4, num_group=32, group_size=16, encoder_dims=64)
    config = DAPTConfig(num_classes=5, rank=16, adapter_dropout=0.5)
    model = wrap_with_dapt(backbone, config).cuda().train()
    points = torch.rand(16, 256, 3, device="cuda")
    saved = {}
    for execution in ("plain", "fused", "recompute"):
        model.execution = execution
        cuda_live_bytes(model, points)
        saved[execution] = cuda_live_bytes(model, points)
    assert saved["fused"] <= 0.45 * saved["plain"], saved
    assert saved["recompute"] <= 0.10 * saved["plain"], saved


def test_every_block_runs_the_fast_path_whatever_it_computes(small_backbone, points, monkeypatch):
    """A hook, a frozen weight set trainable, a subclass, a block whose forward is another function (post-norm):
    every block is checkpointed, the hook runs, the weight gets its gradient, and the step equals the plain
    path's (the fast path runs the block's own forward, so it needs no known structure)."""
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=4, rank=8))
    blocks = model.base_model.blocks.blocks
    calls = []
    blocks[0].base_layer.attn.qkv.register_forward_hook(lambda *args: calls.append(1))
    blocks[1].base_layer.norm2.base_layer.weight.requires_grad_(True)
    counting = _Counting(monkeypatch)
    _, grads = _step(model, points, seed=0)
    assert calls == [1, 1]  # the forward, and its recomputation in backward
    assert "base_model.blocks.blocks.1.base_layer.norm2.base_layer.weight" in grads
    assert counting.blocks == len(blocks)

    class SameBlock(Block):
        pass

    class PostNormBlock(Block):
        def forward(self, x):
            x = self.norm1(x + self.drop_path(self.attn(x)))
            return self.norm2(x + self.drop_path(self.mlp(x)))

    for cls in (SameBlock, PostNormBlock):
        torch.manual_seed(0)
        backbone = PointMAE(trans_dim=32, depth=1, num_heads=4, num_group=16, group_size=8, encoder_dims=32)
        backbone.blocks.blocks[0].__class__ = cls
        wrapped = wrap_with_dapt(backbone.double(), DAPTConfig(num_classes=4, rank=8), execution="plain")
        randomize_dapt(wrapped, 0)
        plain = _step(wrapped, points.double(), seed=0)
        wrapped.execution = "fused"
        counting.blocks = 0
        _assert_same_step(_step(wrapped, points.double(), seed=0), plain, 1e-10)
        assert counting.blocks == 1, cls
        assert wrapped.execution_report() == (pointpeft.BlockExecution("blocks.blocks.0", "fused", ""),)


# The upstream test doubles (tests/upstream) and a sequence-first nn.TransformerEncoder user model.
OTHER_BACKBONES = {
    "recon": (tiny_recon, "recon"),
    "pointgpt": (tiny_pointgpt, "pointgpt"),
    "point_bert": (tiny_point_bert, "point_bert"),
    "act": (tiny_act, "point_mae"),
    "openpoints": (openpoints_official.tiny_openpoints, "openpoints_pointvit"),
    "torch_seq_first": (
        lambda: TorchEncoderModel(batch_first=False, norm_first=True),
        "torch_transformer_encoder",
    ),
}


@pytest.mark.parametrize("name", list(OTHER_BACKBONES))
def test_other_backbones_get_the_fast_path(name, monkeypatch):
    """Backbones of other structures (ReCon, PointGPT, Point-BERT, ACT, openpoints, sequence-first
    nn.TransformerEncoder) get the fast path in every block and compute the plain path's function."""
    # openpoints' grouping allocates torch.cuda tensors; these CPU clouds need CPU buffers
    monkeypatch.setattr(openpoints_official, "cuda_buffer", openpoints_official.cpu_buffer)
    build, preset = OTHER_BACKBONES[name]
    torch.manual_seed(0)
    model = wrap_with_dapt(
        build().double(), DAPTConfig(num_classes=3, rank=4), layout=preset, execution="plain"
    )
    randomize_dapt(model, 0)
    model.train()
    points = torch.rand(4, 64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    plain = _step(model, points, seed=0)
    counting = _Counting(monkeypatch)
    model.execution = "fused"
    _assert_same_step(_step(model, points, seed=0), plain, 1e-10)
    assert counting.blocks == len(model.layout.blocks)


def test_bf16_autocast_fused_is_as_accurate_as_plain(small_backbone, points):
    """Under bf16 autocast both paths round; against the float64 result, the fused gradients (all of
    them, as one vector) are no further off than the plain path's, and the logits agree."""
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=4, rank=8), execution="plain")
    randomize_dapt(model, 0)
    model.eval()  # no BatchNorm batch statistics: the comparison is of the backbone's computation
    truth_logits, truth = _step(copy.deepcopy(model).double(), points.double(), 0)
    errors, logits = {}, {}
    for execution in ("plain", "fused"):
        model.execution = execution
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits[execution], grads = _step(model, points, 0)
        assert set(grads) == set(truth)
        assert all(grads[n].dtype == torch.float32 and torch.isfinite(grads[n]).all() for n in grads)
        got = torch.cat([grads[n].double().flatten() for n in truth])
        want = torch.cat([truth[n].flatten() for n in truth])
        errors[execution] = ((got - want).norm() / want.norm()).item()
    assert errors["fused"] <= 1.25 * errors["plain"] + 1e-3, errors
    assert errors["plain"] < 0.2, errors  # bf16 rounding, not a broken gradient
    scale = truth_logits.abs().max().item()
    torch.testing.assert_close(logits["fused"], logits["plain"], rtol=0.05, atol=0.05 * scale)


def test_execution_is_validated_and_switchable(small_backbone):
    with pytest.raises(ValueError, match="execution must be one of"):
        wrap_with_dapt(small_backbone, DAPTConfig(num_classes=3), execution="fast")
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=3))
    assert model.execution == "fused"
    model.execution = "recompute"
    assert copy.deepcopy(model).execution == "recompute"
    with pytest.raises(ValueError, match="execution must be one of"):
        model.execution = "cuda"


def test_full_finetune_fused_attention_is_the_plain_function(points):
    """Fused attention in full fine-tuning: 1e-10 of the plain path in float64, as accurate in float32."""
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=32, depth=2, num_heads=4, num_group=16, group_size=8, encoder_dims=32)
    torch.manual_seed(1)
    plain = pointpeft.full_finetune(copy.deepcopy(backbone), 4, execution="plain").train()
    torch.manual_seed(1)
    fused = pointpeft.full_finetune(backbone, 4, execution="fused").train()
    assert fused.base_model.blocks.blocks[0].attn.fused and not plain.base_model.blocks.blocks[0].attn.fused
    truth = _step(copy.deepcopy(plain).double(), points.double(), 0)
    _assert_same_step(_step(copy.deepcopy(fused).double(), points.double(), 0), truth, 1e-10)
    _assert_as_accurate(_step(fused, points, 0), _step(plain, points, 0), truth)
    with pytest.raises(ValueError, match="execution must be"):
        pointpeft.full_finetune(
            PointMAE(trans_dim=32, depth=1, num_heads=4, encoder_dims=32), 3, execution="x"
        )


@pytest.mark.parametrize("train", [True, False])
def test_frozen_patch_encoder_gives_the_same_values_and_statistics(train):
    """Without gradients the patch encoder runs channels-last, frees each intermediate early and
    max-pools without indices: the same tokens and BatchNorm running statistics up to float32 rounding
    (a reduction in another order), and exactly the same in float64 up to its rounding."""
    from pointpeft.backbones.point_mae import PatchEncoder

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        encoder = PatchEncoder(48).train(train).to(dtype)
        groups = torch.randn(3, 8, 16, 3, dtype=dtype)
        with_grad, frozen = copy.deepcopy(encoder), copy.deepcopy(encoder)
        for _ in range(2):  # the second call sees updated running statistics in train mode
            expected = with_grad(groups.clone().requires_grad_())
            with torch.no_grad():
                got = frozen(groups)
            assert got.shape == expected.shape == (3, 8, 48)
            assert (got - expected.detach()).abs().max() <= tol * expected.abs().max()
        for (name, a), b in zip(with_grad.state_dict().items(), frozen.state_dict().values(), strict=True):
            assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol), name
            assert a.dtype == b.dtype, name


def test_frozen_patch_encoder_with_a_hook_runs_its_layers():
    """A hook on one of the encoder's layers is honoured: the frozen forward then calls every layer."""
    from pointpeft.backbones.point_mae import PatchEncoder

    torch.manual_seed(0)
    encoder = PatchEncoder(32).train()
    seen = []
    encoder.second_conv[0].register_forward_hook(lambda m, args, out: seen.append(out.shape))
    reference = copy.deepcopy(encoder)
    groups = torch.randn(2, 4, 8, 3)
    with torch.no_grad():
        got = encoder(groups)
    assert seen == [(8, 512, 8)]
    assert torch.equal(got, reference(groups.clone().requires_grad_()))  # layer by layer: bit for bit


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_of_any_rank_does_what_the_module_does(momentum, track, train):
    """The helper that applies a BatchNorm1d to channels-last 4-D inputs matches the module's own forward
    on 3-D inputs: output, running statistics and the count of batches seen."""
    from pointpeft.backbones.point_mae import batch_norm_any_rank

    torch.manual_seed(0)
    bn = nn.BatchNorm1d(6, momentum=momentum, track_running_stats=track).double().train(train)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    twin = copy.deepcopy(bn)
    for _ in range(3):
        x = torch.randn(4, 6, 5, dtype=torch.float64)
        expected = bn(x)
        got = batch_norm_any_rank(twin, x.unsqueeze(-1).contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got.squeeze(-1), expected, rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(bn.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_loading_weights_after_a_fused_bf16_step_uses_the_new_weights(small_backbone, points):
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=4, rank=8)).eval()
    randomize_dapt(model, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(points)  # with gradients: a forward that might keep bf16 casts of the frozen weights
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if ".base_layer." in name and name.endswith("weight") and value.dim() == 2:
                    value.mul_(0.5)
        fused = model(points).detach()
        model.execution = "plain"
        plain = model(points).detach()
    torch.testing.assert_close(fused, plain, rtol=0.05, atol=0.05 * plain.abs().max().item())


def test_inference_folds_are_cached_and_follow_every_change():
    """Without gradients the TFTS are folded into the frozen weights; a TFTS or frozen weight changed in
    place (an optimizer step, ``load_state_dict``) or a weight replaced is folded anew, so the fused eval
    forward keeps matching the plain one. (The folds were once cached across calls; they are now computed
    in each call, tests/test_hostile_fused.py.)"""
    model, points = _point_mae_like({}, train=False)
    plain = copy.deepcopy(model)
    model.execution = "fused"

    def check():
        with torch.no_grad():
            got, expected = model(points), plain(points)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    check()
    check()
    for target in (model, plain):
        with torch.no_grad():
            target.base_model.blocks.blocks[1].base_layer.mlp.base_layer.fc1.tfts.default.gamma.mul_(1.5)
    check()
    state = {
        k: v + 0.01 for k, v in plain.base_model.blocks.blocks[0].base_layer.attn.qkv.state_dict().items()
    }
    for target in (model, plain):
        target.base_model.blocks.blocks[0].base_layer.attn.qkv.load_state_dict(state)
    check()
    for target in (model, plain):
        fc2 = target.base_model.blocks.blocks[2].base_layer.mlp.base_layer.fc2.base_layer
        fc2.weight = nn.Parameter(fc2.weight.detach() * 0.5, requires_grad=False)
    check()
