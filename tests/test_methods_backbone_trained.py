"""The methods that train backbone parameters under ``pointpeft.get_peft_model``: BitFit (the biases) and full
fine-tuning (everything). Each adapter trains its own copies: its trainable set and count, identity at init,
gradients only where they belong, full fine-tuning equal to ``pointpeft.full_finetune``, the adapter round
trip, adapters of other methods beside them untouched, unloading bit for bit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open

import pointpeft
from conftest import SMALL, randomize_dapt
from pointpeft import BitFitConfig, DAPTConfig, FullFinetuneConfig, SSFConfig
from pointpeft.backbones import PointMAE
from pointpeft.checkpoints import strip_wrapper_names
from pointpeft.dapt.backbone_state import own_parameter_paths

C = SMALL["trans_dim"]


def _backbone(seed: int = 0, **kwargs) -> PointMAE:
    torch.manual_seed(seed)
    return PointMAE(**{**SMALL, **kwargs})


def _points(seed: int = 1) -> torch.Tensor:
    return torch.rand(4, 96, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _own(model: pointpeft.DAPTModel) -> dict[str, torch.Tensor]:
    """The backbone's parameters as installed now, under their own (pre-wrap) names."""
    names = own_parameter_paths(model.base_model)
    return {names[path]: model.base_model.get_parameter(path) for path in names}


def _step(model: torch.nn.Module, points: torch.Tensor, lr: float = 0.5) -> None:
    """One SGD step on a cross entropy, so that every trainable tensor moves."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(points), torch.arange(len(points)) % 5).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------- trainable sets
def test_bitfit_trains_every_backbone_bias_the_head_and_the_cls_token_with_its_count():
    backbone = _backbone()
    biases = {n: p.numel() for n, p in backbone.named_parameters() if "bias" in n}
    assert any(".norm1." in n for n in biases) and any("encoder" in n for n in biases)
    model = pointpeft.get_peft_model(backbone, BitFitConfig(num_classes=5))
    trained = model.trained_backbone_parameters("default")
    assert {strip_wrapper_names(p) for p in trained} == set(biases)
    names = _trainable(model)
    assert {n for n in names if n.startswith("base_model.") and "cls_" not in n} == {
        f"base_model.{p}" for p in trained
    }
    head = sum(p.numel() for p in model.head.parameters())
    assert model.get_nb_trainable_parameters()[0] == sum(biases.values()) + head + 2 * C


def test_full_finetuning_trains_every_parameter_with_full_finetunes_count():
    model = pointpeft.get_peft_model(_backbone(), FullFinetuneConfig(num_classes=5))
    reference = pointpeft.full_finetune(_backbone(), 5)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == total == reference.get_nb_trainable_parameters()[0]
    assert all(p.requires_grad for p in model.base_model.parameters())


def test_on_point_mae_the_counts_are_those_of_the_paper_setting():
    """Point-MAE for ScanObjectNN (15 classes, width 384, 12 blocks): full fine-tuning counts 22,093,327, as
    the reference's; BitFit, every bias (39,680), the head on CLS + max of the patches and the CLS token."""
    full = pointpeft.get_peft_model(PointMAE(), FullFinetuneConfig(num_classes=15))
    assert full.get_nb_trainable_parameters() == (22_093_327, 22_093_327)
    bitfit = pointpeft.get_peft_model(PointMAE(), BitFitConfig(num_classes=15))
    assert bitfit.get_nb_trainable_parameters()[0] == 39_680 + 267_535 + 768


@pytest.mark.parametrize("config", [BitFitConfig(num_classes=5), FullFinetuneConfig(num_classes=5)])
def test_gradients_reach_the_trainable_set_and_nothing_else(config):
    model = pointpeft.get_peft_model(_backbone(), config).train()
    torch.nn.functional.cross_entropy(model(_points()), torch.arange(4) % 5).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == _trainable(model)
    assert any(".bias" in n and n.startswith("base_model.blocks") for n in with_grad)


# ------------------------------------------------------------------------------------- what they compute
@pytest.mark.parametrize("config", [BitFitConfig(num_classes=5), FullFinetuneConfig(num_classes=5)])
def test_at_init_the_backbone_features_are_the_frozen_ones(config):
    points = _points()
    reference = _backbone().eval()
    kept = []
    handle = reference.norm.register_forward_hook(lambda module, args, out: kept.append(out))
    with torch.no_grad():
        reference(points)
    handle.remove()
    model = pointpeft.get_peft_model(_backbone(), config).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(points).tokens, kept[0], rtol=0, atol=0)


