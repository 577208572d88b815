"""PointLoRA (``pointpeft.PointLoRAConfig``) under ``pointpeft.get_peft_model``: the released code's forward
written out in plain torch on the frozen backbone's modules (LoRA and the shared prompt MLPs beside qkv and
proj, the multi-scale token selection appended after the patches, the per-block MLPs on the patch and selected
tokens, positions re-added every block or once; eval and train mode with every trainable tensor randomized),
the auxiliary mask loss against its formula, the trainable set and its count (772,752 on Point-MAE for 15
classes), gradients only where they belong (the predictor through the auxiliary loss alone), what holds at
init, every execution mode and torch.compile alike, an adapter of another method beside it, the adapter round
trip, config and input checks, the CLI (``pointpeft params`` and ``pointpeft train`` adding the loss)."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import pointpeft
from conftest import SMALL
from pointpeft import LoRAConfig, PointLoRAConfig, SSFConfig
from pointpeft.backbones import PointMAE
from pointpeft.methods.pointlora import MaskPredictor, PointLoRAShared, PointLoRAUpdate, mask_loss
from pointpeft.ops import group

C, G = SMALL["trans_dim"], SMALL["num_group"]
CONFIGS = Path(__file__).parents[1] / "configs"
SCALES = ((16, 8, 4), (8, 16, 2))  # small twins of the released ((128, 32, 32), (64, 64, 8))


def _config(**kwargs) -> PointLoRAConfig:
    return PointLoRAConfig(**{"num_classes": 5, "scales": SCALES, "head_dropout": 0.0, **kwargs})


def _backbone(seed: int = 0, **kwargs) -> PointMAE:
    torch.manual_seed(seed)
    return PointMAE(**{**SMALL, **kwargs})


def _points(seed: int = 1, n: int = 96) -> torch.Tensor:
    return torch.rand(4, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _shared(model: pointpeft.DAPTModel, name: str = "default") -> PointLoRAShared:
    module = model.base_model.blocks.blocks[0].selection[name]
    assert isinstance(module, PointLoRAShared)
    return module


def _update(model: pointpeft.DAPTModel, block: int, role: str, name: str = "default") -> PointLoRAUpdate:
    attn = model.base_model.blocks.blocks[block].base_layer.attn
    module = getattr(attn, role).beside[name]
    assert isinstance(module, PointLoRAUpdate)
    return module


def _randomize(model: pointpeft.DAPTModel, seed: int = 0) -> None:
    """Random values in every trainable tensor but the head's (LoRA's B is zero fresh, the MLPs small): the
    LoRA updates, the shared MLPs, the predictor, the trained first conv stage and position MLP, the CLS
    token; BatchNorm affines near 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad or name.startswith("heads."):
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if "first_conv.1." in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.dim() > 1:
                p.copy_(noise / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.3 * noise)


