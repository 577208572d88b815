"""Each method file of ``configs/methods/`` through ``pointpeft train`` and ``pointpeft eval`` on each built-in
backbone (``model.backbone=``), at test sizes: the run trains, saves an adapter of its method, and the saved
adapter scores what the run recorded, and ``pointpeft params`` counts the parameters it trained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import pointpeft
from pointpeft.backbones import BACKBONES
from tiny_run import TINY

CONFIGS = Path(__file__).parents[1] / "configs"
METHOD_FILES = sorted((CONFIGS / "methods").glob("*.yaml"))
#: What the published settings ask of a one-block model with 8 groups of 8 points: the prompt at block 0,
#: neighbours and local graphs of at most 8, one small extra grouping.
TEST_SIZES = {
    "idpt": ["idpt.prompt_layer=0", "idpt.k=8"],
    "pointgst": ["pointgst.local_size=8"],
    "pointlora": ["pointlora.scales=[[8,8,4]]", "pointlora.mask_weights=[1.0]"],
}


@pytest.mark.parametrize("method_file", METHOD_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_each_method_file_trains_and_evaluates_on_each_builtin(tmp_path, capsys, backbone, method_file):
    from pointpeft.cli import main

    method = method_file.stem.split("_obj")[0]
    files = ["--config", str(method_file)]  # over the defaults: synthetic data
    widths = {"point_bert": ["model.encoder_dims=24"], "point_mae": ["model.encoder_dims=32"]}
    args = [
        *(o for o in TINY if not o.startswith("model.encoder_dims=")),
        f"model.backbone={backbone}",
        *widths.get(
            backbone, []
        ),  # Point-BERT maps its encoder's width with reduce_dim; the others take none
        *TEST_SIZES.get(method, []),
        "run.device=cpu",
        f"run.output_dir={tmp_path}",
    ]
    assert main(["train", *files, *args]) == 0
    saved = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert saved["backbone"]["builtin"] == backbone
    assert saved["config"]["num_classes"] == 4
    best = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["best_accuracy"]
    capsys.readouterr()
    assert main(["eval", "--adapter", str(tmp_path / "best"), *files, *args]) == 0
    assert f"test accuracy {best:.2f}%" in capsys.readouterr().out
    # `pointpeft params` counts what the run trained
    assert main(["params", *files, *args]) == 0
    counted = re.search(r"trainable params: ([0-9,]+) \|\|", capsys.readouterr().out)
    assert counted is not None
    trained, _ = pointpeft.load_adapter(str(tmp_path / "best")).get_nb_trainable_parameters()
    assert int(counted.group(1).replace(",", "")) == trained
