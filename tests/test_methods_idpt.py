"""IDPT (``pointpeft.IDPTConfig``) under ``pointpeft.get_peft_model``: the released code's forward written out in
plain torch on the frozen backbone's modules (the DGCNN generator with its kNN graphs, the prompt after CLS
from block p on, its position re-added every block or once, both pools; eval and train mode), the trainable set
and its count (1,696,783 and 1,500,175 on Point-MAE for 15 classes), gradients only where they belong, the
generator's BatchNorms training, every execution mode and torch.compile alike, adapters of other methods
beside it, the adapter round trip, config and input checks, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import pointpeft
from conftest import SMALL, randomize_dapt
from pointpeft import DAPTConfig, IDPTConfig, SSFConfig, VPTConfig
from pointpeft.backbones import PointMAE
from pointpeft.methods.idpt import InstancePrompt, feature_knn, positions_every_block

C = SMALL["trans_dim"]
G = SMALL["num_group"]
CONFIGS = Path(__file__).parents[1] / "configs"
ALL, PROMPT_ONLY = ("cls", "prompt", "patch"), ("prompt",)


def _backbone(seed: int = 0, **kwargs) -> PointMAE:
    """A small random Point-MAE whose patch encoder's last layer is scaled up: at Point-MAE's init (std 0.02)
    the patch tokens are ~1e-4 apart, where float32 rounding of the distances reorders near neighbours."""
    torch.manual_seed(seed)
    backbone = PointMAE(**{**SMALL, **kwargs})
    with torch.no_grad():
        backbone.encoder.second_conv[-1].weight.mul_(1000.0)
    return backbone


def _points(seed: int = 1) -> torch.Tensor:
    return torch.rand(4, 96, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _prompts(model: torch.nn.Module) -> list[InstancePrompt]:
    return [m for m in model.modules() if isinstance(m, InstancePrompt)]


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values in every tensor of every IDPT prompt module: weights, BatchNorm affines and running
    statistics (fresh they are 1, 0, 0, 1), the prompt position."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in _prompts(model):
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                if name.endswith("num_batches_tracked"):
                    continue
                noise = torch.randn(t.shape, generator=gen)
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                elif name.endswith("bn.weight"):
                    t.copy_(1 + 0.2 * noise)
                elif name.endswith(".weight") and t.dim() > 1:
                    t.copy_(noise / t[0].numel() ** 0.5)
                else:
                    t.copy_(0.3 * noise)


# ------------------------------------------------------------------------ IDPT written out in torch
def _knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, G, k)``: each token's k nearest tokens by squared distance, from the differences (itself first)."""
    distance = ((x[:, :, None, :] - x[:, None, :, :]) ** 2).sum(dim=-1)
    return distance.argsort(dim=-1)[..., :k]


def _batch_norm(h: torch.Tensor, w: dict[str, torch.Tensor], prefix: str, training: bool) -> torch.Tensor:
    """BatchNorm over the last (channel) dimension of ``h (..., C)``: the batch's statistics (biased
    variance) in training, the running ones otherwise; eps 1e-5."""
    flat = h.reshape(-1, h.shape[-1])
    if training:
        mean, var = flat.mean(dim=0), flat.var(dim=0, unbiased=False)
    else:
        mean, var = w[f"{prefix}.running_mean"], w[f"{prefix}.running_var"]
    out = (flat - mean) / torch.sqrt(var + 1e-5) * w[f"{prefix}.weight"] + w[f"{prefix}.bias"]
    return out.reshape(h.shape)


def _edge_conv(x: torch.Tensor, w: dict[str, torch.Tensor], prefix: str, k: int, training: bool):
    """``x (B, G, C)`` → ``(B, G, C)``: [F_j − F_i ; F_i] over the k nearest j, 1×1 conv, BN, LeakyReLU, max."""
    index = _knn(x, k)
    neighbours = torch.stack([x[b][index[b]] for b in range(x.shape[0])])  # (B, G, k, C)
    centre = x[:, :, None, :].expand_as(neighbours)
    edges = torch.cat((neighbours - centre, centre), dim=-1)  # (B, G, k, 2C)
    weight = w[f"{prefix}.conv.weight"][:, :, 0, 0]  # (C, 2C)
    h = _batch_norm(edges @ weight.T, w, f"{prefix}.bn", training)
    return torch.where(h > 0, h, 0.2 * h).max(dim=2).values