# --------------------------------------------------------------------- PointLoRA written out in torch
def _mlp(x: torch.Tensor, w: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """``Linear → GELU → Linear`` from the tensors ``{prefix}.0.*`` and ``{prefix}.2.*``."""
    h = F.gelu(x @ w[f"{prefix}.0.weight"].T + w[f"{prefix}.0.bias"])
    return h @ w[f"{prefix}.2.weight"].T + w[f"{prefix}.2.bias"]


def _scores(tokens: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    h = torch.relu(tokens @ w["predictor.fc1.weight"].T + w["predictor.fc1.bias"])
    return torch.sigmoid(h @ w["predictor.fc2.weight"].T + w["predictor.fc2.bias"])[..., 0]


def _mask_loss_formula(scores, weights) -> torch.Tensor:
    eps = 1e-6
    return sum(
        wt * (p * torch.log(p + eps) + (1 - p) * torch.log(1 - p + eps)).mean()
        for p, wt in zip(scores, weights, strict=True)
    )


def _weights(model: pointpeft.DAPTModel, grad: bool = False) -> dict[str, torch.Tensor]:
    """The adapter's own tensors, by name: the shared module's and each update's LoRA ``lora.{i}.{role}.*``."""
    state = {k: v.detach().clone() for k, v in _shared(model).state_dict().items()}
    for i in range(len(model.base_model.blocks.blocks)):
        for role in model.config.targets:
            for k, v in _update(model, i, role).lora.state_dict().items():
                state[f"lora.{i}.{role}.{k}"] = v.detach().clone()
    if grad:
        for value in state.values():
            value.requires_grad_(True)
    return state


def _twin_from(model: pointpeft.DAPTModel, backbone: PointMAE, grad: bool = False) -> PointMAE:
    """``backbone`` (a never-wrapped twin) with the model's trained backbone tensors (the first conv stage,
    the position MLP, the CLS token and position) and BatchNorm statistics."""
    base = model.base_model
    with torch.no_grad():
        backbone.encoder.load_state_dict(base.encoder.base_layer.state_dict())
        backbone.pos_embed.load_state_dict(base.pos_embed.state_dict())
        backbone.cls_token.copy_(base.cls_token)
        backbone.cls_pos.copy_(base.cls_pos)
    if grad:
        for p in [*backbone.encoder.first_conv.parameters(), *backbone.pos_embed.parameters()]:
            p.requires_grad_(True)
    return backbone


def _linear(x, weight, bias, w, lora: str, mlp: str) -> torch.Tensor:
    """A frozen linear layer with PointLoRA beside it: ``W x + b + B A x + M(x)`` (no scale: alpha = rank)."""
    out = x @ weight.T + (0 if bias is None else bias)
    return out + (x @ w[f"{lora}.lora_A"].T) @ w[f"{lora}.lora_B"].T + _mlp(x, w, mlp)


def _pointlora_twin(backbone: PointMAE, w: dict[str, torch.Tensor], points: torch.Tensor, scales, weights):
    """PointLoRA's forward on a plain Point-MAE from its frozen modules. Returns the final tokens
    ``(B, 1 + G + Σ selected, C)`` and the predictor's scores per scale."""
    neighborhood, centers = backbone.group_divider(points)
    tokens = backbone.encoder(neighborhood)
    batch = tokens.shape[0]
    chosen, chosen_pos, scores = [], [], []
    for groups, size, selected in scales:
        n_s, c_s = group(points, groups, size)
        t_s, q_s = backbone.encoder(n_s), backbone.pos_embed(c_s)
        p = _scores(t_s, w)
        order = p.argsort(dim=1, descending=True)[:, :selected]
        chosen.append(torch.stack([t_s[b, order[b]] for b in range(batch)]))
        chosen_pos.append(torch.stack([q_s[b, order[b]] for b in range(batch)]))
        scores.append(p)
    g = tokens.shape[1]
    x = torch.cat((backbone.cls_token.expand(batch, -1, -1), tokens, *chosen), dim=1)
    pos = torch.cat((backbone.cls_pos.expand(batch, -1, -1), backbone.pos_embed(centers), *chosen_pos), dim=1)
    if backbone.pos_mode == "once":
        x = x + pos
    for i, block in enumerate(backbone.blocks.blocks):
        if backbone.pos_mode != "once":
            x = x + pos
        x = torch.cat(
            (
                x[:, :1],
                x[:, 1 : 1 + g] + _mlp(x[:, 1 : 1 + g], w, "patch_mlp"),
                x[:, 1 + g :] + _mlp(x[:, 1 + g :], w, "selected_mlp"),
            ),
            dim=1,
        )
        attn = block.attn
        h = block.norm1(x)
        qkv = _linear(h, attn.qkv.weight, attn.qkv.bias, w, f"lora.{i}.qkv", "linear_mlps.qkv")
        b, n, c = h.shape
        q, k, v = qkv.reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (c // attn.num_heads) ** -0.5).softmax(dim=-1)
        a = (a @ v).transpose(1, 2).reshape(b, n, c)
        a = _linear(a, attn.proj.weight, attn.proj.bias, w, f"lora.{i}.proj", "linear_mlps.proj")
        x = x + block.drop_path(a)
        x = x + block.drop_path(block.mlp(block.norm2(x)))
    return backbone.norm(x), scores


def _head_twin(head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The Point-MAE head in eval mode written out: Linear → BN (running statistics) → ReLU, twice, Linear."""
    s = head.state_dict()
    h = features
    for lin, bn in (("mlp.0", "mlp.1"), ("mlp.4", "mlp.5")):
        h = h @ s[f"{lin}.weight"].T + s[f"{lin}.bias"]
        h = (h - s[f"{bn}.running_mean"]) / torch.sqrt(s[f"{bn}.running_var"] + 1e-5) * s[f"{bn}.weight"]
        h = torch.relu(h + s[f"{bn}.bias"])
    return h @ s["mlp.8.weight"].T + s["mlp.8.bias"]


def _features(tokens: torch.Tensor) -> torch.Tensor:
    """The released head's input: [cls, max over every other token (the patches and the selected ones)]."""
    return torch.cat((tokens[:, 0], tokens[:, 1:].max(dim=1).values), dim=-1)


# ------------------------------------------------------------------------------------- what it computes
@pytest.mark.parametrize("pos_mode", ["every_block", "once"])
@pytest.mark.parametrize("depth", [1, 3])
def test_the_wrapped_model_computes_pointlora_written_out_in_torch(depth, pos_mode):
    points = _points()
    config = _config(mask_weights=(1.0, 0.25))
    model = pointpeft.get_peft_model(_backbone(depth=depth, pos_mode=pos_mode), config).eval()
    _randomize(model, seed=3)
    twin = _twin_from(model, _backbone(depth=depth, pos_mode=pos_mode)).eval()
    assert _shared(model).every_block is (pos_mode == "every_block")
    with torch.no_grad():
        tokens, scores = _pointlora_twin(twin, _weights(model), points, SCALES, (1.0, 0.25))
        got = model.forward_features(points)
        assert got.tokens.shape == (4, 1 + G + 4 + 2, C)
        torch.testing.assert_close(got.tokens, tokens, rtol=1e-5, atol=1e-5)
        expected_aux = 0.004 * _mask_loss_formula(scores, (1.0, 0.25))
        torch.testing.assert_close(model.auxiliary_loss, expected_aux, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(
            model(points), _head_twin(model.head, _features(tokens)), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("execution", ["plain", "recompute", "fused"])
def test_in_train_mode_it_is_the_written_out_forward_with_its_gradients(execution):
    """Train mode in float64: DropPath on (the same random draws), the patch encoder's BatchNorm on the
    batch; the tokens, logits, auxiliary loss and the gradients of every trained tensor (LoRA, the shared
    MLPs, the predictor, the first conv stage, the position MLP) agree with the written-out forward."""
    points = _points().double()
    config = _config(mask_weights=(0.7, 0.25), aux_weight=0.5)
    model = pointpeft.get_peft_model(
        _backbone(drop_path_rate=0.5).double(), config, execution=execution
    ).train()
    _randomize(model, seed=5)
    twin = _twin_from(model, _backbone(drop_path_rate=0.5).double(), grad=True).train()
    weights = _weights(model, grad=True)
    torch.manual_seed(11)
    got = model.forward_features(points)
    torch.manual_seed(11)
    tokens, scores = _pointlora_twin(twin, weights, points, SCALES, (0.7, 0.25))
    torch.testing.assert_close(got.tokens, tokens, rtol=1e-10, atol=1e-11)
    aux = 0.5 * _mask_loss_formula(scores, (0.7, 0.25))
    torch.testing.assert_close(model.auxiliary_loss, aux, rtol=1e-10, atol=1e-12)
    logits = model.head(got.tokens, None)
    expected = model.head.mlp(_features(tokens))
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-11)
    probe = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ((logits * probe).sum() + model.auxiliary_loss).backward()
    ((expected * probe).sum() + aux).backward()
    for name, p in _shared(model).named_parameters():
        torch.testing.assert_close(p.grad, weights[name].grad, rtol=1e-9, atol=1e-10, msg=name)
    for i in range(3):
        for role in ("qkv", "proj"):
            for name, p in _update(model, i, role).lora.named_parameters():
                key = f"lora.{i}.{role}.{name}"
                torch.testing.assert_close(p.grad, weights[key].grad, rtol=1e-9, atol=1e-10, msg=key)
    base = model.base_model
    for mine, theirs in (
        (base.encoder.base_layer.first_conv, twin.encoder.first_conv),
        (base.pos_embed, twin.pos_embed),
    ):
        for (name, p), q in zip(mine.named_parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_the_mask_loss_is_its_formula_and_pushes_the_scores_to_one_half():
    gen = torch.Generator().manual_seed(0)
    p1, p2 = torch.rand(3, 10, generator=gen), torch.rand(3, 5, generator=gen)
    expected = (p1 * torch.log(p1 + 1e-6) + (1 - p1) * torch.log(1 - p1 + 1e-6)).mean() + 0.25 * (
        p2 * torch.log(p2 + 1e-6) + (1 - p2) * torch.log(1 - p2 + 1e-6)
    ).mean()
    torch.testing.assert_close(mask_loss([p1, p2], [1.0, 0.25]), expected, rtol=1e-6, atol=1e-7)
    half = torch.full((2, 4), 0.5)
    assert mask_loss([half], [1.0]).item() == pytest.approx(-math.log(2), abs=1e-5)  # its minimum
    assert mask_loss([torch.full((2, 4), 0.9)], [1.0]) > mask_loss([half], [1.0])
    assert mask_loss([half.bfloat16()], [1.0]).dtype == torch.float32


def test_the_selected_tokens_are_the_top_scored_and_the_predictor_learns_from_the_auxiliary_loss_only():
    """Hard top-K: the appended tokens are the encoder's tokens of the highest scores; the cross-entropy
    gives the predictor no gradient (the gathers do not depend on the scores' values), the auxiliary loss
    does (and, through the scored tokens, the trained first conv stage); every other trainable tensor gets
    gradient from the cross-entropy."""
    points, labels = _points(), torch.arange(4) % 5
    model = pointpeft.get_peft_model(_backbone(), _config()).train()
    _randomize(model, seed=2)
    shared = _shared(model)
    with torch.no_grad():
        tokens, positions, scores = shared.select(points)
        neighborhood, _ = group(points, 16, 8)
        encoded = model.base_model.encoder.base_layer(neighborhood)
    assert tokens.shape == positions.shape == (4, 6, C)
    top = scores[0].topk(4, dim=1).indices
    torch.testing.assert_close(tokens[:, :4], torch.stack([encoded[b, top[b]] for b in range(4)]))
    F.cross_entropy(model(points), labels).backward()
    predictor = {f"predictor.{n}" for n, _ in shared.predictor.named_parameters()}
    for name, p in shared.named_parameters():
        assert (p.grad is None) is (name in predictor), name
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    names = {n for n in _trainable(model) if ".predictor." not in n}
    assert with_grad == names
    model.zero_grad(set_to_none=True)
    model(points)
    model.auxiliary_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared.predictor.parameters())
    # the auxiliary loss reaches the predictor and, through the scored tokens, the trained first conv stage
    first_conv = {n for n in _trainable(model) if ".first_conv." in n}
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        f"base_model.blocks.blocks.0.selection.default.{n}" for n in predictor
    } | first_conv


def _point_bert(seed: int = 0):
    from pointpeft.backbones import PointBERT

    torch.manual_seed(seed)
    return PointBERT(trans_dim=C, encoder_dims=24, depth=2, num_heads=4, num_group=G, group_size=8)


def test_on_point_bert_the_groupings_pass_its_encoder_then_its_reduce_dim(tmp_path):
    """Point-BERT's patch tokens are ``reduce_dim(encoder(groups))`` (24 → C here, 256 → 384 upstream): the
    selected tokens are too, the trained first conv stage learns, and the adapter round trip holds."""
    points, labels = _points(), torch.arange(4) % 5
    model = pointpeft.get_peft_model(_point_bert(), _config()).train()
    _randomize(model, seed=2)
    shared = _shared(model)
    with torch.no_grad():
        tokens, _, scores = shared.select(points)
        neighborhood, _ = group(points, 16, 8)
        base = model.base_model
        reduce_dim = getattr(base.reduce_dim, "base_layer", base.reduce_dim)
        encoder = getattr(base.encoder, "base_layer", base.encoder)
        encoded = reduce_dim(encoder(neighborhood))
    assert encoded.shape == (4, 16, C)
    top = scores[0].topk(4, dim=1).indices
    torch.testing.assert_close(tokens[:, :4], torch.stack([encoded[b, top[b]] for b in range(4)]))
    loss = pointpeft.add_auxiliary_loss(model, F.cross_entropy(model(points), labels))
    loss.backward()
    first_conv = [p for n, p in model.named_parameters() if p.requires_grad and ".first_conv." in n]
    assert first_conv and all(p.grad is not None and p.grad.abs().sum() > 0 for p in first_conv)
    assert all(p.grad is not None for p in shared.predictor.parameters())
    model.eval().save_adapter(str(tmp_path))
    loaded = pointpeft.load_adapter(_point_bert(), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)


def test_a_linear_patch_encoder_without_an_encoder_beside_it_is_refused():
    """A layout whose patch tokens come from a linear layer (it reads features, not groups) and that has no
    ``encoder`` beside it: refused when the adapter is added, naming the layer."""
    backbone = _point_bert()
    del backbone.encoder
    backbone.tokenizer = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"linear layer 'reduce_dim' \(24 → 32\).*no module named 'encoder'"):
        pointpeft.get_peft_model(backbone, _config(trained_backbone=("pos_embed",)))


def test_the_scores_are_float32_under_autocast_and_for_bfloat16_models():
    """Under CPU bf16 autocast (and for a bf16 model) the predictor scores in float32: the same scores and the
    same selected tokens as without autocast; bf16 scores near 0.5 would tie."""
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), _config()).eval()
    shared = _shared(model)
    tokens = torch.randn(4, 16, C, generator=torch.Generator().manual_seed(0))
    expected = shared.predictor(tokens)
    assert expected.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(shared.predictor(tokens), expected, rtol=0, atol=0)
        scores_bf16 = shared.select(points)[2]
    with torch.no_grad():
        scores = shared.select(points)[2]
    for got, want in zip(scores_bf16, scores, strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got.topk(2, dim=1).indices, want.topk(2, dim=1).indices)
    assert len(set(expected.bfloat16().flatten().tolist())) < len(set(expected.flatten().tolist()))
    half = shared.predictor.to(torch.bfloat16)
    assert half(tokens.bfloat16()).dtype == torch.float32


def test_what_holds_at_init():
    """No exact identity at init: the selected tokens join the attention and the shared prompt MLPs start
    non-zero (truncated normal in both layers, as released). What holds: LoRA's B starts at zero (each
    update is exactly its shared MLP's term), A is Kaiming-uniform, the MLPs' biases are zero, the scalar w of
    the released code (frozen at 1.0) is left out; the predictor has PyTorch's Linear init."""
    model = pointpeft.get_peft_model(_backbone(), _config())
    x = torch.randn(3, 7, C)
    for i in range(3):
        for role in ("qkv", "proj"):
            update = _update(model, i, role)
            assert torch.equal(update.lora.lora_B, torch.zeros_like(update.lora.lora_B))
            assert update.lora.lora_A.abs().max() <= 1 / C**0.5 + 1e-6
            with torch.no_grad():
                assert torch.equal(update(x), update.shared_mlp(x) + update.lora(x))
                assert torch.equal(update.lora(x), torch.zeros_like(update.lora(x)))
            assert update.shared_mlp is _shared(model).linear_mlps[role]  # one MLP per role, all blocks
    shared = _shared(model)
    for mlp in (shared.patch_mlp, shared.selected_mlp, *shared.linear_mlps.values()):
        assert mlp[0].weight.abs().sum() > 0 and mlp[2].weight.abs().sum() > 0
        assert not mlp[0].bias.any() and not mlp[2].bias.any()
    assert isinstance(shared.predictor, MaskPredictor)
    with torch.no_grad():
        model.eval()
        out = model.forward_features(_points()).tokens
        with model.disable_adapter():
            bare = model(_points())
    assert out.shape[1] == bare.shape[1] + 6
    assert not torch.allclose(out[:, : bare.shape[1]], bare, atol=1e-4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_group=st.integers(2, 12),
    scales=st.lists(
        st.tuples(st.integers(1, 12), st.integers(2, 12)).flatmap(
            lambda gs: st.tuples(st.just(gs[0]), st.just(gs[1]), st.integers(1, gs[0]))
        ),
        min_size=1,
        max_size=3,
    ),
    every_block=st.booleans(),
)
def test_the_sequence_is_global_patches_and_the_selected_tokens_for_any_scales(
    num_group, scales, every_block
):
    """For any backbone num_group and scales, the final tokens are ``1 + G + Σ selected`` wide and equal the
    written-out forward; the auxiliary loss is finite and at least its minimum ``−log 2 · Σ weights``.
    Groups of one point are left out: their tokens are all alike (each group is its centre alone), so the
    scores tie and which centres are picked is ``torch.topk``'s tie-breaking (unspecified), not a
    property of PointLoRA."""
    weights = tuple(0.5 + i for i in range(len(scales)))
    pos_mode = "every_block" if every_block else "once"
    kwargs = dict(depth=2, num_group=num_group, group_size=4, pos_mode=pos_mode)
    config = _config(scales=tuple(scales), mask_weights=weights, aux_weight=1.0)
    model = pointpeft.get_peft_model(_backbone(**kwargs), config).eval()
    _randomize(model, seed=1)
    twin = _twin_from(model, _backbone(**kwargs)).eval()
    points = _points(n=24)
    with torch.no_grad():
        got = model.forward_features(points).tokens
        tokens, scores = _pointlora_twin(twin, _weights(model), points, scales, weights)
    assert got.shape == (4, 1 + num_group + sum(s[2] for s in scales), C)
    torch.testing.assert_close(got, tokens, rtol=1e-5, atol=1e-5)
    assert math.isfinite(model.auxiliary_loss.item())
    assert model.auxiliary_loss.item() >= -math.log(2) * sum(weights) - 1e-5


# ------------------------------------------------------------------------------------ trainable set
def _head_size(in_features: int, classes: int, hidden: int = 256) -> int:
    return (
        (in_features * hidden + hidden)
        + 2 * hidden
        + (hidden * hidden + hidden)
        + 2 * hidden
        + hidden * classes
        + classes
    )


def _mlp_size(i: int, h: int, o: int) -> int:
    return i * h + h + h * o + o


def _pointlora_size(dim: int, depth: int, rank: int = 8, hidden: int = 32) -> int:
    """LoRA on qkv and proj per block, the four shared MLPs, the predictor, the first conv stage (Conv1d
    3→128, BN(128), Conv1d 128→256), the position MLP (Linear 3→128, Linear 128→C)."""
    lora = depth * ((rank * dim + 3 * dim * rank) + (rank * dim + dim * rank))
    mlps = _mlp_size(dim, hidden, 3 * dim) + 3 * _mlp_size(dim, hidden, dim)
    predictor = dim * (dim // 2) + dim // 2 + dim // 2 + 1
    first_conv = (3 * 128 + 128) + 2 * 128 + (128 * 256 + 256)
    pos_embed = (3 * 128 + 128) + (128 * dim + dim)
    return lora + mlps + predictor + first_conv + pos_embed


@pytest.mark.parametrize("train_cls", [True, False])
def test_the_trainable_set_and_its_count_from_the_shapes(train_cls):
    model = pointpeft.get_peft_model(_backbone(), _config(train_cls=train_cls))
    names = _trainable(model)
    lora = {n for n in names if ".beside." in n}
    assert len(lora) == 3 * 2 * 2 and all(".attn.qkv." in n or ".attn.proj." in n for n in lora)
    shared = {n for n in names if ".selection." in n}
    assert all(n.startswith("base_model.blocks.blocks.0.selection.default.") for n in shared)
    backbone = {n for n in names if n.startswith(("base_model.encoder.", "base_model.pos_embed."))}
    assert backbone == {
        *(f"base_model.encoder.base_layer.first_conv.{i}.{k}" for i in (0, 1, 3) for k in ("weight", "bias")),
        *(f"base_model.pos_embed.{i}.{k}" for i in (0, 2) for k in ("weight", "bias")),
    }
    assert set(model.trained_backbone_parameters("default")) == {n[len("base_model.") :] for n in backbone}
    head = {n for n, _ in model.head.named_parameters(prefix="heads.default")}
    cls = {n for n in names if "cls_" in n}
    assert names == lora | shared | backbone | head | cls and len(cls) == (2 if train_cls else 0)
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == _pointlora_size(C, 3) + (2 * C if train_cls else 0) + _head_size(2 * C, 5)


def test_on_point_mae_the_count_is_772752_and_3_43_percent():
    """The released PB_T50_RS model: LoRA 221,184, the prompt MLPs 125,312, the predictor 74,113, the first
    conv stage 33,792, the position MLP 50,048, the CLS token and position 768, the head 267,535."""
    assert _pointlora_size(384, 12) + 768 + _head_size(768, 15) == 772_752
    model = pointpeft.get_peft_model(PointMAE(), PointLoRAConfig(num_classes=15))
    trained, total = model.get_nb_trainable_parameters()
    assert (trained, total) == (772_752, 22_513_936)
    assert f"{100 * trained / total:.2f}" == "3.43"


def test_a_qkv_and_ffn_variant_is_a_config_away():
    """The paper's figure puts the modules on qkv and the FFN; targets=(qkv, fc1, fc2) builds that."""
    model = pointpeft.get_peft_model(_backbone(), _config(targets=("qkv", "fc1", "fc2")))
    assert set(_shared(model).linear_mlps) == {"qkv", "fc1", "fc2"}
    assert model.eval()(_points()).shape == (4, 5)


# ---------------------------------------------------------------------------------- execution modes
def test_it_compiles_whole_and_gives_the_eager_step():
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=8, encoder_dims=32)
    config = _config(num_classes=4, scales=((8, 8, 3), (4, 16, 2)))
    model = pointpeft.get_peft_model(backbone, config).train()
    _randomize(model, seed=1)
    points = torch.rand(4, 32, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    labels = torch.arange(4) % 4

    def step(runner):
        model.zero_grad(set_to_none=True)
        model.auxiliary_loss = None
        logits = runner(points)
        aux = model.auxiliary_loss
        (F.cross_entropy(logits, labels) + aux).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), aux.detach(), grads

    eager = step(model)
    torch._dynamo.reset()
    compiled = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-7)
    assert compiled[2].keys() == eager[2].keys()
    for name, grad in eager[2].items():
        torch.testing.assert_close(compiled[2][name], grad, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------- beside the other methods
def test_adapters_of_other_methods_beside_it_and_switching():
    """PointLoRA, LoRA and SSF on one backbone: each computes what it computes alone and trains only its own
    tensors (PointLoRA its copies of the first conv stage and position MLP); the bare backbone inside
    disable_adapter; another adapter's forward makes no auxiliary loss; deleting PointLoRA leaves the rest."""
    points = _points()
    configs = {
        "pointlora": _config(),
        "lora": LoRAConfig(num_classes=5, head_dropout=0.0),
        "ssf": SSFConfig(num_classes=5, head_dropout=0.0),
    }
    alone = {}
    for name, config in configs.items():
        single = pointpeft.get_peft_model(_backbone(), config, adapter_name=name).eval()
        _randomize(single, seed=4)
        alone[name] = single
    shared = pointpeft.get_peft_model(_backbone(), configs["lora"], adapter_name="lora").eval()
    for name in ("pointlora", "ssf"):
        shared.add_adapter(name, configs[name])
    for name, single in alone.items():
        shared.set_adapter(name)
        own = {**dict(single.named_parameters()), **dict(single.named_buffers())}
        with torch.no_grad():
            for key, value in [*shared.named_parameters(), *shared.named_buffers()]:
                if (f".{name}." in key or value.requires_grad) and key in own:
                    value.copy_(own[key])
            shared.heads[name].load_state_dict(single.heads[name].state_dict())
        assert _trainable(shared) == _trainable(single), name
        with torch.no_grad():
            torch.testing.assert_close(shared(points), single(points), rtol=1e-6, atol=1e-6, msg=name)
            assert (shared.auxiliary_loss is None) is (name != "pointlora")
    shared.set_adapter("pointlora")
    with torch.no_grad():
        selected = shared(points)
        with shared.disable_adapter():
            torch.testing.assert_close(shared(points), _backbone().eval()(points), rtol=0, atol=0)
        torch.testing.assert_close(shared(points), selected, rtol=0, atol=0)
    shared.set_adapter("lora")
    shared.delete_adapter("pointlora")
    assert not [m for m in shared.modules() if isinstance(m, (PointLoRAShared, PointLoRAUpdate))]
    with torch.no_grad():
        torch.testing.assert_close(shared(points), alone["lora"](points), rtol=1e-6, atol=1e-6)


def test_adapter_round_trip_and_loading_beside_another_method(tmp_path):
    from safetensors.torch import load_file

    points = _points()
    config = _config(mask_weights=(1.0, 0.5))
    model = pointpeft.get_peft_model(_backbone(), config).train()
    _randomize(model, seed=6)
    model(points)  # the patch encoder's BatchNorm statistics move
    model.eval()
    model.save_adapter(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "POINTLORA"
    assert PointLoRAConfig.from_dict(saved["config"]) == config
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    shared = [k for k in tensors if ".linear_mlps.qkv." in k]
    assert shared == [k for k in shared if k.startswith("base_model.blocks.blocks.0.selection.")]
    assert len(shared) == 4  # held once, not per block
    for name in (
        "encoder.base_layer.first_conv.0.weight",
        "encoder.base_layer.first_conv.1.running_mean",
        "pos_embed.2.weight",
    ):
        assert f"base_model.{name}" in tensors  # the trained backbone copies and their BatchNorm statistics
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    assert type(loaded.config) is PointLoRAConfig and loaded.config == config
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)
        torch.testing.assert_close(loaded.auxiliary_loss, model.auxiliary_loss, rtol=0, atol=0)
    other = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    other.load_adapter(str(tmp_path), "pl")
    other.set_adapter("pl")
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(points), model(points), rtol=0, atol=0)
    assert _update(other, 2, "proj", "pl").shared_mlp is _shared(other, "pl").linear_mlps["proj"]


