"""Every backbone users bring trains through ``pointpeft train`` (``model.factory=...``, with its preset and
detected) for 2 epochs on synthetic data, and its adapter evaluates with ``pointpeft eval --adapter DIR``
alone: the upstream doubles of ACT, Point-BERT, ReCon, PointGPT and openpoints' PointViT, a timm-style ViT
and a model on ``nn.TransformerEncoder`` (the built-ins and the official Point-MAE double: test_any_backbone)."""

from __future__ import annotations

import json
import re

import pytest
from tests.upstream import openpoints_official

from pointpeft.cli import main

TINY = [
    "data.npoints=128",
    "data.synthetic_points=128",
    "data.synthetic_classes=4",
    "data.synthetic_train=16",
    "data.synthetic_test=8",
    "dapt.rank=4",
    "optim.batch_size=8",
    "optim.eval_batch_size=8",
    "optim.warmup_epochs=0",
    "optim.epochs=2",
    "run.progress=false",
    "run.threads=1",
    "run.device=cpu",  # the same numbers on a machine with a GPU
]
# factory: preset
CASES = {
    "act": "point_mae",
    "point_bert": "point_bert",
    "recon": "recon",
    "pointgpt": "pointgpt",
    "openpoints": "openpoints_pointvit",
    "timm_vit": "timm_vit",
    "torch_encoder": "torch_transformer_encoder",
}


def _run(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("layout", ["preset", "detected"])
@pytest.mark.parametrize("name", list(CASES))
def test_each_backbone_trains_through_the_cli_and_evaluates_from_its_folder(
    name, layout, capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(openpoints_official, "cuda_buffer", openpoints_official.cpu_buffer)  # no GPU here
    chosen = [f"model.layout={CASES[name]}"] if layout == "preset" else []
    out = tmp_path / "run"
    printed = _run(
        capsys,
        "train",
        *TINY,
        f"model.factory=tests.upstream_factories:{name}",
        *chosen,
        f"run.output_dir={out}",
    )
    epochs = re.findall(r"^epoch +(\d+)/2 .* test +[0-9.]+%", printed, re.M)
    assert epochs == ["1", "2"], printed
    best = float(re.search(r"best test accuracy ([0-9.]+)%", printed).group(1))
    saved = json.loads((out / "best" / "adapter_config.json").read_text())
    assert saved["backbone"]["factory"] == f"tests.upstream_factories:{name}"
    assert saved["layout"]["preset"] == (CASES[name] if layout == "preset" else None)
    evaluated = _run(capsys, "eval", "--adapter", str(out / "best"), "run.progress=false", "run.device=cpu")
    assert re.search(r"test accuracy ([0-9.]+)%", evaluated).group(1) == f"{best:.2f}"