def _generator(patches: torch.Tensor, w: dict[str, torch.Tensor], k: int, training: bool) -> torch.Tensor:
    """``patches (B, G, C)`` → the prompt ``(B, 1, C)``."""
    x1 = _edge_conv(patches, w, "generator.edge1", k, training)
    x2 = _edge_conv(x1, w, "generator.edge2", k, training)
    x3 = _edge_conv(x2, w, "generator.edge3", k, training)
    z = torch.cat((x1, x2, x3), dim=-1) @ w["generator.fuse.weight"][:, :, 0].T  # (B, G, C)
    z = _batch_norm(z, w, "generator.fuse_bn", training)
    return torch.where(z > 0, z, 0.2 * z).max(dim=1, keepdim=True).values


def _idpt_twin(
    backbone: PointMAE,
    w: dict[str, torch.Tensor],
    layer: int,
    k: int,
    points: torch.Tensor,
    every_block: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IDPT's forward on a plain (never wrapped) Point-MAE, from its frozen modules: blocks 0…p−1 on
    [cls; patches]; at block p the generator reads the patches of X^p (before the positions), its prompt goes
    right after CLS with position ``prompt_pos`` (re-added every block, or once when it joins); the final norm.
    Returns the final tokens (B, 1 + G, C) without the prompt and the final prompt (B, 1, C)."""
    training = backbone.training
    every_block = backbone.pos_mode == "every_block" if every_block is None else every_block
    neighborhood, centers = backbone.group_divider(points)
    tokens = backbone.encoder(neighborhood)
    batch = tokens.shape[0]
    x = torch.cat((backbone.cls_token.expand(batch, -1, -1), tokens), dim=1)
    pos = torch.cat((backbone.cls_pos.expand(batch, -1, -1), backbone.pos_embed(centers)), dim=1)
    if backbone.pos_mode == "once":
        x = x + pos
    prompt_pos = w["prompt_pos"].expand(batch, -1, -1)
    for index, block in enumerate(backbone.blocks.blocks):
        if index == layer:
            patches = tokens if layer == 0 else x[:, 1:]  # X^p without the positions added at this block
            q = _generator(patches, w, k, training)
            x = torch.cat((x[:, :1], q if every_block else q + prompt_pos, x[:, 1:]), dim=1)
            pos = torch.cat(
                (pos[:, :1], prompt_pos if every_block else torch.zeros_like(q), pos[:, 1:]), dim=1
            )
        if backbone.pos_mode != "once":
            x = x + pos
        elif index >= layer and every_block:  # the prompt's position alone, re-added every block
            x = x + torch.cat((torch.zeros_like(x[:, :1]), prompt_pos, torch.zeros_like(x[:, 2:])), dim=1)
        x = block(x)
    y = backbone.norm(x)
    return torch.cat((y[:, :1], y[:, 2:]), dim=1), y[:, 1:2]


def _head_twin(head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The Point-MAE head in eval mode written out: Linear → BN (running statistics) → ReLU, twice, Linear."""
    s = head.state_dict()
    h = features
    for lin, bn in (("mlp.0", "mlp.1"), ("mlp.4", "mlp.5")):
        h = h @ s[f"{lin}.weight"].T + s[f"{lin}.bias"]
        h = (h - s[f"{bn}.running_mean"]) / torch.sqrt(s[f"{bn}.running_var"] + 1e-5) * s[f"{bn}.weight"]
        h = torch.relu(h + s[f"{bn}.bias"])
    return h @ s["mlp.8.weight"].T + s["mlp.8.bias"]


def _features(tokens: torch.Tensor, prompt: torch.Tensor, pool: tuple[str, ...]) -> torch.Tensor:
    """The head input of IDPT's ``cls_type``: ``all`` = [cls, prompt, max of the patches], ``promptonly``."""
    if pool == PROMPT_ONLY:
        return prompt[:, 0]
    return torch.cat((tokens[:, 0], prompt[:, 0], tokens[:, 1:].max(dim=1).values), dim=-1)


def _weights(model: pointpeft.DAPTModel, grad: bool = False) -> dict[str, torch.Tensor]:
    (module,) = _prompts(model)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if grad:
        for key, value in state.items():
            if value.is_floating_point() and "running" not in key:
                value.requires_grad_(True)
    return state


def _randomize_head(model: pointpeft.DAPTModel, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in model.head.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


# ------------------------------------------------------------------------------------- what it computes
@pytest.mark.parametrize("pos_mode", ["every_block", "once"])
@pytest.mark.parametrize("pool", [ALL, PROMPT_ONLY], ids=["all", "promptonly"])
@pytest.mark.parametrize(("depth", "layer"), [(12, 11), (12, 6), (3, 1), (3, 0)])
def test_the_wrapped_model_computes_idpt_written_out_in_torch(depth, layer, pool, pos_mode):
    points = _points()
    config = IDPTConfig(num_classes=5, prompt_layer=layer, k=5, pool=pool)
    model = pointpeft.get_peft_model(_backbone(depth=depth, pos_mode=pos_mode), config).eval()
    _randomize(model, seed=3)
    _randomize_head(model, seed=4)
    twin = _backbone(depth=depth, pos_mode=pos_mode).eval()
    assert model.head.mlp[0].in_features == C * len(pool)
    with torch.no_grad():
        tokens, prompt = _idpt_twin(twin, _weights(model), layer, 5, points)
        got = model.forward_features(points)
        torch.testing.assert_close(got.tokens, tokens, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.prompts, prompt, rtol=1e-5, atol=1e-5)
        expected = _head_twin(model.head, _features(tokens, prompt, pool))
        torch.testing.assert_close(model(points), expected, rtol=1e-5, atol=1e-5)


def test_the_prompt_position_follows_the_backbones_convention_or_the_config():
    """``prompt_pos_mode="auto"`` reads the backbone's pos_mode; set outright, the position is re-added every
    block (or added once) whatever the backbone does; the two differ."""
    points = _points()
    assert positions_every_block("auto", _backbone()) is True
    assert positions_every_block("auto", _backbone(pos_mode="once")) is False
    assert positions_every_block("auto", torch.nn.Linear(2, 2)) is True  # no pos_mode: Point-MAE's convention
    assert positions_every_block("once", _backbone()) is False
    results = []
    for mode in ("every_block", "once"):
        config = IDPTConfig(num_classes=5, prompt_layer=1, k=5, prompt_pos_mode=mode)
        model = pointpeft.get_peft_model(_backbone(pos_mode="once"), config).eval()
        _randomize(model, seed=3)
        assert _prompts(model)[0].every_block is (mode == "every_block")
        twin = _backbone(pos_mode="once").eval()
        with torch.no_grad():
            tokens, prompt = _idpt_twin(
                twin, _weights(model), 1, 5, points, every_block=mode == "every_block"
            )
            got = model.forward_features(points)
            torch.testing.assert_close(got.tokens, tokens, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got.prompts, prompt, rtol=1e-5, atol=1e-5)
        results.append(got.prompts)
    assert not torch.allclose(results[0], results[1], atol=1e-4)


@pytest.mark.parametrize("execution", ["plain", "recompute", "fused"])
@pytest.mark.parametrize(("layer", "pool"), [(11, ALL), (6, PROMPT_ONLY)], ids=["p11-all", "p6-promptonly"])
def test_in_train_mode_it_is_the_written_out_forward_with_its_gradients(layer, pool, execution):
    """Train mode: DropPath on (the same random draws), the generator's BatchNorms on the batch's statistics;
    features, logits (head dropout 0, the head's BatchNorm on the batch) and the generator's gradients agree.
    In float64: in float32 the gradients through the train-mode BatchNorms and the maxima differ by float
    rounding alone up to ~1e-4 of their size, which would hide a small error."""
    points = _points().double()
    config = IDPTConfig(num_classes=5, prompt_layer=layer, k=6, pool=pool, head_dropout=0.0)
    backbone = _backbone(depth=12, drop_path_rate=0.5).double()
    model = pointpeft.get_peft_model(backbone, config, execution=execution).train()
    _randomize(model, seed=5)
    twin = _backbone(depth=12, drop_path_rate=0.5).double().train()
    weights = _weights(model, grad=True)
    torch.manual_seed(11)
    got = model.forward_features(points)
    torch.manual_seed(11)
    tokens, prompt = _idpt_twin(twin, weights, layer, 6, points)
    torch.testing.assert_close(got.tokens, tokens, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(got.prompts, prompt, rtol=1e-10, atol=1e-11)
    logits = model.head(got.tokens, got.prompts)
    expected = model.head.mlp(_features(tokens, prompt, pool))
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-11)
    probe = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (logits * probe).sum().backward()
    (expected * probe).sum().backward()
    (module,) = _prompts(model)
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.grad, weights[name].grad, rtol=1e-9, atol=1e-10, msg=name)


def test_the_prompt_depends_on_the_instance_and_on_k():
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), IDPTConfig(num_classes=5, prompt_layer=1, k=4)).eval()
    _randomize(model, seed=1)
    with torch.no_grad():
        prompts = model.forward_features(points).prompts
        assert prompts.shape == (4, 1, C)
        assert not torch.allclose(prompts[0], prompts[1], atol=1e-4)  # one prompt per cloud
        model.base_model.blocks.blocks[1].instance_prompt["default"].generator.edge1.k = 9
        assert not torch.allclose(model.forward_features(points).prompts, prompts, atol=1e-5)