def test_moving_the_model_keeps_the_shared_mlps_shared():
    model = pointpeft.get_peft_model(_backbone(), _config()).double()
    update, shared = _update(model, 1, "qkv"), _shared(model)
    assert (
        update.shared_mlp is shared.linear_mlps["qkv"] and update.shared_mlp[0].weight.dtype == torch.float64
    )
    assert shared.encoder is model.base_model.encoder.base_layer
    assert model.eval()(_points().double()).dtype == torch.float64


def test_a_copy_of_the_model_after_a_training_forward_starts_without_its_auxiliary_loss():
    """The auxiliary loss is a tensor of the forward's graph, which deepcopy and pickling refuse: the model
    copies (and pickles) without it."""
    import copy
    import pickle

    model = pointpeft.get_peft_model(_backbone(), _config()).train()
    model(_points())
    assert model.auxiliary_loss is not None and model.auxiliary_loss.grad_fn is not None
    twin = copy.deepcopy(model)
    assert twin.auxiliary_loss is None and model.auxiliary_loss is not None
    assert pickle.loads(pickle.dumps(model)).auxiliary_loss is None
    with pytest.raises(TypeError, match=r"auxiliary_loss must be a tensor or None, got float"):
        model.auxiliary_loss = 0.5
    model.auxiliary_loss = None
    assert model.auxiliary_loss is None


