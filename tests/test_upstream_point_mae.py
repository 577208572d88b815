"""DAPT on the official Point-MAE fine-tuning model as users bring it (its test double in
``tests/upstream/point_mae_official.py``): the layout is found, every block runs the fast path, the fast
path computes the plain path's logits and gradients, keeps under 45% of what the plain path keeps for
backward, and a block of another structure (post-norm) runs the fast path too and computes its own forward."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils import checkpoint

import pointpeft
from conftest import randomize_dapt
from upstream.point_mae_official import Block, PointTransformer

DEPTH = 3
BLOCKS = [f"blocks.blocks.{i}" for i in range(DEPTH)]
Step = tuple[torch.Tensor, dict[str, torch.Tensor]]


def official(**overrides: Any) -> PointTransformer:
    """The double at a small size: width 64, 4 heads, 3 blocks, 32 groups of 16 points, 5 classes."""
    values: dict[str, Any] = dict(
        trans_dim=64,
        depth=DEPTH,
        drop_path_rate=0.0,
        cls_dim=5,
        num_heads=4,
        group_size=16,
        num_group=32,
        encoder_dims=64,
    )
    values.update(overrides)
    torch.manual_seed(0)
    return PointTransformer(SimpleNamespace(**values))


def cloud(batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(batch, 128, 3)`` points in [-1, 1)."""
    return (torch.rand(batch, 128, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dtype)


def step(model: nn.Module, points: torch.Tensor, seed: int = 0) -> Step:
    """Logits and the gradient of every trainable parameter after one cross-entropy step, RNG at ``seed``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = model(points)
    labels = torch.arange(points.shape[0]) % logits.shape[-1]
    nn.functional.cross_entropy(logits, labels).backward()
    grads = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{name} got no gradient"
            grads[name] = parameter.grad.clone()
    return logits.detach(), grads


def relative_errors(got: Step, ref: Step, scale: str = "own") -> dict[str, float]:
    """``max|a - b| / max|b|`` of the logits and of each gradient.

    With ``scale="own"`` each gradient is measured against its own size, except the few that are zero in
    exact arithmetic (in training, the bias of the head's linear layer before its BatchNorm, and the
    shift of the final tokens, which that BatchNorm removes): they hold only the rounding noise of
    cancelling terms, under 1e-9 of the largest gradient, and are measured against the largest gradient.
    With ``scale="largest"`` every gradient is measured against the largest gradient of the step.
    """
    (logits, grads), (ref_logits, ref_grads) = got, ref
    assert set(grads) == set(ref_grads)
    assert torch.isfinite(logits).all() and ref_logits.abs().max() > 0
    errors = {"logits": ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()}
    largest = max(g.abs().max().item() for g in ref_grads.values())
    assert largest > 0
    for name, reference in ref_grads.items():
        assert torch.isfinite(grads[name]).all(), name
        own = reference.abs().max().item()
        size = own if scale == "own" and own >= 1e-9 * largest else largest
        errors[name] = (grads[name] - reference).abs().max().item() / size
    return errors


def assert_same_step(got: Step, ref: Step, tolerance: float, own_tolerance: float | None = None) -> None:
    """Logits and gradients within ``tolerance`` of their own size; with ``own_tolerance``, gradients
    within ``tolerance`` of the largest gradient and within ``own_tolerance`` of their own size.

    The second form is for steps where a gradient can be the small remainder of much larger terms that
    cancel (training with a batch of 2: the head's BatchNorm leaves only the difference of the two
    clouds' contributions). Its float64 rounding noise is set by those terms, not by its own size, so it
    is bounded against the largest gradient; a wrong term in it would still be off by far more than
    ``own_tolerance`` of its size.
    """
    checks = (
        [("own", tolerance)] if own_tolerance is None else [("largest", tolerance), ("own", own_tolerance)]
    )
    for scale, bound in checks:
        errors = relative_errors(got, ref, scale)
        worst = max(errors, key=errors.__getitem__)
        assert errors[worst] <= bound, f"{worst}: relative error {errors[worst]:.3g} (against {scale})"


def fused_and_plain(model: pointpeft.DAPTModel) -> tuple[pointpeft.DAPTModel, pointpeft.DAPTModel]:
    """Two copies of ``model``, in the ``"fused"`` and the ``"plain"`` execution."""
    fused, plain = copy.deepcopy(model), copy.deepcopy(model)
    fused.execution, plain.execution = "fused", "plain"
    return fused, plain


def retained_bytes(model: nn.Module, points: torch.Tensor) -> int:
    """Bytes that ``model(points)`` leaves allocated (on the CPU) while its output is alive, the output's
    own storage left out: in a training forward, everything autograd keeps for backward.

    Counted as the net allocation of the forward by the profiler's memory tracking, which sees what a
    checkpointed block keeps. Saved-tensor hooks (``torch.autograd.graph.saved_tensors_hooks``) do not: a
    checkpoint installs its own hooks inside the block and keeps the saved products itself, so an outer
    hook sees only the block's inputs and would count the fused path as if it were the recompute path.
    Parameters and buffers are allocated before the forward and so not counted.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(points)
    net = sum(int(event.self_cpu_memory_usage) for event in prof.events())
    return net - int(out.untyped_storage().nbytes())


class PostNormBlock(Block):
    """The double's block with a post-norm forward: ``norm(x + branch(x))``, the same modules."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_path(self.attn(x)))
        out: torch.Tensor = self.norm2(x + self.drop_path(self.mlp(x)))
        return out


def post_norm_official() -> PointTransformer:
    """The double with every block replaced by a :class:`PostNormBlock` holding the same weights."""
    model = official()
    for i, block in enumerate(model.blocks.blocks):
        assert isinstance(block, Block)
        post = PostNormBlock(model.trans_dim, block.attn.num_heads)
        post.load_state_dict(block.state_dict())
        model.blocks.blocks[i] = post
    return model


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("layout", [None, "point_mae"])
def test_every_block_of_the_official_model_runs_the_fast_path(layout: str | None) -> None:
    model = pointpeft.wrap_with_dapt(
        official(), pointpeft.DAPTConfig(num_classes=5, rank=8), layout=layout
    ).train()
    assert list(model.layout.blocks) == BLOCKS
    assert (model.layout.patch_encoder, model.layout.final_norm) == ("encoder", "norm")
    assert set(model.layout.trainable_tokens) == {"cls_token", "cls_pos"}
    report = model.execution_report()
    assert all(isinstance(entry, pointpeft.BlockExecution) for entry in report)
    assert [entry.block for entry in report] == BLOCKS
    assert [(entry.execution, entry.reason) for entry in report] == [("fused", "")] * DEPTH, report
    logits, grads = step(model, cloud(4))
    assert logits.shape == (4, 5)
    assert all(torch.isfinite(g).all() for g in grads.values())
    # The report follows the execution: in the plain execution every block says so, and why.
    model.execution = "plain"
    report = model.execution_report()
    assert [entry.execution for entry in report] == ["plain"] * DEPTH
    assert all(entry.reason for entry in report), report


@pytest.mark.parametrize("train", [False, True])
def test_fused_equals_plain_on_the_official_model_in_float64(train: bool) -> None:
    model = pointpeft.wrap_with_dapt(
        official().double(), pointpeft.DAPTConfig(num_classes=5, rank=8, adapter_dropout=0.0)
    )
    randomize_dapt(model, 0)
    fused, plain = fused_and_plain(model.train(train))
    assert [entry.execution for entry in fused.execution_report()] == ["fused"] * DEPTH
    points = cloud(4, torch.float64)
    assert_same_step(step(fused, points), step(plain, points), 1e-10)


@settings(max_examples=8, deadline=None)
@given(
    width_heads=st.sampled_from([(48, 4), (48, 6), (64, 4), (96, 6)]),
    depth=st.integers(2, 3),
    drop_path_rate=st.sampled_from([0.0, 0.3]),
    batch=st.integers(2, 4),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_equals_plain_on_official_models_of_any_size(
    width_heads: tuple[int, int], depth: int, drop_path_rate: float, batch: int, train: bool, seed: int
) -> None:
    """The same at other widths, head counts and depths, with stochastic depth drawn in training (the
    fast path redraws the same masks when it recomputes a block)."""
    width, heads = width_heads
    backbone = official(
        trans_dim=width, encoder_dims=width, num_heads=heads, depth=depth, drop_path_rate=drop_path_rate
    )
    model = pointpeft.wrap_with_dapt(
        backbone.double(), pointpeft.DAPTConfig(num_classes=5, rank=8, adapter_dropout=0.0)
    )
    randomize_dapt(model, seed)
    fused, plain = fused_and_plain(model.train(train))
    points = cloud(batch, torch.float64)
    ref = step(plain, points, seed)
    assert_same_step(step(fused, points, seed), ref, 1e-10, own_tolerance=1e-6)


def test_fused_keeps_under_45_percent_of_the_plain_path_for_backward() -> None:
    model = pointpeft.wrap_with_dapt(
        official(drop_path_rate=0.1), pointpeft.DAPTConfig(num_classes=5, rank=8, adapter_dropout=0.1)
    ).train()
    points = cloud(8)
    kept = {}
    for execution in ("plain", "fused", "recompute"):
        model.execution = execution
        kept[execution] = retained_bytes(model, points)
    assert kept["fused"] <= 0.45 * kept["plain"], kept
    # Run eagerly, "fused" keeps each block's input only, as "recompute" does (the products: compiled).
    assert kept["fused"] <= 1.02 * kept["recompute"], kept


def test_retained_bytes_sees_what_a_selective_checkpoint_keeps() -> None:
    """The measure of the previous test counts the products a selectively checkpointed function keeps
    (here the one ``(64, 256)`` float32 product of a linear layer), which saved-tensor hooks miss."""
    if not hasattr(checkpoint, "create_selective_checkpoint_contexts"):
        pytest.skip("selective checkpointing needs torch >= 2.4")
    layer = nn.Linear(32, 256)

    def keep_products(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> checkpoint.CheckpointPolicy:
        if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            return checkpoint.CheckpointPolicy.MUST_SAVE
        return checkpoint.CheckpointPolicy.PREFER_RECOMPUTE

    def context() -> Any:
        return checkpoint.create_selective_checkpoint_contexts(keep_products)

    class Checkpointed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = checkpoint.checkpoint(
                lambda t: layer(t).relu().sum(-1), x, use_reentrant=False, context_fn=context
            )
            return out

    x = torch.rand(64, 32, requires_grad=True)
    assert retained_bytes(Checkpointed(), x) >= 64 * 256 * 4


def test_a_post_norm_block_runs_the_fast_path_too() -> None:
    """The fast path runs each block's own forward, so a block of another structure (post-norm) gets it as
    well (the next test: and still computes its own function)."""
    model = pointpeft.wrap_with_dapt(post_norm_official(), pointpeft.DAPTConfig(num_classes=5, rank=8))
    report = model.execution_report()
    assert [entry.block for entry in report] == BLOCKS
    assert [entry.execution for entry in report] == ["fused"] * DEPTH, report
    assert not any(entry.reason for entry in report), report


@pytest.mark.parametrize("train", [False, True])
def test_a_post_norm_block_computes_its_own_forward(train: bool) -> None:
    """Whatever the default execution does with a post-norm block, it computes the post-norm block: the
    plain execution's logits and gradients (float64, 1e-10), which differ from the pre-norm model's."""
    config = pointpeft.DAPTConfig(num_classes=5, rank=8, adapter_dropout=0.0)
    model = pointpeft.wrap_with_dapt(post_norm_official().double(), config)
    randomize_dapt(model, 0)
    default, plain = copy.deepcopy(model).train(train), copy.deepcopy(model).train(train)
    plain.execution = "plain"
    points = cloud(4, torch.float64)
    got, ref = step(default, points), step(plain, points)
    assert_same_step(got, ref, 1e-10)
    pre_norm = pointpeft.wrap_with_dapt(official().double(), config, execution="plain")
    randomize_dapt(pre_norm, 0)
    other = step(pre_norm.train(train), points)
    assert relative_errors(other, ref)["logits"] > 1e-3
