"""Hostile in-place changes against the fused execution (issue item 4).

However a user changes a tensor of the model between two forward calls (through ``.data``, a ``.detach()``
alias, ``torch.no_grad()``, ``load_state_dict``, ``p.data = other``, ``set_()``, a numpy or DLPack view, an
alias of its storage), the next fused forward computes with the new values: its logits equal the plain
path's (``model.execution = "plain"``, the backbone's own modules) within the tolerances of
``tests/test_fused.py``, in float32 and under bf16 autocast. A fused forward keeps no weight-derived result
(folded TFTS, low-precision cast) from one call to the next, so no key can go stale.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import pointpeft
from conftest import randomize_dapt
from pointpeft import DAPTConfig, wrap_with_dapt
from pointpeft.backbones import PointMAE
from pointpeft.dapt import prompt as prompt_module

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEPTH = 2
# The six TFTS sites of a block (attribute paths from the frozen block) and the four tensors of each.
SITES = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.base_layer.fc1", "mlp.base_layer.fc2")
PARTS = ("base_layer.weight", "base_layer.bias", "tfts.default.gamma", "tfts.default.beta")


def _build() -> nn.Module:
    """A small Point-MAE (qkv with a bias, so every site has one) under DAPT, random TFTS and adapters.
    Built at import without touching the global RNG that other test modules see."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = PointMAE(
            trans_dim=32, depth=DEPTH, num_heads=4, num_group=16, group_size=8, encoder_dims=32, qkv_bias=True
        )
        model = wrap_with_dapt(backbone, DAPTConfig(num_classes=4, rank=8), execution="fused")
    randomize_dapt(model, 0)
    return model.eval()


