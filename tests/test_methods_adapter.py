"""The AdaptFormer-style adapter (``pointpeft.AdapterConfig``) under ``pointpeft.get_peft_model``: the block
written out in plain torch on the frozen backbone's modules (eval and train mode, DropPath and dropout on),
identity at init, the trainable set and its count from the shapes (863,503 on Point-MAE for 15 classes),
gradients only where they belong, every execution mode and torch.compile alike, adapters of other methods
beside it, the adapter round trip, config checks, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import pointpeft
from conftest import SMALL, randomize_dapt
from pointpeft import AdapterConfig, DAPTConfig, LinearProbeConfig, SSFConfig, VPTConfig
from pointpeft.backbones import PointMAE
from pointpeft.dapt import StreamAdapterSite
from pointpeft.methods.adapter import AdaptFormerAdapter

C, DEPTH = SMALL["trans_dim"], SMALL["depth"]
CONFIGS = Path(__file__).parents[1] / "configs"


def _backbone(seed: int = 0, **kwargs) -> PointMAE:
    torch.manual_seed(seed)
    return PointMAE(**{**SMALL, **kwargs})


def _points(seed: int = 1) -> torch.Tensor:
    return torch.rand(4, 96, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _adapters(model: torch.nn.Module) -> list[AdaptFormerAdapter]:
    return [m for m in model.modules() if isinstance(m, AdaptFormerAdapter)]


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero values in every tensor of every AdaptFormer adapter (fresh, it outputs exactly zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in _adapters(model):
            for p in adapter.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def _final_tokens(backbone: torch.nn.Module, points: torch.Tensor, norm: str = "norm") -> torch.Tensor:
    kept = []
    handle = backbone.get_submodule(norm).register_forward_hook(lambda module, args, out: kept.append(out))
    try:
        backbone(points)
    finally:
        handle.remove()
    return kept[0]


def _adaptformer_twin(
    backbone: PointMAE,
    weights: list[dict[str, torch.Tensor]],
    scale: float,
    p: float,
    points: torch.Tensor,
    inside_drop_path: bool = False,
) -> torch.Tensor:
    """AdaptFormer's parallel adapter written out on a plain (never wrapped) Point-MAE, from its frozen modules:
    in each block ``x1 = x + DropPath(attn(norm1(x)))``, ``a = scale · (W_u Dropout(ReLU(W_d x1 + b_d)) + b_u)``,
    ``x = x1 + DropPath(mlp(norm2(x1))) + a``; the final norm's tokens (B, 1 + G, C). ``weights``: each block's
    ``down.weight``, ``down.bias``, ``up.weight``, ``up.bias``. ``inside_drop_path``: the adapter output added
    inside the FFN's DropPath instead (DAPT's place, for the test that the two differ)."""
    training = backbone.training
    neighborhood, centers = backbone.group_divider(points)
    tokens = backbone.encoder(neighborhood)
    batch = tokens.shape[0]
    x = torch.cat((backbone.cls_token.expand(batch, -1, -1), tokens), dim=1)
    pos = torch.cat((backbone.cls_pos.expand(batch, -1, -1), backbone.pos_embed(centers)), dim=1)
    if backbone.pos_mode == "once":
        x = x + pos
    for block, w in zip(backbone.blocks.blocks, weights, strict=True):
        if backbone.pos_mode != "once":
            x = x + pos
        x1 = x + block.drop_path(block.attn(block.norm1(x)))
        hidden = F.dropout(F.relu(F.linear(x1, w["down.weight"], w["down.bias"])), p=p, training=training)
        a = scale * F.linear(hidden, w["up.weight"], w["up.bias"])
        if inside_drop_path:
            x = x1 + block.drop_path(block.mlp(block.norm2(x1)) + a)
        else:
            x = x1 + block.drop_path(block.mlp(block.norm2(x1))) + a
    return backbone.norm(x)


def _weights(model: pointpeft.DAPTModel) -> list[dict[str, torch.Tensor]]:
    adapters = _adapters(model)
    assert len(adapters) == len(model.layout.blocks)
    return [{k: v.detach().clone() for k, v in a.state_dict().items()} for a in adapters]


# ------------------------------------------------------------------------------------- what it computes
@pytest.mark.parametrize("pos_mode", ["every_block", "once"])
def test_the_wrapped_model_computes_the_adaptformer_block_written_out_in_torch(pos_mode):
    points = _points()
    config = AdapterConfig(num_classes=5, rank=6, scale=0.3, head_dropout=0.0)
    model = pointpeft.get_peft_model(_backbone(pos_mode=pos_mode), config).eval()
    _randomize(model, seed=3)
    twin = _backbone(pos_mode=pos_mode).eval()
    with torch.no_grad():
        expected = _adaptformer_twin(twin, _weights(model), 0.3, 0.0, points)
        got = model.forward_features(points).tokens
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(points), model.head(expected, None), rtol=1e-5, atol=1e-6)
        # the adapters act: the frozen backbone's tokens differ
        assert not torch.allclose(got, _final_tokens(_backbone(pos_mode=pos_mode).eval(), points), atol=1e-3)


@pytest.mark.parametrize("execution", ["plain", "recompute", "fused"])
def test_in_train_mode_the_adapter_sits_outside_the_ffns_drop_path(execution):
    """DropPath (rate 0.5, so whole samples drop) and the adapter's dropout on: with the same random draws the
    wrapped model gives the written-out block, whose adapter output is added outside the FFN's DropPath (a
    sample whose FFN branch drops keeps its adapter output). Gradients of the adapters agree too."""
    points = _points()
    config = AdapterConfig(num_classes=5, rank=6, scale=0.5, dropout=0.3)
    model = pointpeft.get_peft_model(_backbone(drop_path_rate=0.5), config, execution=execution).train()
    _randomize(model, seed=4)
    twin = _backbone(drop_path_rate=0.5).train()
    weights = [{k: v.requires_grad_(True) for k, v in w.items()} for w in _weights(model)]
    torch.manual_seed(11)
    got = model.forward_features(points).tokens
    torch.manual_seed(11)
    expected = _adaptformer_twin(twin, weights, 0.5, 0.3, points)
    # with gradients on, torch rounds differently here by up to ~5e-6 even for linear probing against the
    # plain backbone; an adapter inside the DropPath differs by far more (the next test)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5)
    probe = torch.randn(got.shape, generator=torch.Generator().manual_seed(5))
    (got * probe).sum().backward()
    (expected * probe).sum().backward()
    for adapter, w in zip(_adapters(model), weights, strict=True):
        for name, p in adapter.named_parameters():
            torch.testing.assert_close(p.grad, w[name].grad, rtol=1e-4, atol=2e-4, msg=name)  # grads ~10


def test_the_written_out_block_would_catch_an_adapter_inside_the_drop_path():
    """The twin tells the two insertions apart: with DropPath on, an adapter inside the FFN's DropPath (DAPT's
    place) gives other tokens than AdaptFormer's, so the train-mode test above holds the model to the latter."""
    points = _points()
    model = pointpeft.get_peft_model(_backbone(drop_path_rate=0.9), AdapterConfig(num_classes=5, rank=4))
    _randomize(model, seed=4)
    weights = _weights(model)
    twin = _backbone(drop_path_rate=0.9).train()
    tokens = []
    for inside in (False, True):
        torch.manual_seed(11)
        with torch.no_grad():
            tokens.append(_adaptformer_twin(twin, weights, 0.1, 0.0, points, inside_drop_path=inside))
    assert not torch.allclose(tokens[0], tokens[1], atol=1e-4)


