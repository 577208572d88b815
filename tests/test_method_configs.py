"""The method files of ``configs/methods/``: each layers over every dataset config (``--config`` given twice,
or a list of files to ``load_config``), later files win, and each gives its method's trainable-parameter
count on Point-MAE for ScanObjectNN (15 classes), the counts of docs/methods.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pointpeft.train.config import METHODS, load_config

CONFIGS = Path(__file__).parents[1] / "configs"
METHOD_FILES = sorted((CONFIGS / "methods").glob("*.yaml"))
DATASET_FILES = [
    CONFIGS / f"{name}.yaml"
    for name in ("scanobjectnn_objbg", "scanobjectnn_objonly", "scanobjectnn_pb_t50_rs", "modelnet40")
]
HEAD_CLS_MAX, HEAD_IDPT_ALL, HEAD_PROMPT, CLS = 267_535, 365_839, 169_231, 2 * 384
DGCNN = 1_330_176
#: Trainable parameters on Point-MAE 12×384, 15 classes (docs/methods.md; our arithmetic from each method's
#: formula, e.g. LoRA: rank 8 beside qkv, proj, fc1 and fc2 of 12 blocks).
EXPECTED = {
    "full_finetune": 22_093_327,
    "linear_probe": HEAD_CLS_MAX + CLS,
    "bitfit": 307_983,
    "ssf": HEAD_CLS_MAX + CLS + 2 * (11 * 384 * 12 + 2 * 384),
    "lora": HEAD_CLS_MAX + CLS + 12 * 8 * ((384 + 3 * 384) + (384 + 384) + (384 + 1536) + (1536 + 384)),
    "adapter": HEAD_CLS_MAX + CLS + 12 * ((384 * 64 + 64) + (64 * 384 + 384)),
    "vpt": HEAD_CLS_MAX + CLS + 2 * 12 * 10 * 384,
    "idpt": HEAD_IDPT_ALL + CLS + DGCNN,
    "idpt_objonly": HEAD_IDPT_ALL + CLS + DGCNN,
    "idpt_objbg": HEAD_PROMPT + CLS + DGCNN,
    # LoRA beside qkv and proj, 4 shared prompt MLPs, the mask predictor, first conv stage, position MLP
    "pointlora": HEAD_CLS_MAX + CLS + 221_184 + 125_312 + 74_113 + 33_792 + 50_048,
    "pointgst": HEAD_CLS_MAX + CLS + 12 * ((384 * 36 + 36) + (36 * 384 + 384) + (36 * 36 + 36) + 2 * 2 * 36),
}


def test_every_method_file_has_an_expected_count_and_names_a_method():
    assert {path.stem for path in METHOD_FILES} == set(EXPECTED)
    for path in METHOD_FILES:
        assert load_config(path)["model"]["method"] in METHODS, path.name


@pytest.mark.parametrize("method_file", METHOD_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("dataset_file", DATASET_FILES, ids=lambda p: p.stem)
def test_method_files_layer_over_every_dataset_config(dataset_file, method_file):
    dataset, method = load_config(dataset_file), load_config(method_file)
    layered = load_config([dataset_file, method_file])
    assert layered["model"]["method"] == method["model"]["method"]
    own = yaml.safe_load(method_file.read_text())
    # the dataset's settings stay, but for the augmentation a method file names (IDPT's rotation)
    assert set(own.get("data", {})) <= {"augment"}
    assert layered["data"] == {**dataset["data"], **own.get("data", {})}
    assert layered["dapt"]["pool"] == method["dapt"]["pool"]  # the method's head input wins
    # the recipe of the method file where it sets one, the dataset's otherwise
    for key in ("drop_path_rate", "pos_mode"):
        source = method if key in own["model"] else dataset
        assert layered["model"][key] == source["model"][key], key


def test_later_config_files_win_and_bad_paths_are_refused(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("optim:\n  lr: 0.1\n  epochs: 70\n")
    second.write_text("optim:\n  lr: 0.2\n")
    optim = load_config([first, second])["optim"]
    assert (optim["lr"], optim["epochs"]) == (0.2, 70)
    assert load_config((second, first))["optim"]["lr"] == 0.1
    assert load_config([first], ["optim.lr=0.3"])["optim"]["lr"] == 0.3  # overrides come last
    with pytest.raises(TypeError, match=r"path must be a config file path .* got \[.*3\]"):
        load_config([first, 3])  # type: ignore[list-item]
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_config([first, tmp_path / "missing.yaml"])


@pytest.mark.parametrize("method_file", METHOD_FILES, ids=lambda p: p.stem)
def test_pointpeft_params_counts_each_method_file(capsys, method_file):
    from pointpeft.cli import main

    dataset = {
        "idpt_objonly": "scanobjectnn_objonly",
        "idpt": "scanobjectnn_pb_t50_rs",
        "pointlora": "scanobjectnn_pb_t50_rs",
    }.get(method_file.stem, "scanobjectnn_objbg")
    args = ["params", "--config", str(CONFIGS / f"{dataset}.yaml"), "--config", str(method_file)]
    assert main(args) == 0
    assert f"trainable params: {EXPECTED[method_file.stem]:,d} ||" in capsys.readouterr().out
