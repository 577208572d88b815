"""Every method on every built-in backbone (Point-MAE, Point-BERT, ReCon, PointGPT), through
``pointpeft.get_peft_model``: the contract each method keeps wherever it is added. It builds without a
warning; a training step gives a gradient to every trainable tensor and to nothing else (what
DistributedDataParallel needs); the count is that of the trainable tensors; the adapter round trip onto a
fresh backbone gives the same logits; and an adapter of another method beside it leaves it as it was."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn import functional as F

import pointpeft
from pointpeft import (
    AdapterConfig,
    BitFitConfig,
    DAPTConfig,
    FullFinetuneConfig,
    IDPTConfig,
    LinearProbeConfig,
    LoRAConfig,
    PointGSTConfig,
    PointLoRAConfig,
    SSFConfig,
    VPTConfig,
)
from pointpeft.backbones import BACKBONES

SIZES = {"trans_dim": 32, "depth": 2, "num_heads": 4, "num_group": 16, "group_size": 8}

METHODS = {
    "dapt": lambda: DAPTConfig(num_classes=5, rank=4),
    "full_finetune": lambda: FullFinetuneConfig(num_classes=5),
    "linear_probe": lambda: LinearProbeConfig(num_classes=5),
    "bitfit": lambda: BitFitConfig(num_classes=5),
    "ssf": lambda: SSFConfig(num_classes=5),
    "adapter": lambda: AdapterConfig(num_classes=5),
    "vpt_deep": lambda: VPTConfig(num_classes=5, num_prompts=3),
    "vpt_shallow": lambda: VPTConfig(num_classes=5, num_prompts=3, deep=False),
    "lora": lambda: LoRAConfig(num_classes=5, rank=4),
    "idpt": lambda: IDPTConfig(num_classes=5, prompt_layer=1, k=8),
    "pointgst": lambda: PointGSTConfig(num_classes=5, rank=4, local_size=8),
    "pointlora": lambda: PointLoRAConfig(
        num_classes=5, rank=4, prompt_hidden=8, scales=((8, 8, 4),), mask_weights=(1.0,), trained_backbone=()
    ),
}


def _backbone(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return BACKBONES[name](**SIZES)


def _points(seed: int = 0) -> torch.Tensor:
    return torch.rand(4, 128, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _randomize(model: pointpeft.DAPTModel, seed: int) -> None:
    """Move every trainable tensor off its init (zero-initialised updates would hide a lost module)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _eval_logits(model: pointpeft.DAPTModel) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_points(1))


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_each_method_keeps_its_contract_on_each_builtin(backbone: str, method: str, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = pointpeft.get_peft_model(_backbone(backbone), METHODS[method]()).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and any(n.startswith("heads.default.") for n in trainable)
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == sum(p.numel() for p in model.parameters() if p.requires_grad)

    _randomize(model, seed=1)
    logits = model(_points())
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    pointpeft.add_auxiliary_loss(model, F.cross_entropy(logits, torch.arange(4) % 5)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable, (sorted(trainable - with_grad), sorted(with_grad - trainable))
    for name in with_grad:
        assert torch.isfinite(model.get_parameter(name).grad).all(), name

    want = _eval_logits(model)
    model.save_adapter(str(tmp_path / "a"))
    loaded = pointpeft.load_adapter(_backbone(backbone), str(tmp_path / "a"))
    assert torch.equal(_eval_logits(loaded), want)

    # An adapter of another method beside it: while it is active the logits change; back, they are the same.
    other = LinearProbeConfig(num_classes=5) if method != "linear_probe" else SSFConfig(num_classes=5)
    model.add_adapter("other", other)
    model.set_adapter("other")
    assert not torch.equal(_eval_logits(model), want)
    model.set_adapter("default")
    assert torch.equal(_eval_logits(model), want)
