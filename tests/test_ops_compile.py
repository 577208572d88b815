"""``pointpeft.ops`` under ``torch.compile(fullgraph=True)`` and ``torch.export.export``.

The index computations run as the custom operators ``pointpeft::farthest_point_sample``, ``pointpeft::knn``
and ``pointpeft::group``: no graph break, no host sync inside the graph, and the eager results bit for bit,
ties included (the gradients too, up to the order of inductor's sums). The value checks that need a host
sync are skipped while tracing (run eagerly once to check inputs); the static checks still run.

Compiling is slow on CPU: the clouds are small (B <= 2, N <= 64), hypothesis draws few examples and compiles
them with ``aot_eager`` (dynamo, fake tensors and AOT autograd, without code generation); one fixed case
per dtype runs through the default inductor backend.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from pointpeft.ops import Backend, farthest_point_sample, group, knn, torch_backend, traceable, triton_backend

COMPILE = settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
if not hasattr(torch.library, "custom_op"):
    pytest.skip("torch.library.custom_op needs torch >= 2.4", allow_module_level=True)
TRITON_RUNS = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
)


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test compiles afresh (no cache-size limit reached, no graph reused across tests) on the
    backend the test asks for."""
    monkeypatch.delenv("POINTPEFT_OPS_BACKEND", raising=False)
    torch._dynamo.reset()