def test_unload_gives_the_backbone_back():
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = pointpeft.get_peft_model(backbone, _config())
    _randomize(model, seed=2)
    model.train()(_points())
    plain = model.unload()
    assert plain.state_dict().keys() == before.keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())


# ------------------------------------------------------------------------------ config and input checks
def test_the_config_checks_its_fields_naming_them():
    config = PointLoRAConfig(num_classes=15)
    assert (config.rank, config.alpha, config.targets, config.prompt_hidden) == (8, 8.0, ("qkv", "proj"), 32)
    assert (config.scales, config.mask_weights, config.aux_weight) == (
        ((128, 32, 32), (64, 64, 8)),
        (1.0, 0.25),
        0.004,
    )
    assert (config.pool, config.pos_embed, config.trained_backbone) == (
        ("cls", "patch"),
        "pos_embed",
        ("encoder.first_conv", "pos_embed"),
    )
    with pytest.raises(
        ValueError, match=r"scales\[0\] selected must be at most its groups \(8\).*got selected = 9"
    ):
        PointLoRAConfig(num_classes=5, scales=((8, 4, 9),), mask_weights=(1.0,))
    with pytest.raises(
        ValueError, match=r"scales\[1\] must be a \(groups, group_size, selected\) triple, got \[4, 4\]"
    ):
        PointLoRAConfig(num_classes=5, scales=((8, 4, 2), (4, 4)))
    with pytest.raises(
        TypeError, match=r"scales\[0\] groups must be an int in \[1, 1048576\], got float 8.0"
    ):
        PointLoRAConfig(num_classes=5, scales=((8.0, 4, 2), (4, 4, 1)))
    with pytest.raises(ValueError, match=r"scales must hold at least one entry"):
        PointLoRAConfig(num_classes=5, scales=())
    with pytest.raises(TypeError, match=r"scales must be a sequence of .*got int 3"):
        PointLoRAConfig(num_classes=5, scales=3)
    with pytest.raises(
        ValueError, match=r"mask_weights must hold one weight per scale \(2 scales.*got \[1.0\]"
    ):
        PointLoRAConfig(num_classes=5, mask_weights=(1.0,))
    with pytest.raises(ValueError, match=r"mask_weights\[1\]"):
        PointLoRAConfig(num_classes=5, mask_weights=(1.0, -0.5))
    with pytest.raises(ValueError, match=r"aux_weight"):
        PointLoRAConfig(num_classes=5, aux_weight=float("nan"))
    with pytest.raises(ValueError, match=r"targets names must be distinct and among"):
        PointLoRAConfig(num_classes=5, targets=("qkv", "attn"))
    with pytest.raises(ValueError, match=r"rank"):
        PointLoRAConfig(num_classes=5, rank=0)
    with pytest.raises(TypeError, match=r"pos_embed must be a dotted module path \(str\), got int 3"):
        PointLoRAConfig(num_classes=5, pos_embed=3)
    with pytest.raises(ValueError, match=r"trained_backbone must not repeat a path"):
        PointLoRAConfig(num_classes=5, trained_backbone=("pos_embed", "pos_embed"))
    with pytest.raises(ValueError, match=r"names 'prompt'|prompt"):
        PointLoRAConfig(num_classes=5, pool=("cls", "prompt"))
    with pytest.raises(ValueError, match=r"mask_weights must hold one weight per scale"):
        config.scales = ((8, 4, 2),)
    assert PointLoRAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PointLoRAConfig(num_classes=5, trained_backbone=()).trained_backbone == ()