def test_at_init_the_logits_are_the_frozen_backbones_with_the_head():
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), AdapterConfig(num_classes=5)).eval()
    assert all(
        torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
        for a in _adapters(model)
    )
    assert all(
        torch.count_nonzero(a.down.bias) == 0 and a.down.weight.abs().sum() > 0 for a in _adapters(model)
    )
    with torch.no_grad():
        frozen = _final_tokens(_backbone().eval(), points)
        torch.testing.assert_close(model.forward_features(points).tokens, frozen, rtol=0, atol=0)
        torch.testing.assert_close(model(points), model.head(frozen, None), rtol=0, atol=0)
        probe = pointpeft.get_peft_model(_backbone(), LinearProbeConfig(num_classes=5)).eval()
        probe.head.load_state_dict(model.head.state_dict())
        torch.testing.assert_close(model(points), probe(points), rtol=0, atol=0)


def test_the_adapter_layer_is_adaptformers_formula_with_its_init():
    torch.manual_seed(0)
    layer = AdaptFormerAdapter(12, 5, scale=0.1, dropout=0.1)
    reference = torch.nn.Linear(12, 5)  # nn.Linear's default weight init: Kaiming-uniform, a = sqrt(5)
    bound = 1 / 12**0.5
    assert layer.down.weight.abs().max() <= bound and reference.weight.abs().max() <= bound
    assert layer.down.weight.std() > 0.3 * bound
    _randomize(layer, seed=1)
    x = torch.randn(2, 7, 12)
    layer.eval()
    expected = 0.1 * (
        torch.relu(x @ layer.down.weight.T + layer.down.bias) @ layer.up.weight.T + layer.up.bias
    )
    torch.testing.assert_close(layer(x), expected)
    assert not any(p.requires_grad is False for p in layer.parameters())
    assert "scale" not in dict(layer.named_parameters())  # the scale is a constant, not learned


