"""Tests for the backend selection of ``pointpeft.ops`` (``backend=`` and ``POINTPEFT_OPS_BACKEND``).

The Triton kernels are never run here: the ``triton_backend`` entry points are replaced by spies, so these
tests only check which module a call reaches and with which arguments.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pointpeft import ops
from pointpeft.ops import (
    available_backends,
    dispatch,
    farthest_point_sample,
    group,
    knn,
    torch_backend,
    triton_backend,
)

ENV = "POINTPEFT_OPS_BACKEND"
HAS_TRITON = importlib.util.find_spec("triton") is not None
XYZ = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


class Spy:
    """Records its calls and returns ``result``."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        assert not kwargs, "backends are called with positional arguments only"
        self.calls.append(args)
        return self.result


def install_spies(monkeypatch: pytest.MonkeyPatch, module: Any) -> dict[str, Spy]:
    """Replace the three entry points of ``module`` with spies returning well-shaped dummies."""
    spies = {
        "farthest_point_sample": Spy(torch.zeros(2, 3, dtype=torch.long)),
        "knn": Spy((torch.zeros(2, 12, 4), torch.zeros(2, 12, 4, dtype=torch.long))),
        "group": Spy((torch.zeros(2, 3, 4, 3), torch.zeros(2, 3, 3))),
    }
    for name, spy in spies.items():
        monkeypatch.setattr(module, name, spy, raising=False)  # triton_backend may not define them yet
    return spies


