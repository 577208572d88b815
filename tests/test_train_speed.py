"""`pointpeft train`'s fast step and its time fields: ``run.compile`` (checked, compiled where it says,
never recompiled after the first epoch, the same files as an eager run, an ``auto`` compiler failure
falling back to eager), and the ``time`` entry of every epoch record (present, non-negative, adding up,
resumed, checked on resume)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from pointpeft.safe_load import load_torch_file
from pointpeft.train import check_config, load_config, train
from pointpeft.train import loop as train_loop
from pointpeft.train.resume import RECORD_KEYS, TIME_KEYS
from tiny_run import TINY

# eval_batch_size 8: a last, smaller test batch of 4; on the CPU on a GPU machine too (the asserted lines
# name the device, and the CPU's numbers are exact)
SPEED = [*TINY, "data.synthetic_test=12", "run.device=cpu"]
# Without dropout a step compiled with a backend that runs the captured graph as it is computes what the
# eager step does, bit for bit (dropout's random numbers differ under torch.compile: inductor draws its own).
UNEVEN = ["data.synthetic_train=20"]  # batch_size 8: a last training batch of 4, dropped (drop_last)
NO_DROPOUT = ["dapt.adapter_dropout=0.0", "dapt.head_dropout=0.0", "model.drop_path_rate=0.0"]


def _config(folder, *extra: str) -> dict:
    return load_config(None, [*SPEED, f"run.output_dir={folder}", *extra])


def _records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "time")} for r in records]


def _files(folder) -> dict:
    """What the run wrote, timings aside: last.pt's tensors, records and config, best/'s config, its
    tensors and their metadata."""
    last = load_torch_file(folder / "last.pt", argument="last.pt")
    with safe_open(folder / "best" / "adapter_model.safetensors", "pt") as best:
        best_tensors = {k: best.get_tensor(k) for k in best.keys()}
        metadata = best.metadata()
    return {
        "adapter": last["adapter"],
        "records": _untimed(last["records"]),
        "config": {s: v for s, v in last["config"].items() if s != "run"},
        "best": best_tensors,
        "best_metadata": metadata,
        "best_config": json.loads((folder / "best" / "adapter_config.json").read_text()),
        "best_files": sorted(os.listdir(folder / "best")),
    }


def _equal_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _assert_same_files(a: dict, b: dict) -> None:
    """The same tensors under the same names (none with ``_orig_mod.``), the same records and configs."""
    assert not any("_orig_mod" in k for k in [*a["adapter"], *a["best"], json.dumps(a["best_config"])])
    assert _equal_tensors(a["adapter"], b["adapter"]) and _equal_tensors(a["best"], b["best"])
    assert a["records"] == b["records"] and a["config"] == b["config"]
    assert a["best_metadata"] == b["best_metadata"] and a["best_config"] == b["best_config"]
    assert a["best_files"] == b["best_files"] == ["adapter_config.json", "adapter_model.safetensors"]


class _Counting:
    """A torch.compile backend that runs the captured graph as it is (eager numbers) and records, for
    every graph it compiles, the number of epoch lines printed so far."""

    __name__ = "counting"

    def __init__(self, out: io.StringIO) -> None:
        self.out, self.compiled_in = out, []

    def __call__(self, graph: torch.fx.GraphModule, inputs: list) -> object:
        self.compiled_in.append(self.out.getvalue().count("\nepoch "))
        return graph.forward


class _Failing:
    __name__ = "failing"

    def __call__(self, graph: torch.fx.GraphModule, inputs: list) -> object:
        raise RuntimeError("this compiler cannot compile anything")


def _in_a_new_thread(work) -> None:
    """Run ``work()`` in a thread of its own (no DAPT call ran there before), raising what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # handed to the test's thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Every test starts with torch.compile's caches empty (they count recompiles per function)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------- config
def test_run_compile_defaults_to_auto_and_takes_true_false_and_auto():
    assert load_config(None)["run"]["compile"] == "auto"
    for text, value in (("true", True), ("false", False), ("auto", "auto")):
        assert load_config(None, [f"run.compile={text}"])["run"]["compile"] == value


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.text(max_size=8).filter(lambda t: t != "auto"), st.integers(), st.floats(), st.none()))
def test_run_compile_refuses_anything_else_naming_the_key(value):
    expected = ValueError if isinstance(value, str) else TypeError
    with pytest.raises(expected, match=r"run\.compile must be auto, true or false, got "):
        check_config({"run": {"compile": value}})


@pytest.mark.parametrize(("setting", "device", "wanted"), [
    (True, "cpu", True), (True, "cuda", True), (False, "cuda", False), (False, "cpu", False),
    ("auto", "cuda", True), ("auto", "cuda:1", True), ("auto", "cpu", False),
])  # fmt: skip
def test_auto_compiles_on_a_gpu_only(setting, device, wanted):
    assert train_loop.compile_wanted(setting, torch.device(device)) is wanted