def test_the_backbone_is_checked_when_the_adapter_is_added():
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"PointLoRAConfig\.pos_embed must name the position MLP of PointMAE.*'pos_mlp'"
    ):
        pointpeft.get_peft_model(backbone, _config(pos_embed="pos_mlp"))
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(
        ValueError,
        match=r"trained_backbone must name modules of PointMAE that hold parameters, got 'encoder\.third_conv', which is not a module",
    ):
        pointpeft.get_peft_model(_backbone(), _config(trained_backbone=("encoder.third_conv",)))
    model = pointpeft.get_peft_model(_backbone(), _config(trained_backbone=()))
    assert not model.trained_backbone_parameters("default")


@pytest.mark.parametrize("train", [False, True])
def test_sequence_first_blocks_compute_what_batch_first_blocks_compute(train):
    """The selected tokens join sequence-first blocks ``(T, B, C)`` (``nn.TransformerEncoder``,
    PointGPT's layout) as they join batch-first ones: the same model built either way (the same weights,
    every trained tensor randomized alike) gives the same logits, auxiliary loss and gradients, in float64."""
    from standins import TorchEncoderModel

    # every projection: nn.MultiheadAttention's packed qkv and out_proj, and the FFN's layers
    config = _config(
        targets=("qkv", "proj", "fc1", "fc2"), trained_backbone=("patch_encoder.first_conv", "pos_embed")
    )
    results = []
    for batch_first in (True, False):
        torch.manual_seed(0)
        backbone = TorchEncoderModel(dim=C, depth=2, num_group=G, batch_first=batch_first).double()
        model = pointpeft.get_peft_model(backbone, config, layout="torch_transformer_encoder")
        assert model.layout.seq_first is (not batch_first)
        _randomize(model, seed=4)
        model.train(train)
        logits = model(_points().double())
        loss = logits.square().sum() + model.auxiliary_loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), model.auxiliary_loss.detach(), grads))
    (logits, aux, grads), (logits_seq, aux_seq, grads_seq) = results
    torch.testing.assert_close(logits_seq, logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(aux_seq, aux, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_seq.keys() and any(".lora." in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_seq[name], grad, rtol=1e-8, atol=1e-10, msg=name)


def test_pointgpt_trains_it():
    """On PointGPT (sequence-first, a causal mask that the appended tokens open), with the released targets
    (the attention's qkv and proj, inside nn.MultiheadAttention): a training step gives every trained tensor
    a finite gradient, the predictor through the auxiliary loss."""
    from pointpeft.backbones import PointGPT

    torch.manual_seed(0)
    backbone = PointGPT(trans_dim=C, depth=2, num_heads=4, num_group=G, group_size=8)
    # its positions are sines (no parameters): only the encoder's first conv is trained of the backbone
    config = _config(trained_backbone=("encoder.first_conv",))
    assert config.targets == ("qkv", "proj")
    model = pointpeft.get_peft_model(backbone, config).train()
    updates = [n for n, p in model.named_parameters() if p.requires_grad and ".lora." in n]
    assert sum(".beside_out." in n for n in updates) == sum(".beside." in n for n in updates) > 0
    _randomize(model, seed=1)
    logits = model(_points())
    assert logits.shape == (4, 5)
    pointpeft.add_auxiliary_loss(model, F.cross_entropy(logits, torch.arange(4) % 5)).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_a_layout_without_patch_encoder_is_refused():
    import dataclasses

    layout = dataclasses.replace(pointpeft.detect_layout(_backbone()), patch_encoder=None)
    with pytest.raises(ValueError, match=r"encodes its extra groupings with the patch encoder, but layout"):
        pointpeft.get_peft_model(_backbone(), _config(), layout=layout)
    model = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    with pytest.raises(ValueError, match=r"pos_embed must name the position MLP"):
        model.add_adapter("pl", _config(pos_embed="encoder.nothing"))
    assert model.adapters == ("default",)


def test_too_few_points_for_a_scale_fail_at_forward_naming_it():
    model = pointpeft.get_peft_model(_backbone(), _config(scales=((16, 8, 4), (8, 40, 2)))).eval()
    with (
        torch.no_grad(),
        pytest.raises(
            ValueError, match=r"PointLoRAConfig\.scales\[1\] = \(8, 40, 2\).*at least 40 points.*\(4, 32, 3\)"
        ),
    ):
        model(_points(n=32))


def test_the_first_block_alone_refuses_to_select():
    model = pointpeft.get_peft_model(_backbone(), _config()).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"token selection reads the points"):
        model.base_model.blocks.blocks[0](torch.randn(2, 1 + G, C))


# ---------------------------------------------------------------------------------------------- CLI
def _table(lines: list[str]) -> dict[str, int]:
    return {
        line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1].replace(",", "")) for line in lines[:-1]
    }