def test_the_feature_knn_includes_each_token_itself_and_matches_brute_force():
    x = torch.randn(3, 8, 20)  # (B, C, G)
    index = feature_knn(x, 5)
    assert index.shape == (3, 20, 5)
    assert torch.equal(index[..., 0], torch.arange(20).expand(3, -1))  # itself first, at distance 0
    brute = _knn(x.transpose(1, 2), 5)
    assert torch.equal(index.sort(dim=-1).values, brute.sort(dim=-1).values)
    twins = torch.cat((x[..., :1], x[..., :1], x[..., 1:]), dim=-1)  # a duplicate token: a tie at distance 0
    assert set(feature_knn(twins, 2)[0, 0].tolist()) == {0, 1}
    with pytest.raises(ValueError, match=r"IDPTConfig\.k must be in \[1, G\] for the G = 20 .* got k = 21"):
        feature_knn(x, 21)


def test_the_feature_knn_keeps_float32_distances_under_autocast_and_for_half_inputs():
    x = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(0))  # near neighbours close together
    expected = feature_knn(x, 20).sort(dim=-1).values
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(feature_knn(x, 20).sort(dim=-1).values, expected, rtol=0, atol=0)
    rounded = x.bfloat16()
    torch.testing.assert_close(
        feature_knn(rounded, 20).sort(dim=-1).values, feature_knn(rounded.float(), 20).sort(dim=-1).values
    )


