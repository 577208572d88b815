"""Updates beside the projections of ``nn.MultiheadAttention`` (LoRA's and PointLoRA's on PointGPT and
``nn.TransformerEncoder``): :class:`~pointpeft.dapt.PackedQKVScaleShift` computes the projections itself and
runs torch's attention on them with identity projections. Its twin is torch's own attention with the
updates merged into the weights, ``W + (alpha / rank) B A``: for linear updates the two are the same
function, so logits and every gradient must agree to float64 rounding."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import pointpeft
from pointpeft import LoRAConfig
from pointpeft.dapt import TFTS, PackedQKVScaleShift
from pointpeft.dapt.backbone_copies import CopiesLink
from pointpeft.methods.lora import LoRA


def _lora(in_features: int, out_features: int, generator: torch.Generator) -> LoRA:
    update = LoRA(in_features, out_features, rank=3, alpha=5.0, dropout=0.0).double()
    with torch.no_grad():  # B is zero at init: random, so the update is not a no-op
        for p in (update.lora_A, update.lora_B):  # (alpha / rank) B A about the size of the weights
            p.copy_(0.3 * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    return update


def _assert_close(got: torch.Tensor, want: torch.Tensor, tolerance: float, name: str = "") -> None:
    """``max|got - want| <= tolerance · max|want|``: float64 rounding, measured against the tensor's size
    (a sum of terms of either sign can leave an element far smaller than its terms)."""
    assert got.shape == want.shape, name
    error = (got - want).abs().max().item()
    assert error <= tolerance * want.abs().max().item(), (
        f"{name}: {error:.3g} of {want.abs().max().item():.3g}"
    )


def _merged(weight: torch.Tensor, update: LoRA | None) -> torch.Tensor:
    return weight if update is None else weight + update.scaling * update.lora_B @ update.lora_A


@settings(max_examples=40, deadline=None)
@given(
    dim_heads=st.sampled_from([(8, 1), (8, 2), (12, 3), (16, 4)]),
    batch_first=st.booleans(),
    bias=st.booleans(),
    add_bias_kv=st.booleans(),
    cross=st.booleans(),
    mask=st.sampled_from([None, "bool", "float", "padding"]),
    need_weights=st.booleans(),
    targets=st.sampled_from(["qkv", "proj", "both"]),
    with_tfts=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_updates_beside_the_attention_equal_its_merged_weights(
    dim_heads: tuple[int, int],
    batch_first: bool,
    bias: bool,
    add_bias_kv: bool,
    cross: bool,
    mask: str | None,
    need_weights: bool,
    targets: str,
    with_tfts: bool,
    seed: int,
) -> None:
    dim, heads = dim_heads
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    attention = nn.MultiheadAttention(
        dim, heads, bias=bias, add_bias_kv=add_bias_kv, batch_first=batch_first
    ).double()
    site = PackedQKVScaleShift(copy.deepcopy(attention), CopiesLink(), 3 * dim)
    site.active_adapter = "a"
    qkv_update = _lora(dim, 3 * dim, generator) if targets in ("qkv", "both") else None
    out_update = _lora(dim, dim, generator) if targets in ("proj", "both") else None
    if qkv_update is not None:
        site.beside["a"] = qkv_update
    if out_update is not None:
        site.beside_out["a"] = out_update
    tfts = None
    if with_tfts:
        tfts = TFTS(3 * dim, init_std=0.3).double()
        site.tfts["a"] = tfts

    length, source, batch = 5, 7 if cross else 5, 2

    def tokens(n: int) -> torch.Tensor:
        shape = (batch, n, dim) if batch_first else (n, batch, dim)
        return torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)

    query = tokens(length)
    key = tokens(source) if cross else query
    value = tokens(source) if cross else query
    kwargs: dict[str, object] = {"need_weights": need_weights}
    if mask == "bool":
        kwargs["attn_mask"] = torch.rand(length, source, generator=generator) < 0.3
        kwargs["attn_mask"][:, 0] = False  # every query sees at least one key
    elif mask == "float":
        kwargs["attn_mask"] = torch.randn(length, source, generator=generator, dtype=torch.float64)
    elif mask == "padding":
        padding = torch.zeros(batch, source, dtype=torch.bool)
        padding[1, -2:] = True
        kwargs["key_padding_mask"] = padding

    out, weights = site(query, key, value, **kwargs)

    # The twin: torch's attention with the updates (and the TFTS) merged into its weights.
    in_weight = _merged(attention.in_proj_weight, qkv_update)
    in_bias = attention.in_proj_bias
    if tfts is not None:
        in_weight = in_weight * tfts.gamma[:, None]
        in_bias = tfts.beta if in_bias is None else in_bias * tfts.gamma + tfts.beta
    merged = {"in_proj_weight": in_weight, "out_proj.weight": _merged(attention.out_proj.weight, out_update)}
    if in_bias is not None:
        merged["in_proj_bias"] = in_bias
    want, want_weights = functional_call(attention, merged, (query, key, value), kwargs)

    _assert_close(out, want, 1e-12, "out")
    if need_weights:
        _assert_close(weights, want_weights, 1e-12, "weights")
    else:
        assert weights is None and want_weights is None
    trained = [p for m in (qkv_update, out_update, tfts) if m is not None for p in m.parameters()]
    inputs = [query] if not cross else [query, key, value]
    probe = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    got_grads = torch.autograd.grad((out * probe).sum(), [*inputs, *trained])
    want_grads = torch.autograd.grad((want * probe).sum(), [*inputs, *trained])
    # A gradient can be the small remainder of larger terms (a softmax near saturation): each is held to
    # float64 rounding of the largest gradient, and to 1e-6 of its own size
    largest = max(g.abs().max().item() for g in want_grads)
    for index, (got, expected) in enumerate(zip(got_grads, want_grads, strict=True)):
        error = (got - expected).abs().max().item()
        assert error <= 1e-10 * largest, f"gradient {index}: {error:.3g} of the largest {largest:.3g}"
        _assert_close(got, expected, 1e-6, f"gradient {index}")


def _torch_encoder(batch_first: bool) -> nn.Module:
    from standins import TorchEncoderModel

    torch.manual_seed(0)
    return TorchEncoderModel(dim=16, depth=2, num_group=8, batch_first=batch_first).double()


def _points() -> torch.Tensor:
    return torch.rand(3, 64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("batch_first", [True, False])
def test_lora_adapts_every_projection_of_a_torch_encoder_with_the_count_of_its_formula(batch_first):
    """All four targets get an update (no warning): the attention's packed qkv and out_proj too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = pointpeft.get_peft_model(
            _torch_encoder(batch_first),
            LoRAConfig(num_classes=5, rank=4),
            layout="torch_transformer_encoder",
        )
    updates = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n]
    c, r = 16, 4
    per_block = r * (c + 3 * c) + r * (c + c) + r * (c + 4 * c) + r * (4 * c + c)  # qkv, proj, fc1, fc2
    assert sum(model.get_parameter(n).numel() for n in updates) == 2 * per_block
    assert sum(".beside_out." in n for n in updates) == 2 * 2  # A and B of out_proj's update per block


