"""A ScanObjectNN-format set with fewer classes than ScanObjectNN's 15 (labels 0 to 9): ``data.num_classes``
sets the head, the labels are checked against it, and without it the head has the format's 15 classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pointpeft.data.scanobjectnn import SCANOBJECTNN_FILES
from pointpeft.train import load_config
from pointpeft.train.build import build_datasets, num_classes_of
from tiny_run import TINY

h5py = pytest.importorskip("h5py")


def _write_set(root: Path, classes: int, train: int = 16, test: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        path = root / SCANOBJECTNN_FILES["OBJ_BG"][split]
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=rng.standard_normal((count, 96, 3)).astype(np.float32))
            f.create_dataset("label", data=(np.arange(count) % classes).astype(np.int64))
    return root


def _config(root: Path, tmp_path: Path, *extra: str) -> dict:
    overrides = [o for o in TINY if not o.startswith("data.synthetic")]
    return load_config(
        None,
        [
            *overrides,
            "data.dataset=scanobjectnn",
            f"data.root={root}",
            f"run.output_dir={tmp_path / 'run'}",
            *extra,
        ],
    )


def test_data_num_classes_sets_the_head_of_a_file_dataset_of_fewer_classes(tmp_path):
    from pointpeft.cli import main

    root = _write_set(tmp_path / "scan10", classes=10)
    config = _config(root, tmp_path, "data.num_classes=10")
    assert num_classes_of(config) == 10 and build_datasets(config)[2] == 10
    assert num_classes_of(_config(root, tmp_path)) == 15  # the format's, when not set
    args = [
        *(o for o in TINY if not o.startswith("data.synthetic")),
        "data.dataset=scanobjectnn",
        f"data.root={root}",
        "data.num_classes=10",
        f"run.output_dir={tmp_path / 'run'}",
        "run.device=cpu",
    ]
    assert main(["train", *args]) == 0
    saved = json.loads((tmp_path / "run" / "best" / "adapter_config.json").read_text())
    assert saved["config"]["num_classes"] == 10 and saved["data"]["num_classes"] == 10


def test_labels_beyond_data_num_classes_and_more_classes_than_the_format_are_refused(tmp_path):
    root = _write_set(tmp_path / "scan10", classes=10)
    with pytest.raises(
        ValueError,
        match=r"data\.num_classes is 8, but the train split \(.*training_objectdataset\.h5\) has label 9",
    ):
        build_datasets(_config(root, tmp_path, "data.num_classes=8"))
    with pytest.raises(
        ValueError, match=r"data\.num_classes \(16\) is above the 15 classes of data\.dataset='scanobjectnn'"
    ):
        num_classes_of(_config(root, tmp_path, "data.num_classes=16"))