# ------------------------------------------------------------------------------------ trainable set
def _head_size(in_features: int, classes: int, hidden: int = 256) -> int:
    return (
        (in_features * hidden + hidden)
        + 2 * hidden
        + (hidden * hidden + hidden)
        + 2 * hidden
        + (hidden * classes + classes)
    )


def _generator_size(dim: int) -> int:
    """Three EdgeConvs (2C → C conv without bias, BN affine) and the fusing conv 3C → C with its BN."""
    return 3 * (2 * dim * dim + 2 * dim) + (3 * dim * dim + 2 * dim)


@pytest.mark.parametrize("train_prompt_pos", [False, True])
@pytest.mark.parametrize("train_cls", [True, False])
def test_the_trainable_set_and_its_count_from_the_shapes(train_cls, train_prompt_pos):
    config = IDPTConfig(num_classes=5, prompt_layer=2, train_cls=train_cls, train_prompt_pos=train_prompt_pos)
    model = pointpeft.get_peft_model(_backbone(), config)
    names = _trainable(model)
    generator = {n for n in names if ".instance_prompt." in n}
    assert all(n.startswith("base_model.blocks.blocks.2.instance_prompt.default.") for n in generator)
    position = "base_model.blocks.blocks.2.instance_prompt.default.prompt_pos"
    assert (position in generator) is train_prompt_pos
    assert (position in dict(model.named_buffers())) is not train_prompt_pos
    head = {n for n, _ in model.head.named_parameters(prefix="heads.default")}
    cls = {n for n in names if "cls_" in n}
    assert names == generator | head | cls and len(cls) == (2 if train_cls else 0)
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == (
        _generator_size(C)
        + (C if train_prompt_pos else 0)
        + (2 * C if train_cls else 0)
        + _head_size(3 * C, 5)
    )