# ------------------------------------------------------------------------------------ trainable set
def _head_size(model: pointpeft.DAPTModel) -> int:
    return sum(p.numel() for p in model.head.parameters())


@pytest.mark.parametrize("train_cls", [True, False])
def test_the_trainable_set_and_its_count_from_the_shapes(train_cls):
    rank = 7
    model = pointpeft.get_peft_model(
        _backbone(), AdapterConfig(num_classes=5, rank=rank, train_cls=train_cls)
    )
    names = _trainable(model)
    adapters = {n for n in names if ".adapter." in n}
    assert all(".base_layer.norm2.adapter.default." in n for n in adapters), adapters
    head = {n for n, _ in model.head.named_parameters(prefix="heads.default")}
    cls = {n for n in names if "cls_" in n}
    assert names == adapters | head | cls and len(cls) == (2 if train_cls else 0)
    assert not any(
        p.requires_grad
        for n, p in model.base_model.named_parameters()
        if ".adapter." not in n and "cls_" not in n
    )
    per_block = (C * rank + rank) + (rank * C + C)  # down (C -> r) and up (r -> C), with biases
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == DEPTH * per_block + (2 * C if train_cls else 0) + _head_size(model)


def test_on_point_mae_the_count_is_863503():
    """Point-MAE for ScanObjectNN (15 classes, width 384, 12 blocks), r = 64, head on CLS + max of the
    patches: 12 · (24,640 + 24,960) = 595,200 in the adapters, the head, the CLS token and its position."""
    dim, depth, rank, classes, hidden = 384, 12, 64, 15, 256
    adapters = depth * ((dim * rank + rank) + (rank * dim + dim))
    head = (
        (2 * dim * hidden + hidden)
        + 2 * hidden
        + (hidden * hidden + hidden)
        + 2 * hidden
        + (hidden * classes + classes)
    )
    assert (adapters, head) == (595_200, 267_535)
    model = pointpeft.get_peft_model(PointMAE(), AdapterConfig(num_classes=classes))
    assert model.get_nb_trainable_parameters()[0] == adapters + head + 2 * dim == 863_503


def test_gradients_reach_the_adapters_the_head_and_the_cls_token_only():
    model = pointpeft.get_peft_model(_backbone(), AdapterConfig(num_classes=5)).train()
    F.cross_entropy(model(_points()), torch.arange(4) % 5).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == _trainable(model)
    assert all(a.up.weight.grad.abs().sum() > 0 for a in _adapters(model))  # W_u = 0: only W_u learns first


# ---------------------------------------------------------------------------------- execution modes
def test_every_execution_mode_gives_the_same_logits_and_gradients():
    points, labels = _points(), torch.arange(4) % 5
    results = {}
    for execution in ("plain", "recompute", "fused"):
        config = AdapterConfig(num_classes=5, rank=8, dropout=0.2, head_dropout=0.0)
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