@pytest.mark.parametrize("batch_first", [True, False])
def test_lora_on_a_torch_encoder_computes_the_frozen_encoder_with_merged_weights(batch_first):
    """With random updates (dropout off), the model's tokens are those of the frozen encoder whose
    attention and FFN weights are ``W + (alpha / rank) B A``, in eval and train mode."""
    backbone = _torch_encoder(batch_first)
    model = pointpeft.get_peft_model(
        copy.deepcopy(backbone), LoRAConfig(num_classes=5, rank=4), layout="torch_transformer_encoder"
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    merged = copy.deepcopy(backbone)
    with torch.no_grad():
        for i, layer in enumerate(merged.transformer.layers):
            site = model.base_model.transformer.layers[i]
            attention = site.self_attn.base_layer  # the qkv site (the proj site wraps it)
            for update, weight in [
                (attention.beside["default"], layer.self_attn.in_proj_weight),
                (attention.beside_out["default"], layer.self_attn.out_proj.weight),
                (site.linear1.beside["default"], layer.linear1.weight),
                (site.linear2.beside["default"], layer.linear2.weight),
            ]:
                weight.add_(update.scaling * update.lora_B @ update.lora_A)
    points = _points()
    for train in (False, True):
        model.train(train)
        merged.train(train)
        got = model.forward_features(points).tokens
        torch.testing.assert_close(got, merged(points), rtol=1e-10, atol=1e-10)