def test_on_point_mae_the_counts_are_1696783_and_1500175():
    """Point-MAE for ScanObjectNN (15 classes, width 384): the generator 1,330,176, the CLS token and its
    position 768, the head on [cls, prompt, max of the patches] (1152 wide) 365,839 or on the prompt alone
    (OBJ_BG) 169,231."""
    dim, classes = 384, 15
    assert (_generator_size(dim), _head_size(3 * dim, classes), _head_size(dim, classes)) == (
        1_330_176,
        365_839,
        169_231,
    )
    for pool, expected in ((ALL, 1_696_783), (PROMPT_ONLY, 1_500_175)):
        model = pointpeft.get_peft_model(PointMAE(), IDPTConfig(num_classes=classes, pool=pool))
        trained = model.get_nb_trainable_parameters()[0]
        assert trained == _generator_size(dim) + 2 * dim + _head_size(len(pool) * dim, classes) == expected


def test_gradients_reach_the_generator_the_head_and_the_cls_token_only():
    model = pointpeft.get_peft_model(_backbone(), IDPTConfig(num_classes=5, prompt_layer=2, k=5)).train()
    F.cross_entropy(model(_points()), torch.arange(4) % 5).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == _trainable(model)
    assert all(p.grad.abs().sum() > 0 for p in _prompts(model)[0].parameters())


def test_the_generators_batch_norms_train_even_where_the_backbones_are_frozen():
    """With update_bn_stats=False the backbone's BatchNorms keep their statistics in train mode, but the
    generator's are new trained modules: they run on the batch and update their running statistics."""
    model = pointpeft.get_peft_model(
        _backbone(), IDPTConfig(num_classes=5, prompt_layer=1, k=5, update_bn_stats=False)
    ).train()
    (module,) = _prompts(model)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 4 and all(m.training for m in norms)
    encoder_bn = model.base_model.encoder.base_layer.first_conv[1]
    assert not encoder_bn.training
    before = (encoder_bn.running_mean.clone(), [m.running_mean.clone() for m in norms])
    model(_points())
    assert torch.equal(encoder_bn.running_mean, before[0])
    assert all(not torch.equal(m.running_mean, b) for m, b in zip(norms, before[1], strict=True))


# ---------------------------------------------------------------------------------- execution modes
def test_every_execution_mode_gives_the_same_logits_and_gradients():
    points, labels = _points(), torch.arange(4) % 5
    results = {}
    for execution in ("plain", "recompute", "fused"):
        config = IDPTConfig(num_classes=5, prompt_layer=1, k=5, head_dropout=0.0, train_prompt_pos=True)
        model = pointpeft.get_peft_model(_backbone(drop_path_rate=0.3), config, execution=execution).train()
        _randomize(model, seed=2)
        assert all(r.execution == execution for r in model.execution_report())
        torch.manual_seed(3)
        logits = model(points)
        F.cross_entropy(logits, labels).backward()
        results[execution] = (
            logits.detach(),
            {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
        )
    plain_logits, plain_grads = results["plain"]
    for execution in ("recompute", "fused"):
        logits, grads = results[execution]
        torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-6, msg=execution)
        assert grads.keys() == plain_grads.keys()
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"{execution} {name}")


