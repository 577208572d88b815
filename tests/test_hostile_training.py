"""Hostile and careless inputs to training: config keys, devices, last.pt files, data, output folders.

Each bad input gets a ValueError / TypeError whose message names the key, file or data set, what was
expected and what was received; nothing deep inside torch, nothing silent, nothing changed before the
error.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pointpeft.safe_load import load_torch_file
from pointpeft.train import (
    DEFAULTS,
    SCHEMA,
    build_datasets,
    build_model,
    build_optimizer,
    check_config,
    evaluate,
    learning_rate,
    load_config,
    parameter_groups,
    resolve_device,
    train,
)
from pointpeft.train import build as train_build
from pointpeft.train import loop as train_loop
from pointpeft.train.resume import load_checkpoint
from tiny_run import TINY

RESUME_ADVICE = r"run\.resume=false .* new run\.output_dir"


def _config(folder, *extra: str) -> dict:
    return load_config(None, [*TINY, f"run.output_dir={folder}", *extra])


def _quiet() -> object:
    return open(os.devnull, "w")


# ---------------------------------------------------------------------------------------------- config
def test_the_schema_covers_every_key_and_the_defaults_pass_it():
    assert {s: set(keys) for s, keys in SCHEMA.items()} == {s: set(keys) for s, keys in DEFAULTS.items()}
    assert check_config(DEFAULTS) == DEFAULTS


@pytest.mark.parametrize(
    ("override", "error", "match"),
    [
        ("optim.epochs=0", ValueError, r"optim\.epochs must be an integer in \[1, 1048576\], got 0"),
        ("optim.epochs=-3", ValueError, r"optim\.epochs must be an integer in \[1, 1048576\], got -3"),
        ("optim.epochs=2.5", TypeError, r"optim\.epochs must be an integer, got 2\.5"),
        ("optim.weight_decay=-1", ValueError, r"optim\.weight_decay must be in \[0, inf\), got -1"),
        ("run.threads=four", TypeError, r"run\.threads must be an integer or null, got 'four'"),
        ("run.threads=0", ValueError, r"run\.threads must be an integer in \[1, 1048576\] or null, got 0"),
        ("data.point_all=abc", TypeError, r"data\.point_all must be an integer or null, got 'abc'"),
        ("data.root=123", TypeError, r"data\.root must be a string or null, got 123 .*quote it"),
        ("run.device=gpu", ValueError, r"run\.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("run.device=cuda:x", ValueError, r"run\.device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
        ("optim.lr=-0.01", ValueError, r"optim\.lr must be in \(0, inf\), got -0\.01"),
        ("optim.lr=0", ValueError, r"optim\.lr must be in \(0, inf\), got 0"),
        ("optim.lr=.nan", ValueError, r"optim\.lr must be a finite number .* got nan"),
        ("optim.lr=.inf", ValueError, r"optim\.lr must be a finite number .* got inf"),
        ("optim.grad_clip=-.inf", ValueError, r"optim\.grad_clip must be a finite number .* got -inf"),
        ("optim.lr=null", TypeError, r"optim\.lr must be a number, got NoneType None"),
        ("optim.lr=[1]", TypeError, r"optim\.lr must be a number"),
        ("optim.batch_size=1", ValueError, r"optim\.batch_size must be an integer in \[2, 1048576\], got 1"),
        (
            "optim.eval_batch_size=0",
            ValueError,
            r"optim\.eval_batch_size must be an integer in \[1, 1048576\]",
        ),
        ("optim.warmup_epochs=-1", ValueError, r"optim\.warmup_epochs must be an integer >= 0"),
        ("model.drop_path_rate=1", ValueError, r"model\.drop_path_rate must be in \[0, 1\), got 1"),
        ("model.depth=0", ValueError, r"model\.depth must be an integer in \[1, 1048576\], got 0"),
        ("model.pos_mode=sometimes", ValueError, r"model\.pos_mode must be one of \('every_block', 'once'\)"),
        ("model.init=xavier", ValueError, r"model\.init must be one of \('point_mae', 'default'\)"),
        ("model.pretrained=7", TypeError, r"model\.pretrained must be a string or null, got 7"),
        ("data.dataset=shapenet", ValueError, r"data\.dataset must be one of"),
        (
            "data.variant=OBJ",
            ValueError,
            r"data\.variant must be one of \('OBJ_BG', 'OBJ_ONLY', 'PB_T50_RS'\)",
        ),
        ("data.synthetic_classes=1", ValueError, r"data\.synthetic_classes must be an integer in \[2, 14\]"),
        (
            "data.synthetic_train=0",
            ValueError,
            r"data\.synthetic_train must be an integer in \[1, \d+\], got 0",
        ),
        ("model.trans_dim=10000000000", ValueError, r"model\.trans_dim must be an integer in \[1, 1048576\]"),
        ("data.npoints=9999999999", ValueError, r"data\.npoints must be an integer in \[1, 1048576\]"),
        ("run.seed=-1", ValueError, r"run\.seed must be an integer in \[0, 4294967295\], got -1"),
        ("run.bf16=2", TypeError, r"run\.bf16 must be true or false, got 2"),
        ("run.output_dir=", TypeError, r"run\.output_dir must be a string, got None"),
        ("run.output_dir=' '", ValueError, r"run\.output_dir must be a non-empty string"),
        ("run.execution=fast", ValueError, r"run\.execution must be one of"),
        ("dapt.rank=0", ValueError, r"dapt\.rank must be >= 1, got 0"),
        ("dapt.rank=2.5", TypeError, r"dapt\.rank must be an int"),
        ("dapt.pool=[]", ValueError, r"dapt\.pool must name at least one"),
        ("dapt.pool=[cls, mean]", ValueError, r"dapt\.pool names must be among"),
        ("dapt.adapter_dropout=.nan", ValueError, r"dapt\.adapter_dropout must be in \[0, 1\), got nan"),
        ("dapt.head_dropout=1", ValueError, r"dapt\.head_dropout must be in \[0, 1\), got 1"),
        ("dapt.update_bn_stats=1", TypeError, r"dapt\.update_bn_stats must be a bool"),
    ],
)
def test_every_key_is_checked_when_read(override, error, match):
    with pytest.raises(error, match=re.escape(f"override {override!r}: ") + match):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ["optim.epochs=3", "optim.warmup_epochs=4"],
            r"optim\.warmup_epochs \(4\) must be <= optim\.epochs \(3\)",
        ),
        (["optim.lr=0.001", "optim.min_lr=0.01"], r"optim\.min_lr \(0\.01\) must be <= optim\.lr \(0\.001\)"),
        (
            ["data.npoints=1024", "data.point_all=1000"],
            r"data\.point_all \(1000\) must be >= data\.npoints \(1024\)",
        ),
        (
            ["data.npoints=64", "model.num_group=128"],
            r"model\.num_group \(128\) must be <= data\.npoints \(64\)",
        ),
        (
            ["data.npoints=16", "model.num_group=8", "model.group_size=32"],
            r"model\.group_size \(32\) must be <=",
        ),
        (
            ["data.root=/data/ScanObjectNN"],
            r"data\.root is set \('/data/ScanObjectNN'\) but data\.dataset is 'synthetic', which reads no files",
        ),
        (
            ["model.trans_dim=30", "model.num_heads=4"],
            r"model\.trans_dim \(30\) must be divisible by model\.num_heads",
        ),
    ],
)
def test_keys_that_must_fit_together(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


NUMBER_KEYS = [(s, k) for s, keys in SCHEMA.items() for k, spec in keys.items() if spec.kind == "number"]
INT_KEYS = [(s, k) for s, keys in SCHEMA.items() for k, spec in keys.items() if spec.kind == "int"]
ALL_KEYS = [(s, k) for s, keys in SCHEMA.items() for k in keys]


@settings(max_examples=40, deadline=None)
@given(
    key=st.sampled_from(NUMBER_KEYS), value=st.sampled_from([math.nan, math.inf, -math.inf, "nan", "-inf"])
)
def test_no_number_key_takes_a_nan_or_infinity(key, value):
    section, name = key
    with pytest.raises(ValueError, match=rf"{section}\.{name} must be"):
        check_config({section: {name: value}})


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(INT_KEYS), below=st.integers(1, 10**6))
def test_no_int_key_takes_a_value_below_its_range(key, below):
    section, name = key
    spec = SCHEMA[section][name]
    low = spec.low if spec.low is not None else 1  # dapt fields: DAPTConfig's range (>= 1)
    with pytest.raises(ValueError, match=rf"{section}\.{name} must be"):
        check_config({section: {name: int(low) - below}})


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(ALL_KEYS), value=st.sampled_from([{"a": 1}, b"bytes", 1j, [[1]]]))
def test_every_key_refuses_a_value_of_another_kind(key, value):
    section, name = key
    with pytest.raises((TypeError, ValueError), match=rf"{section}\.{name}"):
        check_config({section: {name: value}})


def test_a_config_built_by_hand_is_checked_before_anything_is_written(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(
        ValueError, match=r"config: optim\.epochs must be an integer in \[1, 1048576\], got 0"
    ):
        train({"optim": {"epochs": 0}, "run": {"output_dir": str(folder)}})
    with pytest.raises(ValueError, match=r"config: unknown key optim\.epoch;"):
        train({"optim": {"epoch": 3}, "run": {"output_dir": str(folder)}})
    assert not folder.exists()


def test_config_files_and_override_lists(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe binary")
    with pytest.raises(ValueError, match=r"config: '.*model\.pt' is not a YAML text file"):
        load_config(binary)
    with pytest.raises(FileNotFoundError, match=r"config: no file at"):
        load_config(tmp_path)  # a folder
    with pytest.raises(TypeError, match=r"overrides must be a list of 'section\.key=value' strings"):
        load_config(None, "optim.epochs=3")
    with pytest.raises(TypeError, match=r"path must be a config file path"):
        load_config(3)
    empty_section = tmp_path / "c.yaml"
    empty_section.write_text("optim:\nrun:\n  seed: 2\n")
    assert load_config(empty_section)["run"]["seed"] == 2


# ---------------------------------------------------------------------------------------------- device
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_cuda_device_without_a_gpu_names_run_device(tmp_path, device):
    with pytest.raises(
        ValueError, match=rf"run\.device = '{device}' but torch sees no CUDA GPU.*run\.device=cpu"
    ):
        train(_config(tmp_path, f"run.device={device}"))
    assert resolve_device("auto") == torch.device("cpu")


def test_a_gpu_index_that_does_not_exist_names_run_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(
        ValueError, match=r"run\.device = 'cuda:3' but torch sees 2 GPU\(s\) \(cuda:0 to cuda:1\)"
    ):
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(
        ValueError, match=r"run\.device = 'cuda': this is process 2 on its node but the node has 2"
    ):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"run\.device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")


# ---------------------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run's folder (last.pt, metrics.jsonl, best/)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    train(_config(folder), out=_quiet())
    return folder


def _copy_run(finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    return folder


def _edit(folder, change) -> None:
    path = folder / "last.pt"
    state = load_torch_file(path, argument="last.pt")
    change(state)
    torch.save(state, path)


def _gamma_key(state: dict) -> str:
    return next(k for k in state["adapter"] if k.endswith("tfts.gamma"))


def _write(content: bytes):
    return lambda folder: (folder / "last.pt").write_bytes(content)


def _truncate(folder) -> None:
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "truncated": (_truncate, r"truncated or corrupt"),
    "random bytes": (
        _write(bytes(range(256)) * 4),
        r"not a torch\.save file|truncated or corrupt|could not be read",
    ),
    "empty": (_write(b""), r"empty|truncated"),
    "a list": (lambda f: torch.save([1, 2], f / "last.pt"), r"it holds a list, not the dict"),
    "no adapter entry": (
        lambda f: _edit(f, lambda s: s.pop("adapter")),
        r"it lacks the entries \['adapter'\]",
    ),
    "TFTS gamma of shape (1,)": (
        lambda f: _edit(f, lambda s: s["adapter"].__setitem__(_gamma_key(s), torch.ones(1))),
        r"tfts\.gamma: saved \(1,\) torch\.float32, model \(32,\) torch\.float32",
    ),
    "an extra tensor": (
        lambda f: _edit(f, lambda s: s["adapter"].__setitem__("base_model.blocks.blocks.2.x", torch.ones(1))),
        r"0 tensor\(s\) missing \[\], 1 unexpected \[base_model\.blocks\.blocks\.2\.x\]",
    ),
    "a missing tensor": (
        lambda f: _edit(f, lambda s: s["adapter"].pop(_gamma_key(s))),
        r"1 tensor\(s\) missing \[.*tfts\.gamma\]",
    ),
    "a float64 tensor": (
        lambda f: _edit(
            f, lambda s: s["adapter"].__setitem__(_gamma_key(s), s["adapter"][_gamma_key(s)].double())
        ),
        r"tfts\.gamma: saved \(32,\) torch\.float64, model \(32,\) torch\.float32",
    ),
    "a NaN tensor": (
        lambda f: _edit(f, lambda s: s["adapter"][_gamma_key(s)].fill_(math.nan)),
        r"tfts\.gamma: saved values are not all finite",
    ),
    "optimizer moments of another shape": (
        lambda f: _edit(f, lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(7))),
        r"optimizer state does not fit the model: parameter 0 exp_avg: saved \(7,\)",
    ),
    "optimizer groups of other parameters": (
        lambda f: _edit(f, lambda s: s["optimizer"]["param_groups"][0]["params"].pop()),
        r"optimizer state has 2 parameter group\(s\) of \[\d+, \d+\] parameters",
    ),
    "no optimizer state": (
        lambda f: _edit(f, lambda s: s.__setitem__("optimizer", [])),
        r"its 'optimizer' entry must be an optimizer state_dict",
    ),
    "a record too many": (
        lambda f: _edit(f, lambda s: s["records"].append(dict(s["records"][0], epoch=1))),
        r"its 'records' entry must list the 1 finished epochs, got 2 records",
    ),
    "a malformed record": (
        lambda f: _edit(f, lambda s: s["records"][0].__setitem__("train_loss", "low")),
        r"record 0: \['train_loss'\] are not finite numbers",
    ),
    "a best accuracy its records do not have": (
        lambda f: _edit(f, lambda s: s.__setitem__("best_accuracy", 99.0)),
        r"its best accuracy 99\.0 at epoch 0 is not that of its records",
    ),
    "an epoch that is a string": (
        lambda f: _edit(f, lambda s: s.__setitem__("epoch", "0")),
        r"its 'epoch' entry must be an int >= 0 .* got '0'",
    ),
    "a config that is not a mapping": (
        lambda f: _edit(f, lambda s: s.__setitem__("config", None)),
        r"its 'config' entry must hold the \('model', 'dapt'\) sections",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_bad_last_pt_names_the_file_and_changes_nothing(finished_run, tmp_path, case):
    folder = _copy_run(finished_run, tmp_path)
    corrupt, match = CORRUPTIONS[case]
    corrupt(folder)
    before = {name: (folder / name).read_bytes() for name in ("last.pt", "metrics.jsonl")}
    with pytest.raises(ValueError, match=rf"{folder / 'last.pt'}.*({match}).*{RESUME_ADVICE}"):
        train(_config(folder, "optim.epochs=2"), out=_quiet())
    assert {name: (folder / name).read_bytes() for name in before} == before
    fresh = train(_config(folder, "run.resume=false"), out=_quiet())  # the advice works
    assert fresh.epochs_run == 1


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("dapt.rank=8", r"dapt\.rank: saved 4, now 8"),
        ("model.depth=2", r"model\.depth: saved 1, now 2"),
        ("model.trans_dim=64", r"model\.trans_dim: saved 32, now 64"),
        ("dapt.pool=[cls]", r"dapt\.pool: saved \['cls', 'prompt', 'patch'\], now \['cls'\]"),
    ],
)
def test_resuming_with_another_model_config_lists_what_differs(finished_run, tmp_path, override, match):
    folder = _copy_run(finished_run, tmp_path)
    with pytest.raises(
        ValueError,
        match=rf"cannot resume from {folder / 'last.pt'}: it was written for another model; {match}.*{RESUME_ADVICE}",
    ):
        train(_config(folder, "optim.epochs=2", override), out=_quiet())


def test_a_failed_resume_leaves_the_model_and_optimizer_as_they_were(finished_run, tmp_path):
    folder = _copy_run(finished_run, tmp_path)
    _edit(
        folder,
        lambda s: s["optimizer"]["state"][3].__setitem__(
            "exp_avg_sq", -s["optimizer"]["state"][3]["exp_avg_sq"] - 1
        ),
    )
    config = _config(folder, "optim.epochs=2")
    model = build_model(config, 4)
    optimizer = build_optimizer(model, 1e-3, 0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"parameter 3 exp_avg_sq: saved values are negative"):
        load_checkpoint(str(folder / "last.pt"), model, optimizer, config)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}


def test_resume_keeps_this_run_s_optimizer_settings(finished_run, tmp_path):
    folder = _copy_run(finished_run, tmp_path)
    config = _config(folder, "optim.epochs=2", "optim.weight_decay=0.2")
    model = build_model(config, 4)
    optimizer = build_optimizer(model, 1e-3, 0.2)
    state = load_checkpoint(str(folder / "last.pt"), model, optimizer, config)
    assert state.next_epoch == 1 and [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.2]
    assert len(optimizer.state) == sum(len(g["params"]) for g in optimizer.param_groups)


def test_a_data_change_on_resume_is_named_in_a_warning(finished_run, tmp_path):
    folder = _copy_run(finished_run, tmp_path)
    with pytest.warns(UserWarning, match=r"other data settings \(data\.synthetic_test\); resuming anyway"):
        train(_config(folder, "optim.epochs=2", "data.synthetic_test=12"), out=_quiet())


def test_a_last_pt_without_records_resumes_from_the_log_of_older_versions(finished_run, tmp_path):
    folder = _copy_run(finished_run, tmp_path)
    _edit(folder, lambda s: s.pop("records"))
    line = (folder / "metrics.jsonl").read_text()
    (folder / "metrics.jsonl").write_text(
        line.replace('"train_loss": ', '"train_loss": 9') + line
    )  # epoch 0 twice
    result = train(_config(folder, "optim.epochs=2"), out=_quiet())
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert result.epochs_run == 1 and [r["epoch"] for r in records] == [0, 1]
    assert records[0] == json.loads(line)  # the last line of epoch 0 counts


def test_a_last_pt_without_records_and_without_a_log_is_refused(finished_run, tmp_path):
    folder = _copy_run(finished_run, tmp_path)
    _edit(folder, lambda s: s.pop("records"))
    os.remove(folder / "metrics.jsonl")
    with pytest.raises(
        ValueError, match=rf"it holds no epoch records and .*metrics\.jsonl cannot be read.*{RESUME_ADVICE}"
    ):
        train(_config(folder, "optim.epochs=2"), out=_quiet())


def test_a_kill_between_last_pt_and_the_log_of_the_last_epoch_is_repaired_on_resume(finished_run, tmp_path):
    folder = _copy_run(finished_run, tmp_path)
    records = (folder / "metrics.jsonl").read_text()
    (folder / "metrics.jsonl").write_text("")  # last.pt was committed, the log was not
    out = open(tmp_path / "out.txt", "w")
    with out:
        result = train(_config(folder), out=out)
    assert result.epochs_run == 0 and (folder / "metrics.jsonl").read_text() == records
    assert (
        "has already finished 1 epoch(s), optim.epochs = 1: nothing to train"
        in (tmp_path / "out.txt").read_text()
    )


# b"J" is a pickle integer cut short: torch's reader raised struct.error before safe_load caught every error.
@settings(max_examples=10, deadline=None)
@given(data=st.binary(min_size=0, max_size=2000))
@example(data=b"J")
def test_any_bytes_in_last_pt_give_an_error_naming_it(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("bytes")
    (folder / "last.pt").write_bytes(data)
    config = _config(folder)
    model = build_model(config, 4)
    with pytest.raises(ValueError, match=rf"cannot resume.*{folder / 'last.pt'}.*{RESUME_ADVICE}"):
        load_checkpoint(str(folder / "last.pt"), model, build_optimizer(model, 1e-3, 0.0), config)


# ------------------------------------------------------------------------------------------------ data
class _Relabelled(torch.utils.data.Dataset):
    """``dataset`` with the label of item 0 replaced."""

    def __init__(self, dataset, label):
        self.dataset, self.label = dataset, label

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        points, label = self.dataset[index]
        return points, (self.label if index == 0 else label)


@pytest.mark.parametrize("label", [4, 7, -1])
def test_a_training_label_outside_the_classes_names_the_data_and_the_label(tmp_path, monkeypatch, label):
    real = train_loop.build_datasets

    def relabelled(config):
        train_set, test_set, num_classes = real(config)
        return _Relabelled(train_set, label), test_set, num_classes

    monkeypatch.setattr(train_loop, "build_datasets", relabelled)
    with pytest.raises(
        ValueError,
        match=rf"the training set of data\.dataset='synthetic' has label\(s\) \[{label}\] outside \[0, 4\)",
    ):
        train(_config(tmp_path), out=_quiet())


def test_evaluation_labels_outside_the_head_and_empty_test_sets_are_errors(tmp_path):
    config = _config(tmp_path)
    _, test_set, _ = build_datasets(config)
    model = build_model(config, 4)
    with pytest.raises(
        ValueError, match=r"the test set of data\.dataset='synthetic' has label\(s\) \[9\] outside \[0, 4\)"
    ):
        evaluate(model, _Relabelled(test_set, 9), config, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"the test set of data\.dataset='synthetic' is empty"):
        evaluate(model, [], config, torch.device("cpu"))
    with pytest.raises(
        TypeError, match=r"the test set of data\.dataset='synthetic': labels must be integers, got 1\.5"
    ):
        evaluate(model, _Relabelled(test_set, 1.5), config, torch.device("cpu"))
    mixed = [test_set[0], (test_set[1][0][:32], 1)]
    with pytest.raises(ValueError, match=r"every item must be \(points \(P, 3\) tensor, label\) with one P"):
        evaluate(model, mixed, config, torch.device("cpu"))
    accuracy = evaluate(model, test_set, config, torch.device("cpu"))
    assert 0.0 <= accuracy <= 100.0 and evaluate(model, test_set, config, "cpu") == accuracy
    with pytest.raises(TypeError, match=r"device must be a torch\.device or a name such as 'cpu', got 0"):
        evaluate(model, test_set, config, 0)


@pytest.mark.parametrize("split", ["training", "test"])
def test_an_empty_split_names_the_split_and_the_data(tmp_path, monkeypatch, split):
    real = train_build._synthetic_sets

    def emptied(config):
        train_set, test_set, points = real(config)
        return ([] if split == "training" else train_set), ([] if split == "test" else test_set), points

    monkeypatch.setattr(train_build, "_synthetic_sets", emptied)
    with pytest.raises(ValueError, match=rf"the {split} set of data\.dataset='synthetic' is empty"):
        train(_config(tmp_path), out=_quiet())


def test_a_training_set_smaller_than_one_batch_names_optim_batch_size(tmp_path):
    with pytest.raises(ValueError, match=r"has 4 clouds, fewer than one batch \(optim\.batch_size = 8\)"):
        train(_config(tmp_path, "data.synthetic_train=4"), out=_quiet())


def test_npoints_above_the_points_of_the_clouds(tmp_path):
    with pytest.raises(ValueError, match=r"data\.npoints \(128\) must be <= the points per cloud .* have 64"):
        build_datasets(_config(tmp_path, "data.npoints=128"))


# ---------------------------------------------------------------------------------------- output files
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d.write_text("x"), r"run\.output_dir = '.*' is a file, not a folder"),
        (
            lambda d: (d.mkdir(), (d / "last.pt").mkdir()),
            r"last\.pt is a folder, but the run writes its last\.pt file",
        ),
        (
            lambda d: (d.mkdir(), (d / "best").write_text("x")),
            r"best is a file, but the run writes its best folder",
        ),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").mkdir()), r"metrics\.jsonl is a folder"),
    ],
)
def test_an_output_dir_that_cannot_take_the_run_s_files_is_refused_before_training(tmp_path, make, match):
    folder = tmp_path / "run"
    make(folder)
    with pytest.raises(ValueError, match=match):
        train(_config(folder), out=_quiet())


# ------------------------------------------------------------------------------------------------ optim
def test_schedule_and_optimizer_arguments_are_checked():
    kw = dict(epochs=10, lr=1e-3, min_lr=0.0, warmup_epochs=0, warmup_lr=0.0)
    with pytest.raises(ValueError, match=r"epochs must be an int >= 1, got 0"):
        learning_rate(0, **{**kw, "epochs": 0})
    with pytest.raises(ValueError, match=r"lr must be a finite number"):
        learning_rate(0, **{**kw, "lr": math.nan})
    with pytest.raises(TypeError, match=r"epoch must be an int >= 0, got float"):
        learning_rate(1.5, **kw)
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\), got -1"):
        build_optimizer(torch.nn.Linear(2, 2), 1e-3, -1)
    with pytest.raises(ValueError, match=r"lr must be a finite number .* got nan"):
        build_optimizer(torch.nn.Linear(2, 2), math.nan, 0.0)


def test_the_optimizer_is_fused_on_a_gpu_only():
    """AdamW's fused step where every trainable tensor is on a GPU, torch's default elsewhere; the update on
    the GPU equals the default implementation's up to rounding."""
    layer = torch.nn.Linear(4, 3)
    assert not build_optimizer(layer, 1e-3, 0.05).defaults["fused"]
    if not torch.cuda.is_available():
        return
    fused_layer = copy.deepcopy(layer).cuda()
    plain_layer = copy.deepcopy(layer).cuda()
    fused = build_optimizer(fused_layer, 1e-3, 0.05)
    assert fused.defaults["fused"]
    plain = torch.optim.AdamW(parameter_groups(plain_layer, 0.05), lr=1e-3)
    x = torch.randn(8, 4, device="cuda")
    for _ in range(3):
        for module, optimizer in ((fused_layer, fused), (plain_layer, plain)):
            optimizer.zero_grad()
            module(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(fused_layer.parameters(), plain_layer.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_data_augment_picks_the_training_transform(tmp_path, monkeypatch):
    """``data.augment``: scale-and-translate by default, the y rotation of IDPT's recipe, or none; the
    training loop calls what it names on every batch, and a bad name is refused naming the choices."""
    from pointpeft.data import RotateAboutY, ScaleAndTranslate

    assert isinstance(train_loop.training_augmentation("scale_translate"), ScaleAndTranslate)
    assert isinstance(train_loop.training_augmentation("rotate_y"), RotateAboutY)
    assert train_loop.training_augmentation("none") is None
    with pytest.raises(ValueError, match=r"data.augment must be one of .*'rotate_y'.*got 'rotate'"):
        train_loop.training_augmentation("rotate")
    with pytest.raises(ValueError, match=r"data\.augment.*rotate"):
        _config(tmp_path / "bad", "data.augment=rotate")
    calls = []
    real = RotateAboutY.__call__

    def counted(self, points, generator=None):
        calls.append(points.shape)
        return real(self, points, generator)

    monkeypatch.setattr(RotateAboutY, "__call__", counted)
    train(_config(tmp_path / "rot", "data.augment=rotate_y"), out=_quiet())
    assert calls == [(8, 64, 3), (8, 64, 3)]  # the 2 training batches of the epoch, not the test ones
    losses = {}
    for name in ("none", "scale_translate"):
        train(_config(tmp_path / name, f"data.augment={name}"), out=_quiet())
        losses[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])[
            "train_loss"
        ]
    assert losses["none"] != losses["scale_translate"]
