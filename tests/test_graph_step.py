"""pointpeft.CUDAGraphStep: argument checks everywhere; on a GPU, graphed steps against eager ones."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(**config) -> pointpeft.DAPTModel:
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=64, depth=2, num_heads=4, num_group=16, group_size=8, encoder_dims=64)
    settings = dict(num_classes=5, rank=8, head_hidden=32, head_dropout=0.0) | config
    return pointpeft.wrap_with_dapt(backbone, pointpeft.DAPTConfig(**settings))


def _adamw(model, **kwargs) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, **kwargs)


def test_arguments_are_checked():
    model = _model()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pointpeft.CUDAGraphStep(object(), _adamw(model), F.cross_entropy)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        pointpeft.CUDAGraphStep(model, _adamw(model), "cross_entropy")
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        pointpeft.CUDAGraphStep(model, [p for p in model.parameters()], F.cross_entropy)
    with pytest.raises(ValueError, match="capturable=True"):
        pointpeft.CUDAGraphStep(model, _adamw(model, capturable=False), F.cross_entropy)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_without_cuda_it_says_so():
    model = _model()
    with pytest.raises(ValueError, match="needs a CUDA device"):
        pointpeft.CUDAGraphStep(model, _adamw(model, capturable=True), F.cross_entropy)


@cuda
@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (dict(autocast_dtype=torch.float32), ValueError, "autocast_dtype"),
        (dict(autocast_dtype=torch.float16), ValueError, "autocast_dtype"),
        (dict(warmup=0), ValueError, "warmup must be an int >= 1, got 0"),
        (dict(warmup=True), TypeError, "warmup must be an int >= 1, got bool True"),
        (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    ],
)
def test_settings_are_checked(bad, error, match):
    model = _model().cuda()
    with pytest.raises(error, match=match):
        pointpeft.CUDAGraphStep(model, _adamw(model, capturable=True), F.cross_entropy, **bad)


@cuda
def test_parameters_must_be_on_the_gpu():
    model = _model()
    with pytest.raises(ValueError, match="CUDA device"):
        pointpeft.CUDAGraphStep(model, _adamw(model, capturable=True), F.cross_entropy)
    optimizer = _adamw(model.cuda(), capturable=True)
    frozen = next(p for p in model.parameters() if not p.requires_grad)  # not among the optimizer's
    frozen.data = frozen.data.cpu()
    with pytest.raises(ValueError, match="model must be on a CUDA device"):
        pointpeft.CUDAGraphStep(model, optimizer, F.cross_entropy)


def _batches(count: int, batch: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            (torch.rand(batch, 256, 3, generator=gen) * 2 - 1).cuda(),
            torch.randint(0, 5, (batch,), generator=gen).cuda(),
        )
        for _ in range(count)
    ]


def _eager_step(model, optimizer, points, labels, max_grad_norm=None):
    optimizer.zero_grad(set_to_none=True)
    logits = model(points).float()
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    return loss.detach(), logits.detach()


def _assert_same_parameters(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


@cuda
@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_graphed_steps_equal_eager_steps(max_grad_norm):
    """Warm-up calls, the recording call and replays: each step's loss, logits and the parameters and
    BatchNorm statistics after it equal those of the eager step on the same batch."""
    eager = _model().cuda().train()
    graphed = copy.deepcopy(eager)
    eager_opt, graphed_opt = _adamw(eager, capturable=True), _adamw(graphed, capturable=True)
    step = pointpeft.CUDAGraphStep(
        graphed, graphed_opt, F.cross_entropy, warmup=2, max_grad_norm=max_grad_norm
    )
    for points, labels in _batches(6):
        expected_loss, expected_logits = _eager_step(eager, eager_opt, points, labels, max_grad_norm)
        loss, logits = step(points, labels)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
        _assert_same_parameters(graphed, eager)
    assert step.captures == 1 and step.calls == 6


@cuda
def test_a_new_learning_rate_is_recorded_again():
    eager = _model().cuda().train()
    graphed = copy.deepcopy(eager)
    eager_opt, graphed_opt = _adamw(eager, capturable=True), _adamw(graphed, capturable=True)
    step = pointpeft.CUDAGraphStep(graphed, graphed_opt, F.cross_entropy, warmup=1)
    for i, (points, labels) in enumerate(_batches(5)):
        if i == 3:
            for opt in (eager_opt, graphed_opt):
                for group in opt.param_groups:
                    group["lr"] = 0.1
        _eager_step(eager, eager_opt, points, labels)
        step(points, labels)
        _assert_same_parameters(graphed, eager)
    assert step.captures == 2


@cuda
def test_another_batch_shape_is_refused():
    model = _model().cuda().train()
    step = pointpeft.CUDAGraphStep(model, _adamw(model, capturable=True), F.cross_entropy, warmup=1)
    ((points, labels),) = _batches(1)
    step(points, labels)
    with pytest.raises(ValueError, match="keep the shape"):
        step(points[:4], labels[:4])
    with pytest.raises(ValueError, match="finite"):
        step(torch.full_like(points, float("nan")), labels)


@cuda
def test_dropout_draws_new_numbers_at_each_replay():
    model = _model(adapter_dropout=0.5, head_dropout=0.5).cuda().train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    step = pointpeft.CUDAGraphStep(model, optimizer, F.cross_entropy, warmup=1, autocast_dtype=torch.bfloat16)
    ((points, labels),) = _batches(1)
    step(points, labels)
    first = step(points, labels)[1].clone()
    second = step(points, labels)[1].clone()
    assert torch.isfinite(first).all() and not torch.equal(first, second)


def _pointlora(seed: int = 0) -> pointpeft.DAPTModel:
    torch.manual_seed(seed)
    backbone = PointMAE(trans_dim=64, depth=2, num_heads=4, num_group=16, group_size=8, encoder_dims=64)
    config = pointpeft.PointLoRAConfig(num_classes=5, scales=((16, 8, 4), (8, 16, 2)), head_dropout=0.0)
    return pointpeft.get_peft_model(backbone, config)


@cuda
def test_a_graphed_pointlora_step_minimises_the_auxiliary_loss_too():
    """PointLoRA's mask predictor learns from its auxiliary loss alone: graphed steps give the loss
    cross-entropy + auxiliary and the same parameters (the predictor's included) as eager steps of that sum.

    The steps are plain SGD: a few trained biases sit right before a BatchNorm in training (the first
    convolution's, the head's), so their gradients are zero in exact arithmetic and hold rounding noise
    only, which AdamW would turn into steps of the full learning rate and either sign."""
    eager = _pointlora().cuda().train()
    graphed = copy.deepcopy(eager)
    eager_opt, graphed_opt = (
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05) for m in (eager, graphed)
    )
    step = pointpeft.CUDAGraphStep(graphed, graphed_opt, F.cross_entropy, warmup=1)
    predictor = [p.detach().clone() for n, p in graphed.named_parameters() if ".predictor." in n]
    assert predictor
    for points, labels in _batches(4):
        eager_opt.zero_grad(set_to_none=True)
        logits = eager(points).float()
        expected = F.cross_entropy(logits, labels) + eager.auxiliary_loss.float()
        expected.backward()
        eager_opt.step()
        loss, _ = step(points, labels)
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
        _assert_same_parameters(graphed, eager)
    moved = [p for n, p in graphed.named_parameters() if ".predictor." in n]
    assert all(not torch.equal(a, b) for a, b in zip(predictor, moved, strict=True))


def test_the_auxiliary_loss_is_added_where_the_forward_made_one():
    """``add_auxiliary_loss``: PointLoRA's forward adds its mask loss, DAPT's and a plain module's add
    nothing; ``clear_auxiliary_loss`` (before each step) forgets the last forward's."""
    from pointpeft.dapt.model import clear_auxiliary_loss

    points = torch.rand(2, 256, 3) * 2 - 1
    ce = torch.tensor(1.5)
    lora = _pointlora().train()
    lora(points)
    auxiliary = lora.auxiliary_loss
    assert isinstance(auxiliary, torch.Tensor) and auxiliary.requires_grad
    torch.testing.assert_close(pointpeft.add_auxiliary_loss(lora, ce), ce + auxiliary, rtol=0, atol=0)
    clear_auxiliary_loss(lora)
    assert lora.auxiliary_loss is None and pointpeft.add_auxiliary_loss(lora, ce) is ce
    dapt = _model().train()
    dapt(points)
    assert pointpeft.add_auxiliary_loss(dapt, ce) is ce
    assert pointpeft.add_auxiliary_loss(torch.nn.Linear(3, 3), ce) is ce
    clear_auxiliary_loss(torch.nn.Linear(3, 3))  # no-op