@pytest.mark.parametrize("layer", [0, 1])
def test_it_compiles_whole_and_gives_the_eager_step(layer):
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=8, encoder_dims=32)
    model = pointpeft.get_peft_model(
        backbone, IDPTConfig(num_classes=4, prompt_layer=layer, k=4, head_dropout=0.0)
    )
    model.train()
    _randomize(model, seed=1)
    points = torch.rand(4, 32, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    labels = torch.arange(4) % 4

    def step(runner):
        model.zero_grad(set_to_none=True)
        logits = runner(points)
        F.cross_entropy(logits, labels).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = step(model)
    torch._dynamo.reset()
    compiled = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    assert compiled[1].keys() == eager[1].keys()
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------- beside the other methods
def test_adapters_of_other_methods_beside_it_and_switching():
    """IDPT, DAPT, SSF and VPT on one backbone: each computes what it computes alone and trains only its own
    tensors; the bare backbone inside disable_adapter; deleting IDPT leaves the rest."""
    points = _points()
    configs = {
        "idpt": IDPTConfig(num_classes=5, prompt_layer=1, k=5, head_dropout=0.0),
        "dapt": DAPTConfig(num_classes=5, rank=8, head_dropout=0.0),
        "ssf": SSFConfig(num_classes=5, head_dropout=0.0),
        "vpt": VPTConfig(num_classes=3, num_prompts=2, head_dropout=0.0),
    }
    alone = {}
    for name, config in configs.items():
        single = pointpeft.get_peft_model(_backbone(), config, adapter_name=name).eval()
        randomize_dapt(single, seed=4)
        _randomize(single, seed=5)
        alone[name] = single
    shared = pointpeft.get_peft_model(_backbone(), configs["dapt"], adapter_name="dapt").eval()
    for name in ("idpt", "ssf", "vpt"):
        shared.add_adapter(name, configs[name])
    for name, single in alone.items():
        shared.set_adapter(name)
        own = {**dict(single.named_parameters()), **dict(single.named_buffers())}
        with torch.no_grad():
            for key, value in [*shared.named_parameters(), *shared.named_buffers()]:
                if f".{name}." in key and key in own:
                    value.copy_(own[key])
                elif value.requires_grad:
                    value.copy_(own[key])
            shared.heads[name].load_state_dict(single.heads[name].state_dict())
        assert _trainable(shared) == _trainable(single), name
        with torch.no_grad():
            torch.testing.assert_close(shared(points), single(points), rtol=1e-6, atol=1e-6, msg=name)
    shared.set_adapter("idpt")
    with torch.no_grad():
        prompted = shared(points)
        with shared.disable_adapter():
            torch.testing.assert_close(shared(points), _backbone().eval()(points), rtol=0, atol=0)
        torch.testing.assert_close(shared(points), prompted, rtol=0, atol=0)
    shared.set_adapter("dapt")
    shared.delete_adapter("idpt")
    assert not _prompts(shared)
    with torch.no_grad():
        torch.testing.assert_close(shared(points), alone["dapt"](points), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("train_prompt_pos", [False, True])
def test_adapter_round_trip_and_loading_beside_another_method(tmp_path, train_prompt_pos):
    from safetensors.torch import load_file

    points = _points()
    config = IDPTConfig(
        num_classes=5, prompt_layer=2, k=6, pool=PROMPT_ONLY, train_prompt_pos=train_prompt_pos
    )
    model = pointpeft.get_peft_model(_backbone(), config).train()
    _randomize(model, seed=6)
    model(points)  # the generator's running statistics move
    model.eval()
    model.save_adapter(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "IDPT" and saved["config"] == config.to_dict()
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    prefix = "base_model.blocks.blocks.2.instance_prompt."
    assert f"{prefix}prompt_pos" in tensors and f"{prefix}generator.edge1.bn.running_var" in tensors
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    assert type(loaded.config) is IDPTConfig and loaded.config == config
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)
    other = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    other.load_adapter(str(tmp_path), "idpt")
    other.set_adapter("idpt")
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(points), model(points), rtol=0, atol=0)


def test_unload_gives_the_backbone_back():
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = pointpeft.get_peft_model(backbone, IDPTConfig(num_classes=5, prompt_layer=0, k=4))
    _randomize(model, seed=2)
    plain = model.unload()
    assert plain.state_dict().keys() == before.keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())