def cloud(
    seed: int, b: int, n: int, dtype: torch.dtype, *, duplicates: bool = True, device: str = "cpu"
) -> torch.Tensor:
    """Random (b, n, 3) cloud in [-1, 1]; with ``duplicates``, every point drawn from the first third, so
    FPS and KNN meet many exact ties."""
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(b, n, 3, generator=gen) * 2 - 1
    if duplicates:
        xyz = xyz[:, torch.randint(0, max(1, n // 3), (n,), generator=gen)]
    return xyz.to(dtype).to(device)


def all_ops(
    num_group: int, group_size: int, k: int, start_idx: int, backend: Backend = "torch"
) -> Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], tuple[torch.Tensor, ...]]:
    """A function of (xyz, lengths, query_lengths) calling the three ops with the given counts."""

    def fn(
        xyz: torch.Tensor, lengths: torch.Tensor | None, query_lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        idx = farthest_point_sample(xyz, num_group, start_idx=start_idx, lengths=lengths, backend=backend)
        near = knn(
            xyz[:, :num_group],
            xyz,
            k,
            query_lengths=query_lengths,
            point_lengths=lengths,
            backend=backend,
        )
        neighborhood, centers = group(
            xyz,
            num_group,
            group_size,
            start_idx=start_idx,
            lengths=lengths,
            backend=backend,
        )
        return idx, near.sq_dist, near.idx, neighborhood, centers

    return fn


def loss_of(outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A scalar that depends on every differentiable output (distances, neighbourhoods, centers)."""
    _, sq_dist, _, neighborhood, centers = outputs
    return sq_dist.float().sum() + neighborhood.float().square().sum() + (centers.float() * 0.5).sum()


def assert_bit_equal(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, (i, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"output {i} differs: {a} != {b}"


def grad_of(
    fn: Callable[..., tuple[torch.Tensor, ...]], xyz: torch.Tensor, *args: Any
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    leaf = xyz.detach().clone().requires_grad_(True)
    outputs = fn(leaf, *args)
    (grad,) = torch.autograd.grad(loss_of(outputs), leaf)
    return tuple(t.detach() for t in outputs), grad


# --------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the eager results bit for bit
# --------------------------------------------------------------------------------------------------


@COMPILE
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 2),
    n=st.integers(4, 64),
    dtype=st.sampled_from(DTYPES),
    duplicates=st.booleans(),
    ragged=st.booleans(),
    requires_grad=st.booleans(),
    data=st.data(),
)
def test_compiled_ops_equal_eager_bit_for_bit(
    seed: int,
    b: int,
    n: int,
    dtype: torch.dtype,
    duplicates: bool,
    ragged: bool,
    requires_grad: bool,
    data: st.DataObject,
) -> None:
    torch._dynamo.reset()  # a fresh cache per example: never the recompilation limit
    xyz = cloud(seed, b, n, dtype, duplicates=duplicates)
    lengths = query_lengths = None
    shortest = n
    if ragged:  # padding holds NaN: never read, compiled or not
        lengths = torch.tensor([data.draw(st.integers(2, n)) for _ in range(b)])
        shortest = int(lengths.min())
        xyz = xyz.clone()
        for i in range(b):
            xyz[i, int(lengths[i]) :] = float("nan")
    num_group = data.draw(st.integers(1, shortest))
    if ragged:
        query_lengths = torch.tensor([data.draw(st.integers(0, num_group)) for _ in range(b)])
    group_size = data.draw(st.integers(1, shortest))
    k = data.draw(st.integers(1, n))
    start_idx = data.draw(st.integers(0, shortest - 1))
    fn = all_ops(num_group, group_size, k, start_idx)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    if requires_grad:
        want, want_grad = grad_of(fn, xyz, lengths, query_lengths)
        got, got_grad = grad_of(compiled, xyz, lengths, query_lengths)
        assert_bit_equal((got_grad,), (want_grad,))
    else:
        want, got = fn(xyz, lengths, query_lengths), compiled(xyz, lengths, query_lengths)
    assert_bit_equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_inductor_compiled_ops_equal_eager(dtype: torch.dtype) -> None:
    """The default backend (inductor generates the gathers, differences and squared distances around
    the operators): the same values bit for bit, on a ragged cloud full of ties, with and without a
    gradient. The gradients are equal up to the order of inductor's floating-point sums (a point in
    several groups collects several contributions; in float16 inductor also keeps float32
    intermediates), which eager autograd adds in another order: a few units in the last place."""
    xyz = cloud(7, 2, 48, dtype)
    lengths = torch.tensor([48, 33])
    query_lengths = torch.tensor([8, 5])
    fn = all_ops(8, 6, 10, 2)
    compiled = torch.compile(fn, fullgraph=True)
    want, want_grad = grad_of(fn, xyz, lengths, query_lengths)
    got, got_grad = grad_of(compiled, xyz, lengths, query_lengths)
    assert_bit_equal(got, want)
    ulp = torch.finfo(dtype).eps
    scale = float(want_grad.abs().max())
    assert scale > 0
    torch.testing.assert_close(got_grad, want_grad, rtol=4 * ulp, atol=4 * ulp * scale)
    with torch.no_grad():
        assert_bit_equal(compiled(xyz, lengths, query_lengths), fn(xyz, lengths, query_lengths))


def test_dynamo_sees_one_graph_with_the_three_operators() -> None:
    xyz, lengths = cloud(1, 2, 40, torch.float32), torch.tensor([40, 25])
    fn = all_ops(6, 5, 7, 0)
    explanation = torch._dynamo.explain(fn)(xyz, lengths, None)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    targets = [str(node.target) for node in explanation.graphs[0].graph.nodes if node.op == "call_function"]
    assert [t for t in targets if t.startswith("pointpeft.")] == [
        "pointpeft.farthest_point_sample.default",
        "pointpeft.knn.default",
        "pointpeft.group.default",
    ]
    # Where a gradient is needed, group takes FPS and KNN indices and gathers in plain torch.
    explanation = torch._dynamo.explain(fn)(xyz.requires_grad_(True), lengths, None)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    targets = [str(node.target) for node in explanation.graphs[0].graph.nodes if node.op == "call_function"]
    assert "pointpeft.group.default" not in targets
    assert targets.count("pointpeft.farthest_point_sample.default") == 2
    assert targets.count("pointpeft.knn.default") == 2


def test_value_checks_are_skipped_under_compile_and_run_eagerly() -> None:
    """Checks that read values (finite coordinates, lengths) need a host sync: skipped while tracing, as
    documented. The eager call still refuses the input."""
    xyz = cloud(2, 1, 10, torch.float32)
    xyz[0, 3] = float("nan")

    def fps(cloud_: torch.Tensor) -> torch.Tensor:
        return farthest_point_sample(cloud_, 4)

    compiled = torch.compile(fps, fullgraph=True, backend="aot_eager")
    assert compiled(xyz).shape == (1, 4)  # no ValueError: nothing was read back
    with pytest.raises(ValueError, match="xyz must contain only finite coordinates"):
        fps(xyz)


def test_static_checks_still_run_under_compile() -> None:
    """Type, dtype and shape checks need no value: they still refuse bad input while tracing."""

    def fps(cloud_: torch.Tensor) -> torch.Tensor:
        return farthest_point_sample(cloud_, 3)

    bad = torch.rand(1, 5, 2)
    with pytest.raises(ValueError, match=r"xyz must have shape \(B, N, 3\), got \(1, 5, 2\)"):
        torch.compile(fps, backend="aot_eager")(bad)
    # With fullgraph=True dynamo reports the error raised while tracing, quoting it.
    with pytest.raises(Exception, match=r"xyz must have shape \(B, N, 3\), got \(1, 5, 2\)"):
        torch.compile(fps, fullgraph=True, backend="aot_eager")(bad)
    with pytest.raises(TypeError, match="xyz must have a floating-point dtype"):
        torch.compile(fps, backend="aot_eager")(torch.zeros(1, 5, 3, dtype=torch.int32))


# --------------------------------------------------------------------------------------------------
# torch.export
# --------------------------------------------------------------------------------------------------


class Grouper(torch.nn.Module):
    """A Point-MAE-style tokenizer front: group, then a learned map of the neighbourhoods."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)

    def forward(self, xyz: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neighborhood, centers = group(xyz, 8, 5, lengths=lengths)
        return self.proj(neighborhood).amax(dim=2), centers


@pytest.mark.parametrize("strict", [False, True])
def test_exported_module_equals_eager(strict: bool) -> None:
    model = Grouper()
    xyz, lengths = cloud(3, 2, 40, torch.float32), torch.tensor([40, 21])
    program = torch.export.export(model, (xyz, lengths), strict=strict)
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert [t for t in targets if t.startswith("pointpeft.")] == ["pointpeft.group.default"]
    with torch.no_grad():
        assert_bit_equal(program.module()(xyz, lengths), model(xyz, lengths))
        other, other_lengths = cloud(4, 2, 40, torch.float32), torch.tensor([9, 40])
        assert_bit_equal(program.module()(other, other_lengths), model(other, other_lengths))


def test_export_with_dynamic_shapes_and_a_save_load_round_trip() -> None:
    """Batch size and number of points symbolic (the fake implementations give the output shapes); the
    saved program loads and runs (the operators are registered on import of pointpeft.ops)."""
    model = Grouper()
    xyz, lengths = cloud(5, 2, 40, torch.float32), torch.tensor([40, 30])
    batch, points = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("points", min=8, max=4096)
    program = torch.export.export(
        model, (xyz, lengths), dynamic_shapes=({0: batch, 1: points}, {0: batch}), strict=False
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    other, other_lengths = cloud(6, 3, 57, torch.float32), torch.tensor([57, 12, 30])
    with torch.no_grad():
        want = model(other, other_lengths)
        assert_bit_equal(program.module()(other, other_lengths), want)
        assert_bit_equal(loaded.module()(other, other_lengths), want)


# --------------------------------------------------------------------------------------------------
# The Triton backend under compile (GPU, or Triton's interpreter on CPU)
# --------------------------------------------------------------------------------------------------


def test_the_backend_chosen_in_python_runs_inside_the_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operators take the backend's name: with backend='triton', the compiled graph calls the
    triton module's entry points (here stand-ins that record the call and run the torch backend)."""
    calls: list[str] = []

    def recording(name: str) -> Callable[..., Any]:
        def entry(*args: Any) -> Any:
            calls.append(name)
            return getattr(torch_backend, name)(*args)

        return entry

    monkeypatch.setattr(triton_backend, "unavailable_reason", lambda tensor: None)  # as on a GPU
    for name in ("farthest_point_sample", "knn", "group"):
        monkeypatch.setattr(triton_backend, name, recording(name))
    xyz, lengths = cloud(10, 2, 16, torch.float32), torch.tensor([16, 11])
    compiled = torch.compile(all_ops(4, 3, 5, 0, backend="triton"), fullgraph=True, backend="aot_eager")
    got = compiled(xyz, lengths, None)
    assert calls[-3:] == ["farthest_point_sample", "knn", "group"]
    calls.clear()
    assert_bit_equal(compiled(xyz, lengths, None), got)  # the compiled graph, run again
    assert calls == ["farthest_point_sample", "knn", "group"]
    assert_bit_equal(got, all_ops(4, 3, 5, 0, backend="torch")(xyz, lengths, None))


@pytest.mark.skipif(not TRITON_RUNS, reason="needs triton on a GPU or TRITON_INTERPRET=1")
def test_compiled_triton_backend_equals_eager_triton() -> None:
    """backend='triton' stays the backend inside the operators: the kernels' own results (the fused group
    kernel included, whose bfloat16 rounding may differ from torch's), and their gradients."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    xyz = cloud(8, 2, 12, torch.bfloat16, device=device)
    lengths = torch.tensor([12, 9], device=device)
    fn = all_ops(4, 3, 5, 1, backend="triton")
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_bit_equal(compiled(xyz, lengths, None), fn(xyz, lengths, None))
    want, want_grad = grad_of(fn, xyz, lengths, None)
    got, got_grad = grad_of(compiled, xyz, lengths, None)
    assert_bit_equal(got, want)
    assert_bit_equal((got_grad,), (want_grad,))


# --------------------------------------------------------------------------------------------------
# The operators themselves
# --------------------------------------------------------------------------------------------------


def test_operators_pass_opcheck_and_give_shapes_on_meta() -> None:
    """torch.library.opcheck: schema, autograd registration, fake implementation against the real one
    (shapes, dtypes, strides) and AOT dispatch with dynamic shapes, on ragged inputs; on meta tensors the
    fake implementations give the documented shapes and dtypes; on real ones, the public ops' results."""
    xyz = cloud(9, 2, 30, torch.float16)
    lengths, query, query_lengths = torch.tensor([30, 20]), xyz[:, :5], torch.tensor([5, 2])
    cases = {
        "farthest_point_sample": (xyz, 7, 1, lengths, "torch"),
        "knn": (query, xyz, 4, query_lengths, lengths, "torch"),
        "group": (xyz, 7, 3, 0, lengths, "torch"),
    }
    for name, args in cases.items():
        result = torch.library.opcheck(getattr(torch.ops.pointpeft, name).default, args)
        assert set(result.values()) == {"SUCCESS"}, (name, result)
    meta = xyz.to("meta")
    idx = torch.ops.pointpeft.farthest_point_sample(meta, 7, 0, None, "torch")
    sq_dist, nn_idx = torch.ops.pointpeft.knn(meta[:, :5], meta, 4, None, None, "torch")
    neighborhood, centers = torch.ops.pointpeft.group(meta, 7, 3, 0, None, "torch")
    assert (idx.shape, idx.dtype) == ((2, 7), torch.int64)
    assert (sq_dist.shape, sq_dist.dtype) == ((2, 5, 4), torch.float16)
    assert (nn_idx.shape, nn_idx.dtype) == ((2, 5, 4), torch.int64)
    assert (neighborhood.shape, neighborhood.dtype) == ((2, 7, 3, 3), torch.float16)
    assert (centers.shape, centers.dtype) == ((2, 7, 3), torch.float16)
    fps = torch.ops.pointpeft.farthest_point_sample(xyz, 7, 1, lengths, "torch")
    assert torch.equal(fps, farthest_point_sample(xyz, 7, start_idx=1, lengths=lengths))
    assert_bit_equal(
        tuple(torch.ops.pointpeft.knn(*cases["knn"])),
        tuple(knn(query, xyz, 4, query_lengths=query_lengths, point_lengths=lengths)),
    )
    assert_bit_equal(
        tuple(torch.ops.pointpeft.group(*cases["group"])), tuple(group(xyz, 7, 3, lengths=lengths))
    )


def test_tracing_is_false_in_eager_calls() -> None:
    assert traceable.tracing() is False
    seen: list[bool] = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append(traceable.tracing())
        return x + 1

    torch.compile(probe, fullgraph=True, backend="aot_eager")(torch.zeros(2))
    assert seen == [True]


def test_without_custom_operators_the_backends_are_called_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a torch without torch.library.custom_op (before 2.4) registration returns the implementation
    itself, so the ops keep working (the compilers then trace the backends)."""

    def impl(x: torch.Tensor) -> torch.Tensor:
        return x

    monkeypatch.delattr(torch.library, "custom_op")
    assert traceable.register("unused_name", impl, impl, "(Tensor x) -> Tensor") is impl