def triton_runs_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the Triton kernels can run on any tensor (no triton or GPU needed)."""
    monkeypatch.setattr(triton_backend, "unavailable_reason", lambda tensor: None)


CALLS: dict[str, Callable[..., Any]] = {
    "farthest_point_sample": lambda **kw: farthest_point_sample(XYZ, 3, **kw),
    "knn": lambda **kw: knn(XYZ, XYZ, 4, **kw),
    "group": lambda **kw: group(XYZ, 3, 4, **kw),
}


# --------------------------------------------------------------------------------------------------
# Values of backend / POINTPEFT_OPS_BACKEND
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", CALLS)
@pytest.mark.parametrize("backend", [None, "auto", "torch"])
def test_cpu_backends_agree(op: str, backend: str | None) -> None:
    got, want = CALLS[op](backend=backend), CALLS[op]()
    if isinstance(want, torch.Tensor):
        got, want = (got,), (want,)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("op", CALLS)
@pytest.mark.parametrize("bad", ["cuda", "Torch", "", " torch", 1, torch.device("cpu")])
def test_invalid_backend_argument(op: str, bad: object) -> None:
    with pytest.raises(ValueError, match=r"backend must be None, 'auto', 'torch' or 'triton', got "):
        CALLS[op](backend=bad)


@pytest.mark.parametrize("bad", ["gpu", "TORCH", "torch "])
def test_invalid_env_var(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(ValueError, match=rf"{ENV} must be one of 'auto', 'torch', 'triton'.*got {bad!r}"):
        farthest_point_sample(XYZ, 3)
    # An explicit argument wins over the environment variable, invalid or not.
    assert farthest_point_sample(XYZ, 3, backend="torch").shape == (2, 3)


def test_empty_env_var_means_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "")
    spies = install_spies(monkeypatch, torch_backend)
    farthest_point_sample(XYZ, 3)
    assert len(spies["farthest_point_sample"].calls) == 1


@pytest.mark.parametrize("op", CALLS)
def test_env_var_torch_reaches_torch(monkeypatch: pytest.MonkeyPatch, op: str) -> None:
    monkeypatch.setenv(ENV, "torch")
    triton_runs_everywhere(monkeypatch)
    torch_spies = install_spies(monkeypatch, torch_backend)
    triton_spies = install_spies(monkeypatch, triton_backend)
    CALLS[op]()
    assert len(torch_spies[op].calls) == 1
    assert not triton_spies[op].calls


def test_env_var_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    farthest_point_sample(XYZ, 3)
    monkeypatch.setenv(ENV, "nonsense")
    with pytest.raises(ValueError, match=ENV):
        farthest_point_sample(XYZ, 3)


# --------------------------------------------------------------------------------------------------
# backend="triton" when it cannot run: a clear error, never a silent fallback
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", CALLS)
def test_triton_on_cpu_without_interpreter_raises(op: str) -> None:
    reason = triton_backend.unavailable_reason(XYZ)
    assert reason is not None
    with pytest.raises(RuntimeError, match=r"backend='triton' was requested, but") as info:
        CALLS[op](backend="triton")
    assert reason in str(info.value)
    assert ENV not in str(info.value)


def test_triton_from_env_var_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "triton")
    with pytest.raises(RuntimeError, match=rf"backend='triton' was requested \(through .*{ENV}\)") as info:
        knn(XYZ, XYZ, 2)
    assert triton_backend.unavailable_reason(XYZ) in str(info.value)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton installed")
def test_triton_float64_raises_even_under_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spies = install_spies(monkeypatch, triton_backend)
    xyz = XYZ.double()
    with pytest.raises(RuntimeError, match=r"backend='triton' was requested.*float64"):
        farthest_point_sample(xyz, 3, backend="triton")
    with pytest.raises(RuntimeError, match=r"float64"):
        group(xyz, 3, 4, backend="triton")
    assert not any(spy.calls for spy in spies.values())


def test_triton_float64_raises() -> None:
    # Without the interpreter the reason is the device, or triton missing; either way: an error.
    with pytest.raises(
        RuntimeError, match=r"backend='triton' was requested, but the Triton kernels cannot run"
    ):
        knn(XYZ.double(), XYZ.double(), 2, backend="triton")


# --------------------------------------------------------------------------------------------------
# auto
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpret", [False, True])
@pytest.mark.parametrize("op", CALLS)
def test_auto_on_cpu_picks_torch(monkeypatch: pytest.MonkeyPatch, op: str, interpret: bool) -> None:
    if interpret:  # even where the interpreter could run them, auto keeps CPU tensors on torch
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        triton_runs_everywhere(monkeypatch)
    torch_spies = install_spies(monkeypatch, torch_backend)
    triton_spies = install_spies(monkeypatch, triton_backend)
    CALLS[op](backend="auto")
    CALLS[op]()
    assert len(torch_spies[op].calls) == 2
    assert not triton_spies[op].calls


def test_auto_selection_for_cuda_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    # select_backend only looks at the device (and hands the tensor to unavailable_reason), so a
    # stand-in with a CUDA device checks the CUDA branch without a GPU.
    fake_cuda = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    triton_runs_everywhere(monkeypatch)
    assert dispatch.select_backend("auto", fake_cuda) is triton_backend
    assert dispatch.select_backend(None, fake_cuda) is triton_backend
    assert dispatch.select_backend("torch", fake_cuda) is torch_backend
    monkeypatch.setattr(triton_backend, "unavailable_reason", lambda tensor: "no kernels for this one")
    assert dispatch.select_backend("auto", fake_cuda) is torch_backend  # auto falls back quietly
    with pytest.raises(RuntimeError, match="no kernels for this one"):
        dispatch.select_backend("triton", fake_cuda)


def test_unimportable_triton_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        dispatch, "import_triton", lambda: (None, "pointpeft.ops.triton_backend could not be imported")
    )
    fake_cuda = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    assert dispatch.select_backend("auto", fake_cuda) is torch_backend
    with pytest.raises(RuntimeError, match="could not be imported"):
        farthest_point_sample(XYZ, 3, backend="triton")
    assert available_backends("cpu") == ("torch",)


# --------------------------------------------------------------------------------------------------
# A dispatched call reaches the chosen module with the documented positional arguments
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via_env", [False, True])
def test_triton_dispatch_reaches_triton(monkeypatch: pytest.MonkeyPatch, via_env: bool) -> None:
    triton_runs_everywhere(monkeypatch)
    spies = install_spies(monkeypatch, triton_backend)
    torch_spies = install_spies(monkeypatch, torch_backend)
    kw: dict[str, Any] = {}
    if via_env:
        monkeypatch.setenv(ENV, "triton")
    else:
        kw["backend"] = "triton"
    lengths = torch.tensor([12, 5], dtype=torch.int32)

    idx = farthest_point_sample(XYZ, 3, start_idx=2, lengths=lengths, **kw)
    assert idx is spies["farthest_point_sample"].result
    ((xyz, m, start_idx, got_lengths),) = spies["farthest_point_sample"].calls
    assert xyz is XYZ and (m, start_idx) == (3, 2)
    assert got_lengths.dtype == torch.int64 and got_lengths.tolist() == [12, 5]

    res = knn(XYZ, XYZ, 4, query_lengths=torch.tensor([12, 12]), point_lengths=lengths, **kw)
    assert isinstance(res, ops.KNNResult)
    assert (res.sq_dist, res.idx) == spies["knn"].result
    ((query, points, k, q_lengths, p_lengths),) = spies["knn"].calls
    assert query is XYZ and points is XYZ and k == 4
    assert q_lengths is None  # full clouds are passed as None
    assert p_lengths.dtype == torch.int64 and p_lengths.tolist() == [12, 5]

    res = group(XYZ, 3, 4, start_idx=1, **kw)
    assert isinstance(res, ops.GroupResult)
    assert (res.neighborhood, res.centers) == spies["group"].result
    assert spies["group"].calls == [(XYZ, 3, 4, 1, None)]

    assert not any(spy.calls for spy in torch_spies.values())


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton installed")
def test_triton_interpreter_on_cpu_reaches_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spies = install_spies(monkeypatch, triton_backend)
    farthest_point_sample(XYZ, 3, backend="triton")
    assert len(spies["farthest_point_sample"].calls) == 1


def test_validation_happens_before_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    triton_runs_everywhere(monkeypatch)
    spies = install_spies(monkeypatch, triton_backend)
    with pytest.raises(ValueError, match="num_samples"):
        farthest_point_sample(XYZ, 13, backend="triton")
    with pytest.raises(ValueError, match="point_lengths"):
        knn(XYZ, XYZ, 2, point_lengths=torch.tensor([1, 13]), backend="triton")
    assert not any(spy.calls for spy in spies.values())


# --------------------------------------------------------------------------------------------------
# available_backends
# --------------------------------------------------------------------------------------------------


def test_available_backends_cpu() -> None:
    assert available_backends() == ("torch",)
    assert available_backends("cpu") == ("torch",)
    assert available_backends(torch.device("cpu")) == ("torch",)
    assert available_backends("meta") == ("torch",)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton installed")
def test_available_backends_cpu_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert available_backends("cpu") == ("torch", "triton")


def test_available_backends_follows_unavailable_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []

    def reason(tensor: torch.Tensor) -> None:
        seen.append(tensor)

    monkeypatch.setattr(triton_backend, "unavailable_reason", reason)
    assert available_backends("cpu") == ("torch", "triton")
    assert seen[0].dtype == torch.float32 and seen[0].device.type == "cpu"


@pytest.mark.parametrize("device", ["nonsense", "cuda:x", 3.5])
def test_available_backends_bad_device(device: object) -> None:
    with pytest.raises(
        ValueError, match=rf"device must be a valid, available torch device, got {re.escape(repr(device))}"
    ):
        available_backends(device)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a CUDA device")
def test_available_backends_missing_cuda() -> None:
    with pytest.raises(ValueError, match=r"device must be a valid, available torch device, got 'cuda'"):
        available_backends("cuda")


# --------------------------------------------------------------------------------------------------
# Lazy import: the torch path never imports triton (nor, unless asked, pointpeft.ops.triton_backend)
# --------------------------------------------------------------------------------------------------


def test_torch_path_does_not_import_triton() -> None:
    script = textwrap.dedent(
        """
        import sys
        import torch
        from pointpeft.ops import farthest_point_sample, group, knn
        xyz = torch.rand(2, 20, 3)
        farthest_point_sample(xyz, 4)
        knn(xyz, xyz, 3, backend="auto")
        group(xyz, 4, 3, backend="torch")
        assert "pointpeft.ops.triton_backend" not in sys.modules, "auto on CPU imported triton_backend"
        try:
            farthest_point_sample(xyz, 4, backend="triton")
        except RuntimeError:
            pass
        assert "triton" not in sys.modules, "asking for the triton backend on CPU imported triton"
        """
    )
    src = str(Path(ops.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src}  # the autouse fixture removed the backend variables
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