def test_on_a_torch_encoder_sequence_first_equals_batch_first():
    from standins import TorchEncoderModel

    points, logits = _points(), []
    for batch_first in (True, False):
        torch.manual_seed(0)
        backbone = TorchEncoderModel(batch_first=batch_first)
        torch.manual_seed(1)
        model = pointpeft.get_peft_model(
            backbone, IDPTConfig(num_classes=5, prompt_layer=1, k=4), layout="torch_transformer_encoder"
        ).eval()
        _randomize(model, seed=3)
        with torch.no_grad():
            logits.append(model(points))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ config and input checks
def test_the_config_checks_its_fields_naming_them():
    with pytest.raises(ValueError, match=r"prompt_layer must be an int in \[0, 1048576\], got -1"):
        IDPTConfig(num_classes=5, prompt_layer=-1)
    with pytest.raises(TypeError, match=r"prompt_layer must be an int in \[0, 1048576\], got str '11'"):
        IDPTConfig(num_classes=5, prompt_layer="11")
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 1048576\], got 0"):
        IDPTConfig(num_classes=5, k=0)
    with pytest.raises(TypeError, match=r"k must be an int in \[1, 1048576\], got float 2.5"):
        IDPTConfig(num_classes=5, k=2.5)
    with pytest.raises(TypeError, match=r"train_prompt_pos must be a bool \(True or False\), got int 1"):
        IDPTConfig(num_classes=5, train_prompt_pos=1)
    with pytest.raises(
        ValueError, match=r"prompt_pos_mode must be one of \('auto', 'every_block', 'once'\), got 'always'"
    ):
        IDPTConfig(num_classes=5, prompt_pos_mode="always")
    with pytest.raises(ValueError, match=r"pool must name at least one"):
        IDPTConfig(num_classes=5, pool=())
    config = IDPTConfig(num_classes=15)
    assert (config.pool, config.prompt_layer, config.k, config.train_prompt_pos, config.prompt_pos_mode) == (
        ALL,
        11,
        20,
        False,
        "auto",
    )
    assert IDPTConfig(num_classes=5, pool=["patch", "prompt"]).pool == ("prompt", "patch")
    with pytest.raises(TypeError, match=r"k must be"):
        config.k = True
    assert IDPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(
        ValueError, match=r"IDPTConfig\.from_dict: the key\(s\) \['num_classes'\] are missing"
    ):
        IDPTConfig.from_dict({"k": 4})


def test_a_prompt_layer_outside_the_backbone_is_refused_naming_it():
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"IDPTConfig\.prompt_layer must be in \[0, 3\) for PointMAE, which has 3 blocks, got 3",
    ):
        pointpeft.get_peft_model(backbone, IDPTConfig(num_classes=5, prompt_layer=3))
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in before.items())
    assert not any(type(m).__name__ == "DAPTBlock" for m in backbone.modules())  # left as it was
    model = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    with pytest.raises(ValueError, match=r"got 11"):
        model.add_adapter("idpt", IDPTConfig(num_classes=5))
    assert model.adapters == ("default",)


def test_a_prompt_at_block_0_needs_the_patch_encoder():
    backbone = _backbone()
    layout = dataclasses.replace(pointpeft.detect_layout(backbone), patch_encoder=None)
    with pytest.raises(
        ValueError, match=r"prompt_layer = 0 makes the prompt from the patch encoder's output"
    ):
        pointpeft.get_peft_model(backbone, IDPTConfig(num_classes=5, prompt_layer=0, k=4), layout=layout)
    model = pointpeft.get_peft_model(
        _backbone(), IDPTConfig(num_classes=5, prompt_layer=1, k=4), layout=layout
    )
    assert model.eval()(_points()).shape == (4, 5)  # a later block reads the previous block's output