def test_it_compiles_whole_and_gives_the_eager_step():
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=8, encoder_dims=32)
    model = pointpeft.get_peft_model(
        backbone, AdapterConfig(num_classes=4, rank=4, dropout=0.0, head_dropout=0.0)
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
        torch.testing.assert_close(compiled[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------- beside the other methods
def test_adapters_of_other_methods_beside_it_and_switching(tmp_path):
    """An AdaptFormer adapter, DAPT, SSF and VPT on one backbone: each computes what it computes alone and
    trains only its own tensors; the bare backbone inside disable_adapter; deleting one leaves the rest."""
    points = _points()
    configs = {
        "adapter": AdapterConfig(num_classes=5, rank=8, head_dropout=0.0),
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
    shared = pointpeft.get_peft_model(_backbone(), configs["adapter"], adapter_name="adapter").eval()
    for name in ("dapt", "ssf", "vpt"):
        shared.add_adapter(name, configs[name])
    for name, single in alone.items():
        shared.set_adapter(name)
        own = dict(single.named_parameters())
        with torch.no_grad():
            for key, value in shared.named_parameters():
                if value.requires_grad:
                    value.copy_(own[key])
            shared.heads[name].load_state_dict(single.heads[name].state_dict())
        assert _trainable(shared) == _trainable(single), name
        with torch.no_grad():
            torch.testing.assert_close(shared(points), single(points), rtol=1e-6, atol=1e-6, msg=name)
    shared.set_adapter("adapter")
    with torch.no_grad():
        adapted = shared(points)
        with shared.disable_adapter():
            torch.testing.assert_close(shared(points), _backbone().eval()(points), rtol=0, atol=0)
        torch.testing.assert_close(shared(points), adapted, rtol=0, atol=0)
    shared.set_adapter("ssf")
    shared.delete_adapter("adapter")
    assert not _adapters(shared)
    assert all(not site.adapter for site in shared.modules() if isinstance(site, StreamAdapterSite))
    with torch.no_grad():
        torch.testing.assert_close(shared(points), alone["ssf"](points), rtol=1e-6, atol=1e-6)


def test_adapter_round_trip_and_loading_beside_another_method(tmp_path):
    points = _points()
    config = AdapterConfig(num_classes=5, rank=8, scale=0.25, dropout=0.05)
    model = pointpeft.get_peft_model(_backbone(), config).eval()
    _randomize(model, seed=6)
    model.save_adapter(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADAPTER" and saved["config"] == config.to_dict()
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    assert type(loaded.config) is AdapterConfig and loaded.config == config
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)
    other = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    other.load_adapter(str(tmp_path), "adapter")
    other.set_adapter("adapter")
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(points), model(points), rtol=0, atol=0)


def test_unload_gives_the_backbone_back():
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = pointpeft.get_peft_model(backbone, AdapterConfig(num_classes=5))
    _randomize(model, seed=2)
    plain = model.unload()
    assert plain.state_dict().keys() == before.keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())


# ------------------------------------------------------------------------------------ other backbones
def test_on_a_pre_norm_torch_encoder_sequence_first_equals_batch_first():
    from standins import TorchEncoderModel

    points, logits = _points(), []
    for batch_first in (True, False):
        torch.manual_seed(0)
        backbone = TorchEncoderModel(batch_first=batch_first, norm_first=True)
        torch.manual_seed(1)
        model = pointpeft.get_peft_model(
            backbone, AdapterConfig(num_classes=5, rank=4), layout="torch_transformer_encoder"
        ).eval()
        _randomize(model, seed=3)
        with torch.no_grad():
            logits.append(model(points))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-6)


def test_a_post_norm_encoder_is_refused_naming_norm_first():
    from standins import TorchEncoderModel

    backbone = TorchEncoderModel(batch_first=True, norm_first=False)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r"AdapterConfig needs pre-norm blocks.*norm_first=False"):
        pointpeft.get_peft_model(backbone, AdapterConfig(num_classes=5), layout="torch_transformer_encoder")
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in before.items())
    assert not any(type(m).__name__ == "DAPTBlock" for m in backbone.modules())  # left as it was