@pytest.mark.parametrize("execution", ["fused", "recompute", "plain"])
def test_full_finetuning_computes_full_finetune_and_its_gradients(execution):
    """The method of get_peft_model and the reference's baseline (pointpeft.full_finetune, the backbone's own
    forward) give the same logits and the same gradient on every parameter, in every execution mode."""
    points, labels = _points(), torch.arange(4) % 5
    settings = {"head_dropout": 0.0}
    model = pointpeft.get_peft_model(
        _backbone(), FullFinetuneConfig(num_classes=5, **settings), execution=execution
    )
    reference = pointpeft.full_finetune(_backbone(), 5, **settings, execution="plain")
    reference.head.load_state_dict(model.head.state_dict())
    grads = []
    for runner, prefix in ((model, "heads.default."), (reference, "head.")):
        runner.train()
        logits = runner(points)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        grads.append(
            (
                logits.detach(),
                {
                    strip_wrapper_names(n).replace(prefix, "head."): p.grad
                    for n, p in runner.named_parameters()
                },
            )
        )
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    assert grads[0][1].keys() == grads[1][1].keys()
    for name, grad in grads[1][1].items():
        assert grad is not None, name
        torch.testing.assert_close(grads[0][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_each_adapter_trains_its_own_copies_and_the_others_keep_the_pretrained_values():
    """A trained BitFit and a trained full fine-tuning adapter beside a DAPT one: DAPT, the bare backbone and
    unloading see the pre-trained weights; each of the two sees its own."""
    points = _points()
    backbone = _backbone()
    pretrained = copy.deepcopy(backbone.state_dict())
    model = pointpeft.get_peft_model(backbone, DAPTConfig(num_classes=5, rank=4), adapter_name="dapt")
    model.add_adapter("bitfit", BitFitConfig(num_classes=5))
    model.add_adapter("full", FullFinetuneConfig(num_classes=5))
    learned = {}
    for name in ("bitfit", "full"):
        model.set_adapter(name)
        _step(model, points)
        learned[name] = {k: v.detach().clone() for k, v in _own(model).items()}
    moved = {k for k in learned["bitfit"] if not torch.equal(learned["bitfit"][k], pretrained[k])}
    assert moved and all("bias" in k or "cls_" in k for k in moved)
    assert any("weight" in k for k in learned["full"] if not torch.equal(learned["full"][k], pretrained[k]))
    for name in ("dapt", "bitfit", "full"):
        model.set_adapter(name)
        for key, value in _own(model).items():
            if name != "dapt" and "cls_" in key:
                continue  # the CLS token trains per adapter, as it always did
            expected = pretrained[key] if name == "dapt" else learned[name][key]
            assert torch.equal(value, expected), (name, key)
    model.set_adapter("full")
    with model.disable_adapter():
        assert all(torch.equal(v, pretrained[k]) for k, v in _own(model).items())
    plain = model.unload()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in pretrained.items())
    assert plain.state_dict().keys() == pretrained.keys()


def test_an_inactive_trained_adapter_follows_the_model_to_another_dtype():
    model = pointpeft.get_peft_model(_backbone(), BitFitConfig(num_classes=5), adapter_name="bitfit")
    model.add_adapter("dapt", DAPTConfig(num_classes=5, rank=4))
    model.set_adapter("dapt")
    model.double().eval()
    for name in ("bitfit", "dapt"):
        model.set_adapter(name)
        with torch.no_grad():
            assert model(_points().double()).dtype == torch.float64
    assert model.unload().norm.bias.dtype == torch.float64


# ---------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize(
    ("config", "peft_type"),
    [(BitFitConfig(num_classes=5), "BITFIT"), (FullFinetuneConfig(num_classes=5), "FULL_FINETUNE")],
)
def test_adapter_round_trip(tmp_path, config, peft_type):
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), config)
    _step(model, points)
    model.eval()
    model.save_adapter(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == peft_type and saved["config"] == config.to_dict()
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {f"base_model.{p}" for p in model.trained_backbone_parameters("default")} <= keys
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    assert type(loaded.config) is type(config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)


def test_an_adapter_saved_beside_a_trained_bitfit_loads_onto_the_pretrained_backbone(tmp_path):
    """The backbone record's digest counts trained parameters at their pre-trained values: an SSF adapter
    saved while a trained BitFit adapter is active holds no bias and loads onto a fresh backbone."""
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5), adapter_name="ssf")
    randomize_dapt(model, seed=2)
    model.add_adapter("bitfit", BitFitConfig(num_classes=5))
    model.set_adapter("bitfit")
    _step(model, points)
    model.save_adapter(str(tmp_path), ["ssf"])
    with safe_open(str(tmp_path / "ssf" / "adapter_model.safetensors"), "pt") as f:
        assert not any("bias" in k and k.startswith("base_model.") for k in f.keys())
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path / "ssf")).eval()
    model.set_adapter("ssf")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ CLI
def test_pointpeft_params_counts_and_names_the_trained_backbone_parameters(capsys):
    from pathlib import Path

    from pointpeft.cli import main

    config = Path(__file__).parents[1] / "configs" / "scanobjectnn_objbg.yaml"
    base = ["params", "--config", str(config), "dapt.pool=[cls,patch]"]
    expected = {
        "bitfit": {"head": 267_535, "backbone": 39_680, "tokens": 768},
        "full_finetune": {"head": 267_535, "backbone": 22_093_327 - 267_535 - 768, "tokens": 768},
    }
    for method, kinds in expected.items():
        assert main([*base, f"method={method}"]) == 0
        lines = capsys.readouterr().out.splitlines()
        table = {
            line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1].replace(",", ""))
            for line in lines[:-1]
        }
        assert table == kinds, (method, table)
        assert f"trainable params: {sum(kinds.values()):,d} ||" in lines[-1]