@pytest.mark.parametrize(("setting", "device", "world", "backend", "mode"), [
    ("reduce-overhead", "cuda", 1, "inductor", "reduce-overhead"),
    ("reduce-overhead", "cuda:1", 1, "inductor", "reduce-overhead"),
    ("reduce-overhead", "cuda", 2, "inductor", "default"),  # DDP: the all-reduce stays outside graphs
    ("reduce-overhead", "cpu", 1, "inductor", "default"),  # no CUDA graphs on a CPU
    ("reduce-overhead", "cuda", 1, "aot_eager", "default"),  # a mode is inductor's option
    ("default", "cuda", 1, "inductor", "default"),
])  # fmt: skip
def test_compile_mode_graphs_a_single_gpu_inductor_step_only(
    monkeypatch, setting, device, world, backend, mode
):
    monkeypatch.setattr(train_loop, "COMPILE_BACKEND", backend)
    assert train_loop.compile_mode(setting, torch.device(device), world) == mode


@pytest.mark.parametrize("value", ["max-autotune", "Default", "", "reduce_overhead"])
def test_run_compile_mode_refuses_other_modes_naming_the_key(value):
    with pytest.raises(ValueError, match=r"run\.compile_mode"):
        check_config({"run": {"compile_mode": value}})


def test_the_compiled_step_is_compiled_in_the_mode_compile_mode_chose(tmp_path, monkeypatch):
    calls = []

    def recording_compile(module, **kwargs):
        calls.append(kwargs)
        return module

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(train_loop, "compile_mode", lambda setting, device, world: "reduce-overhead")
    out = io.StringIO()
    train(_config(tmp_path, "run.compile=true"), out=out)
    assert calls and all(c.get("mode") == "reduce-overhead" and c["dynamic"] is False for c in calls), calls
    assert "mode 'reduce-overhead'; run.compile=true on cpu)" in out.getvalue()


# --------------------------------------------------------------------------------------------- compile
def test_auto_on_a_cpu_trains_eager_and_says_so(tmp_path, monkeypatch):
    out = io.StringIO()
    backend = _Counting(out)
    monkeypatch.setattr(train_loop, "COMPILE_BACKEND", backend)
    train(_config(tmp_path), out=out)
    assert backend.compiled_in == []
    assert "training step: eager (run.compile=auto compiles on a GPU only, this is cpu)" in out.getvalue()


def test_a_compiled_run_writes_what_an_eager_run_writes_and_compiles_in_its_first_epoch_only(
    tmp_path, monkeypatch
):
    eager_out = io.StringIO()
    train(
        _config(tmp_path / "eager", *NO_DROPOUT, *UNEVEN, "optim.epochs=3", "run.compile=false"),
        out=eager_out,
    )
    assert "training step: eager (run.compile=false)" in eager_out.getvalue()
    out = io.StringIO()
    backend = _Counting(out)
    monkeypatch.setattr(train_loop, "COMPILE_BACKEND", backend)
    config = _config(tmp_path / "compiled", *NO_DROPOUT, *UNEVEN, "optim.epochs=3", "run.compile=true")
    _in_a_new_thread(lambda: train(config, out=out))  # whose first DAPT call is the run's
    assert (
        "training step: compiled (torch.compile, backend 'counting', mode 'default'; run.compile=true on cpu)"
        in out.getvalue()
    )
    # the training step once (one batch shape), the evaluation twice (a full and the last, smaller batch)
    assert backend.compiled_in == [0, 0, 0], backend.compiled_in
    _assert_same_files(_files(tmp_path / "compiled"), _files(tmp_path / "eager"))


def test_a_compiled_run_resumes_compiled_with_aot_eager(tmp_path, monkeypatch):
    """aot_eager traces forward and backward as torch.compile's default backend does; a run cut after one
    epoch and resumed compiled ends with the adapter names (no ``_orig_mod.``) of an eager run."""
    monkeypatch.setattr(train_loop, "COMPILE_BACKEND", "aot_eager")
    train(_config(tmp_path / "cut", "run.compile=true"), out=io.StringIO())
    out = io.StringIO()
    result = train(_config(tmp_path / "cut", "optim.epochs=2", "run.compile=true"), out=out)
    assert result.epochs_run == 1 and "compiled (torch.compile, backend 'aot_eager'" in out.getvalue()
    train(_config(tmp_path / "eager", "optim.epochs=2", "run.compile=false"), out=io.StringIO())
    compiled, eager = _files(tmp_path / "cut"), _files(tmp_path / "eager")
    assert compiled["adapter"].keys() == eager["adapter"].keys()
    assert not any("_orig_mod" in k for k in compiled["adapter"])
    assert [r["epoch"] for r in compiled["records"]] == [0, 1]
    assert all(torch.isfinite(v).all() for v in compiled["adapter"].values())