def test_pointpeft_params_counts_pointlora_on_point_mae(capsys):
    from pointpeft.cli import main

    base = [
        "params",
        "--config",
        str(CONFIGS / "scanobjectnn_pb_t50_rs.yaml"),
        "method=pointlora",
        "dapt.pool=[cls,patch]",
    ]
    assert main(base) == 0
    lines = capsys.readouterr().out.splitlines()
    assert _table(lines) == {
        "head": 267_535,
        "LoRA": 221_184,
        "PointLoRA prompts": 125_312 + 74_113,
        "backbone": 33_792 + 50_048,
        "tokens": 768,
    }
    assert "trainable params: 772,752 || all params: 22,513,936 || trainable%: 3.4323" in lines[-1]


def test_the_pointlora_section_is_checked():
    from pointpeft.train import build_model, load_config

    config = load_config(
        None,
        [
            "method=pointlora",
            "pointlora.rank=4",
            "pointlora.aux_weight=0.01",
            "pointlora.scales=[[16,8,4]]",
            "pointlora.mask_weights=[2]",
        ],
    )
    assert config["pointlora"] == {
        "rank": 4,
        "alpha": 8.0,
        "targets": ["qkv", "proj"],
        "prompt_hidden": 32,
        "scales": [[16, 8, 4]],
        "mask_weights": [2.0],
        "aux_weight": 0.01,
        "pos_embed": "pos_embed",
        "trained_backbone": ["encoder.first_conv", "pos_embed"],
    }
    assert load_config(None, [])["pointlora"]["scales"] == [[128, 32, 32], [64, 64, 8]]
    with pytest.raises(
        ValueError, match=r"pointlora\.scales\[0\] selected must be at most its groups \(16\)"
    ):
        load_config(None, ["pointlora.scales=[[16,8,40]]", "pointlora.mask_weights=[1]"])
    with pytest.raises(
        ValueError, match=r"pointlora\.mask_weights \(\[1\.0\]\) must hold one weight per scale"
    ):
        load_config(None, ["pointlora.mask_weights=[1]"])
    with pytest.raises(
        TypeError, match=r"pointlora\.pos_embed must be a dotted module path \(str\), got int 3"
    ):
        load_config(None, ["pointlora.pos_embed=3"])
    with pytest.raises(ValueError, match=r"pointlora\.trained_backbone must not repeat"):
        load_config(None, ["pointlora.trained_backbone=[pos_embed,pos_embed]"])
    with pytest.raises(ValueError, match=r"pointlora\.rank"):
        load_config(None, ["pointlora.rank=0"])
    with pytest.raises(ValueError, match=r"pointlora\.targets"):
        load_config(None, ["pointlora.targets=[qkv,attn]"])
    small = [
        "method=pointlora",
        "dapt.pool=[cls,patch]",
        "model.trans_dim=32",
        "model.depth=2",
        "model.num_heads=4",
        "model.encoder_dims=32",
    ]
    model = build_model(
        load_config(
            None, [*small, "pointlora.rank=4", "pointlora.scales=[[16,8,4]]", "pointlora.mask_weights=[2]"]
        ),
        5,
    )
    assert model.config == PointLoRAConfig(num_classes=5, rank=4, scales=((16, 8, 4),), mask_weights=(2.0,))
    with pytest.raises(ValueError, match=r"names 'prompt'"):
        build_model(load_config(None, ["method=pointlora"]), 5)  # the default pool [cls, prompt, patch]