def test_a_layout_without_the_norm_before_the_ffn_is_refused():
    backbone = _backbone()
    layout = pointpeft.detect_layout(backbone)
    import dataclasses

    layout = dataclasses.replace(layout, block=dataclasses.replace(layout.block, norm2=None))
    with pytest.raises(
        ValueError,
        match=r"AdapterConfig reads the input of each block's norm before its FFN, but layout\.block\.norm2 is None",
    ):
        pointpeft.get_peft_model(backbone, AdapterConfig(num_classes=5), layout=layout)


@pytest.mark.parametrize("name", ["point_bert", "pointgpt"])
def test_on_the_other_pre_norm_builtins_it_starts_at_the_frozen_features_and_then_acts(name):
    from pointpeft.backbones import PointBERT, PointGPT

    make = {
        "point_bert": lambda: PointBERT(
            trans_dim=32, encoder_dims=24, depth=2, num_heads=4, num_group=8, group_size=4
        ),
        "pointgpt": lambda: PointGPT(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=4),
    }[name]
    points = _points()
    torch.manual_seed(0)
    model = pointpeft.get_peft_model(make(), AdapterConfig(num_classes=5, rank=4)).eval()
    torch.manual_seed(0)
    frozen = pointpeft.get_peft_model(make(), LinearProbeConfig(num_classes=5)).eval()  # the frozen features
    with torch.no_grad():
        expected = frozen.forward_features(points).tokens
        torch.testing.assert_close(model.forward_features(points).tokens, expected, rtol=0, atol=0)
        _randomize(model, seed=1)
        assert not torch.allclose(model.forward_features(points).tokens, expected, atol=1e-4)


class _ReadsNorm2Input(torch.nn.Module):
    """ReCon's ``norm2``, keeping its input (the patch stream after the attention residual) for the twin."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.norm, self.seen = norm, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return self.norm(x)


class _MlpPlusAdapter(torch.nn.Module):
    """``mlp(y) + A(x1)``: in eval mode (DropPath off) the patch stream's ``x1 + mlp(norm2(x1)) + A(x1)``."""

    def __init__(self, mlp: torch.nn.Module, adapter: torch.nn.Module, norm2: _ReadsNorm2Input) -> None:
        super().__init__()
        self.mlp, self.adapter = mlp, adapter
        object.__setattr__(self, "norm2", norm2)  # not registered twice

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(y) + self.adapter(self.norm2.seen)


def test_on_recon_the_adapter_reads_and_joins_the_patch_stream():
    """ReCon's block normalises its patch stream alone before its FFN (norm2 reads (B, G, C) of a
    (B, 3 + G, C) block output; the global tokens have their own norm and FFN): the adapter reads that
    stream and its output joins the patch tokens of the block's output. Twin: the frozen ReCon with each
    block's FFN returning ``mlp(norm2(x1)) + A(x1)`` (eval mode, DropPath off); the global tokens' stream
    is untouched."""
    import copy

    from pointpeft.backbones import ReCon

    torch.manual_seed(0)
    backbone = ReCon(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=4).eval()
    model = pointpeft.get_peft_model(copy.deepcopy(backbone), AdapterConfig(num_classes=5, rank=4)).eval()
    _randomize(model, seed=2)
    adapters = _adapters(model)
    twin = copy.deepcopy(backbone)
    for block, adapter in zip(twin.blocks.blocks, adapters, strict=True):
        recorder = _ReadsNorm2Input(block.norm2)
        block.norm2 = recorder
        block.mlp = _MlpPlusAdapter(block.mlp, copy.deepcopy(adapter), recorder)
    points = _points()
    with torch.no_grad():
        want = _final_tokens(twin, points, model.layout.final_norm)
        got = model.forward_features(points).tokens
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        frozen = _final_tokens(backbone, points, model.layout.final_norm)
        assert not torch.allclose(got[:, 3:], frozen[:, 3:], atol=1e-3)  # the adapters act on the patches