_MODEL = _build()
_POINTS = torch.rand(3, 96, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _owner(model: nn.Module, block: int, site: str, part: str) -> tuple[nn.Module, str]:
    """``(module, attribute name)`` of one tensor of one TFTS site of a block."""
    module = model.base_model.blocks.blocks[block].base_layer
    for name in (*site.split("."), *part.split(".")[:-1]):
        module = getattr(module, name)
    return module, part.split(".")[-1]


# ----------------------------------------------------------------------------------------- the edits
# Each writes ``new`` into ``getattr(owner, name)`` a different way a user can.
def _through_data(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    getattr(owner, name).data.copy_(new)  # .data: an alias with its own version counter


def _through_detach(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    getattr(owner, name).detach().copy_(new)


def _under_no_grad(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    with torch.no_grad():
        getattr(owner, name).copy_(new)


def _assign_data(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    getattr(owner, name).data = new.clone()


def _load_state_dict(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    owner.load_state_dict({**owner.state_dict(), name: new})


def _set(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    with torch.no_grad():
        getattr(owner, name).set_(new.clone())


def _numpy_view(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    getattr(owner, name).detach().numpy()[...] = new.numpy()


def _dlpack_view(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    torch.from_dlpack(getattr(owner, name).detach()).copy_(new)


def _storage_alias(owner: nn.Module, name: str, new: torch.Tensor) -> None:
    p = getattr(owner, name)
    alias = torch.empty(0, dtype=p.dtype).set_(p.untyped_storage(), p.storage_offset(), p.shape, p.stride())
    alias.copy_(new)


EDITS: dict[str, Callable[[nn.Module, str, torch.Tensor], None]] = {
    "p.data.copy_": _through_data,
    "p.detach().copy_": _through_detach,
    "no_grad p.copy_": _under_no_grad,
    "p.data = other": _assign_data,
    "load_state_dict": _load_state_dict,
    "p.set_(other)": _set,
    "numpy view": _numpy_view,
    "dlpack view": _dlpack_view,
    "storage alias": _storage_alias,
}


# ----------------------------------------------------------------------------------------- the modes
def _forward(model: nn.Module, mode: str) -> torch.Tensor:
    """Eval logits ``(B, K)``: ``fp32`` and ``bf16`` without gradients (every TFTS after a LayerNorm folded
    into it), ``bf16-grad`` with gradients (each block checkpointed). The head (no part of the fused computation) runs in float32, so
    that a final bf16 rounding of the logits does not hide a difference of the features."""
    with torch.set_grad_enabled(mode == "bf16-grad"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
            tokens, prompts = model.forward_features(_POINTS)
        return model.head(tokens.float(), None if prompts is None else prompts.float()).detach()


def _close(got: torch.Tensor, want: torch.Tensor, mode: str) -> bool:
    """The tolerances of tests/test_fused.py: 1e-5 of the largest logit in float32; under bf16 autocast
    ``rtol=0.05, atol=0.05 * largest``."""
    scale = want.abs().max().item()
    if mode == "fp32":
        return (got - want).abs().max().item() <= 1e-5 * scale
    return bool(torch.isclose(got, want, rtol=0.05, atol=0.05 * scale).all())


def _assert_follows(before: torch.Tensor, fused: torch.Tensor, plain: torch.Tensor, mode: str) -> None:
    """``fused`` equals ``plain`` (the logits after a change) within the tolerance, and is nearer to them
    than to ``before`` (the logits before it): a fused path still computing with the old values would be
    nearer to ``before``. (The bf16 tolerance alone is wider than what changing one tensor does to the
    logits of a small random model.)"""
    assert _close(fused, plain, mode), (fused - plain).abs().max().item()
    nearer, farther = (fused - plain).abs().max().item(), (fused - before).abs().max().item()
    assert nearer < farther, (
        f"the fused logits are nearer to the old ones ({farther:.3g}) than to the new ({nearer:.3g})"
    )


class _Counting:
    """Counts the checkpointed blocks that ran (a fallback to the plain path would make the comparison
    trivial)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        run = prompt_module.run_checkpointed

        def count(*args, **kwargs):
            self.calls += 1
            return run(*args, **kwargs)

        monkeypatch.setattr(prompt_module, "run_checkpointed", count)


def _fused_after(model: nn.Module, mode: str, edit: Callable[[], None]) -> tuple[torch.Tensor, ...]:
    """``(plain before, fused after, plain after)``: the fused path runs once before the edit (so that
    anything it might keep is there to go stale)."""
    model.execution = "plain"
    before = _forward(model, mode)
    model.execution = "fused"
    _forward(model, mode)
    edit()
    fused = _forward(model, mode)
    model.execution = "plain"
    return before, fused, _forward(model, mode)


@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16-grad"])
@pytest.mark.parametrize("edit", list(EDITS))
@settings(
    max_examples=4,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: a failing example is already small
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    block=st.integers(0, DEPTH - 1),
    site=st.sampled_from(SITES),
    part=st.sampled_from(PARTS),
    seed=st.integers(0, 2**16),
)
def test_fused_forward_sees_every_in_place_change(edit, mode, block, site, part, seed, monkeypatch):
    """Any tensor of a block (frozen weight or bias, LayerNorm weight or bias, TFTS γ or β), changed any
    way after a fused forward: the next fused forward equals the plain one, not the one before the change."""
    model = copy.deepcopy(_MODEL)
    owner, name = _owner(model, block, site, part)
    old = getattr(owner, name).detach()
    new = -2.0 * old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed))
    counting = _Counting(monkeypatch)
    before, fused, plain = _fused_after(model, mode, lambda: EDITS[edit](owner, name, new))
    # with gradients both fused forwards checkpointed every block; without, the blocks run as they are
    assert counting.calls == (2 * DEPTH if mode == "bf16-grad" else 0)
    assert torch.equal(getattr(owner, name).detach(), new)  # the edit took
    _assert_follows(before, fused, plain, mode)


def _point_mae_like() -> tuple[nn.Module, torch.Tensor]:
    """Width 96 with 6 heads, MLP 4C, 3 blocks, 32 groups of 16 (tests/test_fused.py), random DAPT."""
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=96, encoder_dims=96, depth=3, num_heads=6, num_group=32, group_size=16)
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=5), execution="fused")
    randomize_dapt(model, 0)
    return model.eval(), torch.rand(6, 256, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("bf16", [False, True])
def test_the_issue_case_p_data_mul(bf16):
    """The issue's case: ``p.data.mul_(1.5)`` on frozen weights and TFTS after a fused eval forward."""
    model, points = _point_mae_like()
    blocks = model.base_model.blocks.blocks
    targets = [blocks[1].base_layer.attn.qkv.base_layer.weight, blocks[2].base_layer.norm2.tfts.default.gamma]

    def logits() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(points).float()

    before = logits()
    for p in targets:
        p.data.mul_(1.5)
    fused = logits()
    model.execution = "plain"
    plain = logits()
    _assert_follows(before, fused, plain, "bf16" if bf16 else "fp32")


def test_repeated_fused_forwards_keep_no_weight_derived_tensors():
    """After fused eval forwards (float32 and bf16) and a fused bf16 training forward, nothing derived from
    the weights stays alive: the tensors reachable by the garbage collector are the same before and after
    (a cache of folds or casts would add one per frozen weight)."""
    import gc

    model = copy.deepcopy(_MODEL)

    def alive() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))

    _forward(model, "fp32")  # anything allocated once per process (not per weight) exists from here on
    count = alive()
    for mode in ("fp32", "bf16", "bf16-grad", "fp32"):
        _forward(model, mode)
    assert alive() == count


# --------------------------------------------------------------------------------- CUDA graph replays
def _trained(model: nn.Module) -> torch.optim.AdamW:
    """An AdamW over ``model``'s trainable parameters after one eager step (so that it has its state)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    F.cross_entropy(model(_POINTS), torch.arange(3) % 4).backward()
    optimizer.step()
    return optimizer


def _qkv(model: nn.Module) -> nn.Linear:
    return model.base_model.blocks.blocks[0].base_layer.attn.qkv.base_layer


SEEN_BY_A_REPLAY = {
    "an optimizer step": lambda m, o: (F.cross_entropy(m(_POINTS), torch.arange(3) % 4).backward(), o.step()),
    "p.data.mul_": lambda m, o: _qkv(m).weight.data.mul_(1.5),
    "load_state_dict": lambda m, o: m.load_state_dict({k: v * 1.5 for k, v in m.state_dict().items()}),
    "numpy view": lambda m, o: _qkv(m).weight.detach().numpy().__imul__(1.5),
    "an eval forward between steps": lambda m, o: (m.eval(), m(_POINTS), m.train()),
}
RECORDED_AGAIN = {
    "p.data = other": lambda m, o: setattr(_qkv(m).weight, "data", _qkv(m).weight.data * 1.5),
    "p.set_(other)": lambda m, o: _qkv(m).weight.set_(_qkv(m).weight.detach() * 1.5),
    "a new Parameter": lambda m, o: setattr(_qkv(m), "weight", nn.Parameter(_qkv(m).weight * 1.5)),
    "a new module": lambda m, o: setattr(m.head.mlp, "2", nn.GELU()),
    "a new buffer": lambda m, o: setattr(m.head.mlp[1], "running_var", m.head.mlp[1].running_var * 2),
    "requires_grad_": lambda m, o: _qkv(m).weight.requires_grad_(True),
    "model.eval()": lambda m, o: m.eval(),
    "model.execution": lambda m, o: setattr(m, "execution", "plain"),
    "a dropout probability": lambda m, o: setattr(m.head.mlp[3], "p", 0.1),
    "optimizer.load_state_dict": lambda m, o: o.load_state_dict(copy.deepcopy(o.state_dict())),
}


@pytest.mark.parametrize("change", list(SEEN_BY_A_REPLAY) + list(RECORDED_AGAIN))
def test_cuda_graph_bindings_tell_what_a_replay_cannot_see(change):
    """What CUDAGraphStep checks before each replay (on the CPU: no graph is needed to check it). A
    change of values in place is read by the replayed kernels: the bindings hold. A tensor given new
    storage, an object replaced in a slot or a setting changed would not be: the bindings break, and the
    step is recorded again."""
    from pointpeft.graph_step import Bindings

    model = copy.deepcopy(_MODEL)
    optimizer = _trained(model)
    bindings = Bindings(model, optimizer)
    assert bindings.hold()
    with torch.no_grad() if change != "an optimizer step" else torch.enable_grad():
        (SEEN_BY_A_REPLAY | RECORDED_AGAIN)[change](model, optimizer)
    assert bindings.hold() == (change in SEEN_BY_A_REPLAY)


def _cuda_model() -> pointpeft.DAPTModel:
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=64, depth=2, num_heads=4, num_group=16, group_size=8, encoder_dims=64)
    config = DAPTConfig(num_classes=5, rank=8, head_hidden=32, head_dropout=0.0)
    return wrap_with_dapt(backbone, config).cuda().train()


def _adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, capturable=True)


def _frozen_weights(model: nn.Module) -> list[nn.Parameter]:
    return [
        p for n, p in model.named_parameters() if ".blocks." in n and not p.requires_grad and p.dim() == 2
    ]


def _edit_data(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for p in _frozen_weights(model):
        p.data.mul_(-1.5)


def _edit_load_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.load_state_dict({k: v * -1.5 if v.dim() == 2 else v for k, v in model.state_dict().items()})


def _edit_assign(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for p in _frozen_weights(model):
        p.data = p.data * -1.5  # new storage: the recorded graph reads the old one


def _edit_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    state = copy.deepcopy(optimizer.state_dict())
    for moments in state["state"].values():
        moments["exp_avg"].mul_(-1.0)
    optimizer.load_state_dict(state)  # new state tensors


def _edit_mode(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.eval()


CUDA_EDITS = {
    "p.data.mul_": _edit_data,
    "load_state_dict": _edit_load_state_dict,
    "p.data = other": _edit_assign,
    "optimizer.load_state_dict": _edit_optimizer_state,
    "model.eval()": _edit_mode,
}


@cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("edit", list(CUDA_EDITS))
def test_a_graphed_step_sees_every_change_between_replays(edit, dtype):
    """CUDAGraphStep, fused execution: a change of the weights, of the optimizer's state or of the mode
    after the graph was recorded is seen by the next step, which equals the eager step given the same
    change. In-place changes are read by the replayed kernels (the bf16 casts of the frozen weights are
    recorded in the graph, so they are redone at each replay); a replaced tensor or another mode makes the
    step record the graph again."""
    eager = _cuda_model()
    graphed = copy.deepcopy(eager)
    eager_opt, graphed_opt = _adamw(eager), _adamw(graphed)
    step = pointpeft.CUDAGraphStep(graphed, graphed_opt, F.cross_entropy, autocast_dtype=dtype, warmup=1)
    gen = torch.Generator().manual_seed(1)
    points = (torch.rand(6, 256, 3, generator=gen) * 2 - 1).cuda()
    labels = torch.randint(0, 5, (6,), generator=gen).cuda()
    rtol = 1e-5 if dtype is None else 2e-2
    previous = None
    for i in range(6):
        if i == 4:
            CUDA_EDITS[edit](eager, eager_opt)
            CUDA_EDITS[edit](graphed, graphed_opt)
        eager_opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is not None, cache_enabled=False):
            expected = eager(points).float()
        F.cross_entropy(expected, labels).backward()
        eager_opt.step()
        logits = step(points, labels)[1].clone()
        scale = expected.abs().max().item()
        torch.testing.assert_close(logits, expected.detach(), rtol=rtol, atol=rtol * scale)
        if i == 4 and edit != "optimizer.load_state_dict":  # the change matters: a stale graph would fail
            assert not torch.allclose(expected.detach(), previous, rtol=rtol, atol=rtol * scale)
        previous = expected.detach()
    for (name, x), y in zip(graphed.state_dict().items(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol, msg=name)


@cuda
def test_a_graphed_step_refuses_points_outside_the_ops_range():
    """A replay runs no Python, so the grouping ops cannot check its batch: CUDAGraphStep checks a point
    cloud batch (B, N, 3) against pointpeft.ops.safe_coordinate_range itself, before recording and before
    every replay, naming ``inputs``."""
    model = _cuda_model()
    step = pointpeft.CUDAGraphStep(model, _adamw(model), F.cross_entropy, warmup=1)
    points = (torch.rand(6, 256, 3) * 2 - 1).cuda()
    labels = torch.randint(0, 5, (6,)).cuda()
    step(points, labels)
    step(points, labels)  # recorded and replayed
    for bad in (points * 1e20, points * 1e-30):
        with pytest.raises(
            ValueError, match=r"inputs must have (coordinates of|a largest coordinate) magnitude"
        ):
            step(bad, labels)
    with pytest.raises(ValueError, match="inputs must contain only finite"):
        step(torch.full_like(points, float("nan")), labels)