def test_more_neighbours_than_patch_tokens_fail_at_forward_naming_k_and_g():
    model = pointpeft.get_peft_model(_backbone(), IDPTConfig(num_classes=5, prompt_layer=1, k=G + 1)).eval()
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match=rf"k must be in \[1, G\] for the G = {G} .*got k = {G + 1}"),
    ):
        model(_points())
    with torch.no_grad():  # k = G: every token is every token's neighbour
        pointpeft.get_peft_model(_backbone(), IDPTConfig(num_classes=5, prompt_layer=1, k=G)).eval()(
            _points()
        )


# ---------------------------------------------------------------------------------------------- CLI
def _table(lines: list[str]) -> dict[str, int]:
    return {
        line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1].replace(",", "")) for line in lines[:-1]
    }


def test_pointpeft_params_counts_idpt_on_point_mae(capsys):
    from pointpeft.cli import main

    base = ["params", "--config", str(CONFIGS / "scanobjectnn_objbg.yaml"), "method=idpt"]
    assert main(base) == 0  # the yaml's pool [cls, prompt, patch]: IDPT's "all"
    lines = capsys.readouterr().out.splitlines()
    assert _table(lines) == {"head": 365_839, "IDPT generator": 1_330_176, "tokens": 768}
    assert "trainable params: 1,696,783 ||" in lines[-1]
    assert main([*base, "dapt.pool=[prompt]", "idpt.prompt_layer=6"]) == 0  # OBJ_BG's "promptonly"
    lines = capsys.readouterr().out.splitlines()
    assert _table(lines) == {"head": 169_231, "IDPT generator": 1_330_176, "tokens": 768}
    assert "trainable params: 1,500,175 ||" in lines[-1]
    assert main([*base, "idpt.train_prompt_pos=true"]) == 0
    assert "trainable params: 1,697,167 ||" in capsys.readouterr().out


def test_the_idpt_section_is_checked():
    from pointpeft.train import build_model, load_config

    config = load_config(
        None, ["method=idpt", "idpt.prompt_layer=0", "idpt.k=4", "idpt.prompt_pos_mode=once"]
    )
    assert config["idpt"] == {"prompt_layer": 0, "k": 4, "train_prompt_pos": False, "prompt_pos_mode": "once"}
    with pytest.raises(ValueError, match=r"idpt\.k"):
        load_config(None, ["idpt.k=0"])
    with pytest.raises(ValueError, match=r"idpt\.prompt_layer"):
        load_config(None, ["idpt.prompt_layer=-1"])
    with pytest.raises(ValueError, match=r"idpt\.prompt_pos_mode"):
        load_config(None, ["idpt.prompt_pos_mode=sometimes"])
    small = [
        "method=idpt",
        "idpt.k=4",
        "model.trans_dim=32",
        "model.depth=2",
        "model.num_heads=4",
        "model.encoder_dims=32",
    ]
    model = build_model(load_config(None, [*small, "idpt.prompt_layer=1"]), 5)
    assert model.config == IDPTConfig(num_classes=5, prompt_layer=1, k=4)
    assert _prompts(model)[0].every_block is False  # the CLI's backbone adds its positions once
    with pytest.raises(ValueError, match=r"prompt_layer must be in \[0, 2\).*got 11"):
        build_model(load_config(None, small), 5)


def test_pointpeft_train_and_eval_run_idpt(tmp_path, capsys):
    from pointpeft.cli import main
    from tiny_run import TINY

    args = [
        *TINY,
        "run.device=cpu",
        f"run.output_dir={tmp_path}",
        "method=idpt",
        "idpt.prompt_layer=0",
        "idpt.k=4",
    ]
    assert main(["train", *args, "optim.epochs=1"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "IDPT" and saved["config"]["pool"] == list(ALL)
    assert saved["config"]["prompt_layer"] == 0 and saved["config"]["k"] == 4
    best = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["best_accuracy"]
    assert "trainable params:" in out
    assert main(["eval", "--adapter", str(tmp_path / "best"), *args]) == 0
    assert f"test accuracy {best:.2f}%" in capsys.readouterr().out  # the saved adapter scores the same