def test_the_training_step_adds_the_auxiliary_loss():
    """``pointpeft train``'s step: the loss it returns (and logs) is the cross-entropy plus the model's
    auxiliary loss, and the predictor gets its gradient from that term."""
    from pointpeft.train.loop import _forward_backward

    model = pointpeft.get_peft_model(_backbone(), _config(aux_weight=0.5)).train()
    _randomize(model, seed=3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ctx = types.SimpleNamespace(
        model=model, optimizer=optimizer, device=torch.device("cpu"), config={"run": {"bf16": False}}
    )
    points, labels = _points(), torch.arange(4) % 5
    torch.manual_seed(0)
    loss, logits = _forward_backward(model, ctx, points, labels)
    expected = F.cross_entropy(logits.float(), labels) + model.auxiliary_loss
    torch.testing.assert_close(loss, expected)
    assert abs(model.auxiliary_loss.item()) > 1e-3
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _shared(model).predictor.parameters())
    other = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5)).train()
    ctx.model = other
    loss, logits = _forward_backward(other, ctx, points, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), labels))


def test_pointpeft_train_and_eval_run_pointlora(tmp_path, capsys):
    """``pointpeft train method=pointlora`` at the released scales (128 points per cloud: FPS 128 × kNN 32 and
    64 × 64): with aux_weight 100 the mask loss (in [−1.25 log 2, 0]) outweighs the cross-entropy, so the
    logged training loss is negative only because the auxiliary loss is added. The saved adapter evaluates
    to the best accuracy."""
    from pointpeft.cli import main
    from tiny_run import TINY

    args = [
        *TINY,
        "data.npoints=128",
        "data.synthetic_points=128",
        "run.device=cpu",
        f"run.output_dir={tmp_path}",
        "method=pointlora",
        "dapt.pool=[cls,patch]",
        "pointlora.aux_weight=100",
    ]
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "trainable params:" in out
    saved = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "POINTLORA" and saved["config"]["aux_weight"] == 100.0
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert -1.25 * math.log(2) * 100 <= record["train_loss"] < 0
    assert main(["eval", "--adapter", str(tmp_path / "best"), *args]) == 0
    assert f"test accuracy {record['best_accuracy']:.2f}%" in capsys.readouterr().out