def test_a_block_whose_norm_reads_another_part_of_the_sequence_fails_with_a_clear_error():
    """A block whose norm before the FFN reads neither its whole stream nor all of it after the global
    tokens: nothing tells where the adapter's output would go, so the first forward says so."""
    from pointpeft.backbones.point_mae import Block

    class ReadsTheFirstTokens(Block):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            head = x[:, :4] + self.drop_path(self.mlp(self.norm2(x[:, :4])))
            return torch.cat((head, x[:, 4:]), dim=1)

    backbone = _backbone()
    for i, block in enumerate(backbone.blocks.blocks):
        odd = ReadsTheFirstTokens(backbone.trans_dim, block.attn.num_heads)
        odd.load_state_dict(block.state_dict())
        backbone.blocks.blocks[i] = odd
    model = pointpeft.get_peft_model(backbone, AdapterConfig(num_classes=5))
    with (
        torch.no_grad(),
        pytest.raises(RuntimeError, match=r"needs a pre-norm block whose layout\.block\.norm2"),
    ):
        model.eval()(_points())


# ------------------------------------------------------------------------------------------- config
def test_the_config_checks_its_fields_naming_them():
    with pytest.raises(ValueError, match=r"rank must be >= 1, got 0"):
        AdapterConfig(num_classes=5, rank=0)
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1e\+06\], got 0"):
        AdapterConfig(num_classes=5, scale=0.0)
    with pytest.raises(ValueError, match=r"scale must be a finite number"):
        AdapterConfig(num_classes=5, scale=float("nan"))
    with pytest.raises(TypeError, match=r"scale must be a number, got str '0.1'"):
        AdapterConfig(num_classes=5, scale="0.1")
    with pytest.raises(ValueError, match=r"dropout"):
        AdapterConfig(num_classes=5, dropout=1.0)
    with pytest.raises(ValueError, match=r"pool must not contain 'prompt'"):
        AdapterConfig(num_classes=5, pool=("cls", "prompt"))
    config = AdapterConfig(num_classes=5)
    assert (config.rank, config.scale, config.dropout, config.pool, config.train_cls) == (
        64,
        0.1,
        0.1,
        ("cls", "patch"),
        True,
    )
    with pytest.raises(TypeError, match=r"rank must be"):
        config.rank = 2.5
    assert AdapterConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(
        ValueError, match=r"AdapterConfig\.from_dict: the key\(s\) \['num_classes'\] are missing"
    ):
        AdapterConfig.from_dict({"rank": 4})


# ---------------------------------------------------------------------------------------------- CLI
def test_pointpeft_params_counts_the_adapter_on_point_mae(capsys):
    from pointpeft.cli import main

    base = ["params", "--config", str(CONFIGS / "scanobjectnn_objbg.yaml"), "dapt.pool=[cls,patch]"]
    assert main([*base, "method=adapter"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {
        line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1].replace(",", "")) for line in lines[:-1]
    }
    adapters = 12 * ((384 * 64 + 64) + (64 * 384 + 384))
    assert table == {"head": 267_535, "adapters": adapters, "tokens": 768}
    assert f"trainable params: {267_535 + adapters + 768:,d} ||" in lines[-1]
    assert main([*base, "method=adapter", "adapter.rank=32", "adapter.scale=0.5"]) == 0
    assert (
        f"trainable params: {267_535 + 12 * (2 * 384 * 32 + 32 + 384) + 768:,d} ||" in capsys.readouterr().out
    )


def test_the_adapter_section_is_checked():
    from pointpeft.train import build_model, load_config

    config = load_config(
        None, ["method=adapter", "adapter.rank=4", "adapter.scale=0.2", "adapter.dropout=0.0"]
    )
    assert config["adapter"] == {"rank": 4, "scale": 0.2, "dropout": 0.0}
    with pytest.raises(ValueError, match=r"adapter\.scale"):
        load_config(None, ["adapter.scale=0"])
    with pytest.raises(ValueError, match=r"adapter\.dropout"):
        load_config(None, ["adapter.dropout=1.5"])
    small = load_config(
        None,
        [
            "method=adapter",
            "dapt.pool=[cls,patch]",
            "adapter.rank=4",
            "model.trans_dim=32",
            "model.depth=1",
            "model.num_heads=4",
            "model.encoder_dims=32",
        ],
    )
    model = build_model(small, 5)
    assert model.config == AdapterConfig(num_classes=5, rank=4, scale=0.1, dropout=0.1)
