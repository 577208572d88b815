"""A save_adapter killed at any point leaves a folder that loads as the old adapter or the new one, whole.

One subprocess builds the new adapter Y; for every call point of the save (each ``os.replace``, each
``os.fsync``, each file ``write``, found by a first, uninterrupted run that records them) it forks a child
that saves Y over a copy of the folder holding adapter X, with that call patched to ``os._exit(17)`` (a
``write`` writes half its data first). The test then loads every folder: before the weights file is
renamed into place it must give exactly X's logits, after it exactly Y's, never an error or a mix. The
same is done for a first save into an empty folder, where before the commit there is nothing to load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import pointpeft
from conftest import SMALL, randomize_dapt
from pointpeft import DAPTConfig, wrap_with_dapt
from pointpeft.backbones import PointMAE

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill runs fork one child per call point")

TESTS = os.path.dirname(os.path.abspath(__file__))
SHAPE = {**SMALL, "depth": 2}
POINTS_SEED = 3


def points() -> torch.Tensor:
    return torch.rand(4, 64, 3, generator=torch.Generator().manual_seed(POINTS_SEED)) * 2 - 1


def backbone() -> PointMAE:
    torch.manual_seed(0)
    return PointMAE(**SHAPE)


def build_model(which: str) -> pointpeft.DAPTModel:
    """Adapter X (rank 8, BatchNorm statistics moved and saved) or Y (rank 4, another head, statistics
    not saved): different tensor names and shapes, so a mix of the two cannot load."""
    if which == "x":
        config = DAPTConfig(num_classes=4, rank=8)
    else:
        config = DAPTConfig(num_classes=4, rank=4, pool=("cls", "patch"), update_bn_stats=False)
    model = wrap_with_dapt(backbone(), config)
    randomize_dapt(model, seed=1 if which == "x" else 2)
    if which == "x":  # X is built in this process only; Y also in the subprocess, with other threads
        with torch.no_grad():
            model.train()(points())  # moves X's BatchNorm statistics away from the pre-trained ones
    return model.eval()


SCRIPT = textwrap.dedent(
    """
    import json, os, shutil, sys
    sys.path.insert(0, TESTS)
    import torch
    from test_kill_adapter_writes import build_model
    import pointpeft

    torch.set_num_threads(1)  # after conftest set it: a forked child must not wait on pool threads

    model = build_model("y")
    real_replace, real_fsync, real_fdopen = os.replace, os.fsync, os.fdopen

    def arm(kind, k, trace):
        counts = {"replace": 0, "fsync": 0, "write": 0}

        def hit(name):
            counts[name] += 1
            trace.append(name)
            return name == kind and counts[name] == k

        class File:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                if hit("write"):
                    self._f.write(data[: len(data) // 2])
                    self._f.flush()
                    os._exit(17)
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                self._f.__enter__()
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

        def replace(src, dst):
            if hit("replace"):
                os._exit(17)
            return real_replace(src, dst)

        def fsync(fd):
            if hit("fsync"):
                os._exit(17)
            return real_fsync(fd)

        os.replace, os.fsync = replace, fsync
        os.fdopen = lambda *a, **kw: File(real_fdopen(*a, **kw))

    def run(kind, k, start, folder, trace_path=None):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(start, folder)
        pid = os.fork()
        if pid == 0:
            try:
                trace = []
                arm(kind, k, trace)
                pointpeft.save_adapter(model, folder)
                if trace_path is not None:
                    with open(trace_path, "w") as f:
                        json.dump(trace, f)
            except BaseException:
                os._exit(3)
            os._exit(0)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    work = sys.argv[1]
    results = []
    for start in ("x", "empty"):
        trace_path = os.path.join(work, "trace.json")
        code = run(None, 0, os.path.join(work, start), os.path.join(work, start + "-never"), trace_path)
        with open(trace_path) as f:
            trace = json.load(f)
        results.append({"start": start, "kind": None, "k": 0, "index": len(trace), "code": code,
                        "folder": os.path.join(work, start + "-never"), "trace": trace})
        for index, kind in enumerate(trace):
            k = trace[: index + 1].count(kind)
            folder = os.path.join(work, f"{start}-{kind}-{k}")
            code = run(kind, k, os.path.join(work, start), folder)
            results.append({"start": start, "kind": kind, "k": k, "index": index, "code": code,
                            "folder": folder, "trace": trace})
    print(json.dumps(results))
    """
)


def _load(folder: str) -> tuple[torch.Tensor, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = pointpeft.load_adapter(backbone(), folder).eval()
        with torch.no_grad():
            logits = model(points())
    return logits, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def killed_saves(tmp_path_factory):
    work = tmp_path_factory.mktemp("kills")
    build_model("x").save_adapter(str(work / "x"))
    (work / "empty").mkdir()
    script = SCRIPT.replace("sys.path.insert(0, TESTS)", f"sys.path.insert(0, {TESTS!r})")
    done = subprocess.run(
        [sys.executable, "-c", script, str(work)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_call_point_of_the_save_was_killed(killed_saves):
    trace = killed_saves[0]["trace"]
    # Two files, each: one write, the file's fsync, the rename, the folder's fsync.
    assert sorted(trace) == sorted(["write", "fsync", "replace", "fsync"] * 2), trace
    for run in killed_saves:
        assert run["code"] == (0 if run["kind"] is None else 17), run


def test_a_killed_save_over_an_adapter_loads_the_old_or_the_new_one_whole(killed_saves):
    old, new = _logits("x"), _logits("y")
    runs = [r for r in killed_saves if r["start"] == "x"]
    assert len(runs) == 9
    commit = runs[0]["trace"].index("replace")  # the weights file's rename
    config_commit = len(runs[0]["trace"]) - 1 - runs[0]["trace"][::-1].index("replace")
    for run in runs:
        logits, messages = _load(run["folder"])
        expected = old if run["index"] <= commit else new
        assert torch.equal(logits, expected), run
        between = commit < run["index"] <= config_commit
        disagree = [m for m in messages if "disagrees with the config stored in" in m]
        assert bool(disagree) == between, (run, messages)
        if disagree:
            assert "adapter_config.json" in disagree[0] and "adapter_model.safetensors" in disagree[0]
        stray = [
            n
            for n in os.listdir(run["folder"])
            if n not in (pointpeft.dapt.adapter_files.CONFIG_NAME, pointpeft.dapt.adapter_files.WEIGHTS_NAME)
        ]
        assert all(".tmp-" in n for n in stray), stray


def test_a_killed_first_save_leaves_nothing_or_the_new_adapter(killed_saves):
    new = _logits("y")
    runs = [r for r in killed_saves if r["start"] == "empty"]
    commit = runs[0]["trace"].index("replace")
    for run in runs:
        if run["index"] <= commit:
            with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
                _load(run["folder"])
            continue
        logits, messages = _load(run["folder"])
        assert torch.equal(logits, new), run
        assert all("disagrees" not in m for m in messages)
        config_written = os.path.exists(os.path.join(run["folder"], pointpeft.dapt.adapter_files.CONFIG_NAME))
        assert config_written or any("is missing; using the config stored in" in m for m in messages)


def _logits(which: str) -> torch.Tensor:
    with torch.no_grad():
        return build_model(which)(points())


def test_a_save_over_the_folder_keeps_no_stale_file(tmp_path):
    """Saving Y over X replaces both files; X's BatchNorm statistics are not left behind."""
    build_model("x").save_adapter(str(tmp_path))
    build_model("y").save_adapter(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    logits, messages = _load(str(tmp_path))
    assert torch.equal(logits, _logits("y")) and not messages
