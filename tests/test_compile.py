"""torch.compile (fullgraph) and torch.export take a DAPT model whole, and nn.DataParallel-style replicas
running at once in threads never see each other's per-call tensors."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

import pointpeft
from conftest import randomize_dapt
from pointpeft.backbones import PointMAE


def _model(execution: str = "fused") -> pointpeft.DAPTModel:
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=8, encoder_dims=32)
    config = pointpeft.DAPTConfig(num_classes=4, rank=8, adapter_dropout=0.0, head_dropout=0.0)
    model = pointpeft.wrap_with_dapt(backbone, config, execution=execution)
    randomize_dapt(model, 0)
    return model


def _points(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 32, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _step(model: nn.Module, runner: nn.Module, points: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    logits = runner(points)
    labels = torch.arange(points.shape[0]) % logits.shape[-1]
    nn.functional.cross_entropy(logits, labels).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def test_no_graph_breaks_in_eval_and_training():
    model = _model()
    points = _points()
    for train in (False, True):
        model.train(train)
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(points)
        reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
        assert explanation.graph_break_count == 0, reasons


def test_compiled_eval_forward_equals_eager():
    model = _model().eval()
    points = _points()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(points), model(points), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("execution", ["fused", "plain"])
def test_compiled_training_step_equals_eager(execution):
    """Forward + backward under torch.compile(fullgraph=True): the fast path (selective checkpointing) and
    the plain one give eager's logits and gradients."""
    model = _model(execution).train()
    points = _points()
    eager = _step(model, model, points)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = _step(model, compiled, points)
    torch.testing.assert_close(got[0], eager[0], rtol=1e-4, atol=1e-5)
    assert set(got[1]) == set(eager[1])
    for name, grad in eager[1].items():
        torch.testing.assert_close(got[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("execution", ["fused", "recompute"])
def test_fused_keeps_the_products_compiled_and_the_block_input_eagerly(execution, monkeypatch):
    """What each checkpointed block is asked to keep: its matrix products only under torch.compile in the
    "fused" execution (selective checkpointing, which the compiler fuses), its input otherwise."""
    from pointpeft.dapt import prompt as prompt_module

    asked: list[bool] = []
    real = prompt_module.run_checkpointed

    def recording(fn, *args, save_products):
        asked.append(save_products)
        return real(fn, *args, save_products=save_products)

    monkeypatch.setattr(prompt_module, "run_checkpointed", recording)
    model = _model(execution).train()
    points = _points()
    _step(model, model, points)
    assert asked == [False, False]  # two blocks, eager
    asked.clear()
    torch._dynamo.reset()
    _step(model, torch.compile(model, fullgraph=True, backend="aot_eager"), points)
    assert asked == [execution == "fused"] * 2, asked


def test_exported_model_equals_eager():
    model = _model().eval()
    points = _points()
    exported = torch.export.export(model, (points,))
    with torch.no_grad():
        want = model(points)
    torch.testing.assert_close(exported.module()(points), want, rtol=1e-5, atol=1e-6)
    other = _points(seed=1)  # a traced program, not a recording of one input
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other), model(other), rtol=1e-5, atol=1e-6)


def test_threads_running_one_model_at_once_get_their_own_results():
    """Replicas share Python objects (nn.DataParallel copies modules shallowly and runs them in threads): the
    per-call tensors live in a per-thread call context, so concurrent forwards equal sequential ones."""
    model = _model().eval()
    inputs = [_points(seed=s) for s in range(4)]
    with torch.no_grad():
        want = [model(p) for p in inputs]
    got: dict[int, torch.Tensor] = {}
    start = threading.Barrier(len(inputs))

    def run(i: int) -> None:
        start.wait()
        with torch.no_grad():
            for _ in range(5):
                got[i] = model(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, expected in enumerate(want):
        torch.testing.assert_close(got[i], expected, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA device")
def test_data_parallel_equals_the_model():
    model = _model().cuda().eval()
    points = _points(batch=8).cuda()
    parallel = nn.DataParallel(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(parallel(points), model(points), rtol=1e-5, atol=1e-6)


def test_compiled_ops_give_the_eager_indices_bit_for_bit():
    """Under torch.compile the grouping ops run the same backends through custom operators: the same indices
    and values as eager, ties (duplicated points) included, and the same gradients."""
    generator = torch.Generator().manual_seed(3)
    xyz = torch.rand(2, 40, 3, generator=generator) * 2 - 1
    xyz[:, 20:] = xyz[:, :20]  # every point twice: ties in FPS and KNN
    xyz.requires_grad_(True)

    def ops(cloud: torch.Tensor):
        idx = pointpeft.ops.farthest_point_sample(cloud, 6)
        near = pointpeft.ops.knn(cloud[:, :7], cloud, 5)
        neighborhood, centers = pointpeft.ops.group(cloud, 6, 4)
        return idx, near.idx, near.sq_dist, neighborhood, centers

    torch._dynamo.reset()
    compiled = torch.compile(ops, fullgraph=True, backend="aot_eager")
    want, got = ops(xyz), compiled(xyz)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    (g_want,) = torch.autograd.grad(want[2].sum() + want[3].square().sum(), xyz)
    (g_got,) = torch.autograd.grad(got[2].sum() + got[3].square().sum(), xyz)
    torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-7)