def test_pointpeft_train_takes_the_scales_from_the_command_line(tmp_path, capsys):
    from pointpeft.cli import main
    from tiny_run import TINY

    args = [
        *TINY,
        "run.device=cpu",
        f"run.output_dir={tmp_path}",
        "method=pointlora",
        "dapt.pool=[cls,patch]",
        "pointlora.scales=[[8,8,2],[4,16,1]]",
        "pointlora.mask_weights=[1,0.5]",
    ]
    assert main(["train", *args]) == 0
    saved = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert saved["config"]["scales"] == [[8, 8, 2], [4, 16, 1]] and saved["config"]["mask_weights"] == [
        1.0,
        0.5,
    ]
    capsys.readouterr()
    from pointpeft.train import load_config

    with pytest.raises(
        ValueError,
        match=r"pointlora\.scales\[0\] = \[128, 32, 32\] needs clouds of at least .* 128 points, but data\.npoints is 64",
    ):
        load_config(None, [*TINY, "method=pointlora"])
    load_config(None, TINY)  # another method: the scales are not used


# ---------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world_size: int, init_method: str, out_dir: str) -> None:
    """One rank: PointLoRA under DDP (find_unused_parameters=False), 3 AdamW steps on CE + the auxiliary
    loss read from the wrapped module; saves what the parent asserts."""
    import datetime
    import os
    import sys

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        model = pointpeft.get_peft_model(_backbone(), _config()).train()
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        optimizer = torch.optim.AdamW(
            [p for p in ddp.parameters() if p.requires_grad], lr=1e-2, weight_decay=0
        )
        gen = torch.Generator().manual_seed(1000 + rank)
        missing: set[str] = set()
        for _ in range(3):
            points = torch.rand(4, 96, 3, generator=gen) * 2 - 1
            labels = torch.randint(0, 5, (4,), generator=gen)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(points), labels) + ddp.module.auxiliary_loss
            loss.backward()
            missing |= {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
            optimizer.step()
        diff = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                gathered = [torch.empty_like(param) for _ in range(world_size)]
                dist.all_gather(gathered, param.detach().contiguous())
                diff[name] = max((g - param).abs().max().item() for g in gathered)
        torch.save({"missing": sorted(missing), "diff": diff}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_trains_it_with_the_auxiliary_loss_without_find_unused_parameters(tmp_path):
    """With the auxiliary loss added, every trainable tensor (the predictor too) gets a gradient every step,
    so DDP with find_unused_parameters=False runs, and the ranks end equal (gloo, 2 CPU processes)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    failure = None
    try:
        mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=True)
    except ProcessException as exc:
        failure = f"a DDP worker failed:\n{exc}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["missing"] == []
        assert result["diff"] and set(result["diff"].values()) == {0.0}


def test_on_pointgpt_the_default_trained_backbone_warns_of_its_parameter_free_positions():
    """The released recipe trains the patch encoder's first conv and the position MLP; PointGPT's positions
    are sines with no parameters, so that part trains nothing, and a warning says so."""
    from pointpeft.backbones import PointGPT

    torch.manual_seed(0)
    backbone = PointGPT(trans_dim=C, depth=2, num_heads=4, num_group=G, group_size=8)
    with pytest.warns(
        UserWarning, match=r"trained_backbone names 'pos_embed', which holds no parameters in PointGPT"
    ):
        model = pointpeft.get_peft_model(backbone, _config())
    trained = model.trained_backbone_parameters("default")
    assert trained and all(".first_conv." in path for path in trained), trained