def test_auto_falls_back_to_eager_when_the_compiler_fails(tmp_path, monkeypatch):
    eager = train(_config(tmp_path / "eager", "optim.epochs=2", "run.compile=false"), out=io.StringIO())
    monkeypatch.setattr(train_loop, "COMPILE_BACKEND", _Failing())
    monkeypatch.setattr(train_loop, "compile_wanted", lambda setting, device: setting is not False)
    out = io.StringIO()
    result = train(_config(tmp_path / "auto", "optim.epochs=2"), out=out)
    text = out.getvalue()
    assert (
        "training step: compiled (torch.compile, backend 'failing', mode 'default'; run.compile=auto on cpu)"
        in text
    )
    for what in ("training step", "evaluation"):
        assert re.search(rf"torch\.compile failed on the first {what} \(.*\); running it uncompiled", text), (
            what
        )
        assert text.count(f"failed on the first {what}") == 1
    assert result.best_accuracy == eager.best_accuracy
    _assert_same_files(_files(tmp_path / "auto"), _files(tmp_path / "eager"))


def test_true_does_not_hide_a_compiler_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "COMPILE_BACKEND", _Failing())
    with pytest.raises(Exception, match="this compiler cannot compile anything"):
        train(_config(tmp_path, "run.compile=true"), out=io.StringIO())


# ------------------------------------------------------------------------------------------------ time
def _assert_times(record: dict) -> None:
    times = record["time"]
    assert set(times) == set(TIME_KEYS)
    assert all(isinstance(v, float) and v >= 0 for v in times.values()), times
    parts = times["data_s"] + times["step_s"] + times["eval_s"] + times["save_s"]
    assert parts <= times["epoch_s"] + 1e-6, times
    assert record["seconds"] <= times["epoch_s"] + 1e-6


def test_every_epoch_record_says_where_its_time_went(tmp_path):
    out = io.StringIO()
    train(_config(tmp_path / "run", "optim.epochs=2"), out=out)
    train(_config(tmp_path / "run", "optim.epochs=3"), out=out)  # resumed: its first epoch too
    records = _records(tmp_path / "run")
    last = load_torch_file(tmp_path / "run" / "last.pt", argument="last.pt")
    assert last["records"] == records  # the log is last.pt's records, time included
    assert [set(r) for r in records] == [{*RECORD_KEYS, "time"}] * 3
    for record in records:
        _assert_times(record)
    assert records[1]["time"]["save_s"] > 0  # epoch 0's writes, counted in epoch 1
    assert records[0]["time"]["save_s"] == records[2]["time"]["save_s"] == 0.0  # first of each call
    lines = re.findall(
        r"epoch +\d+/\d+ .*\(([\d.]+) s: data ([\d.]+) step ([\d.]+) eval ([\d.]+) save ([\d.]+)\)",
        out.getvalue(),
    )
    assert len(lines) == 3
    for line, record in zip(lines, records, strict=True):
        expected = [record["time"][k] for k in ("epoch_s", "data_s", "step_s", "eval_s", "save_s")]
        assert [float(x) for x in line] == [round(v, 1) for v in expected]


def _edit(folder, change) -> None:
    path = folder / "last.pt"
    state = load_torch_file(path, argument="last.pt")
    change(state)
    torch.save(state, path)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one") / "run"
    train(_config(folder), out=io.StringIO())
    return folder


def test_a_last_pt_of_records_without_time_resumes(one_epoch, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(one_epoch, folder)
    _edit(folder, lambda s: s["records"][0].pop("time"))
    result = train(_config(folder, "optim.epochs=2"), out=io.StringIO())
    records = _records(folder)
    assert result.epochs_run == 1 and "time" not in records[0]
    _assert_times(records[1])


@pytest.mark.parametrize(("time", "match"), [
    ({"data_s": 1.0}, r"record 0: its 'time' entry has \['data_s'\], expected \['data_s', 'step_s'"),
    ([1.0], r"record 0: its 'time' entry has list"),
    (dict.fromkeys(TIME_KEYS, 0.0) | {"step_s": -1.0}, r"record 0: time \['step_s'\] are not finite numbers >= 0"),
    (dict.fromkeys(TIME_KEYS, 0.0) | {"eval_s": float("nan")}, r"time \['eval_s'\] are not finite"),
    (dict.fromkeys(TIME_KEYS, 0.0) | {"save_s": "1"}, r"time \['save_s'\] are not finite"),
])  # fmt: skip
def test_a_malformed_time_entry_is_refused_on_resume(one_epoch, tmp_path, time, match):
    folder = tmp_path / "run"
    shutil.copytree(one_epoch, folder)
    _edit(folder, lambda s: s["records"][0].__setitem__("time", time))
    before = (folder / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=rf"cannot resume from .*last\.pt: .*{match}"):
        train(_config(folder, "optim.epochs=2"), out=io.StringIO())
    assert (folder / "last.pt").read_bytes() == before
