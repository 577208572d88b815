"""The built-in Point-BERT, ReCon and PointGPT encoders: the upstream fine-tuning models' parameter names
(the expected key sets are written here from the official model files), forward shapes, argument errors,
the upstream formulas that differ from Point-MAE (ReCon's two streams, PointGPT's causal GPT blocks, chain
order and sine embedding), DAPT on each, and float64 determinism."""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.upstream.point_bert_official import tiny_point_bert
from tests.upstream.pointgpt_official import tiny_pointgpt
from tests.upstream.recon_official import tiny_recon
from torch import nn

import pointpeft
from conftest import randomize_dapt
from pointpeft.backbones import BACKBONES, PointBERT, PointGPT, PointMAE, ReCon
from pointpeft.backbones.point_gpt import GPTBlock, GPTExtractor, SinePositionEmbedding, chain_order
from pointpeft.backbones.recon import ReConBlock

W = ("weight", "bias")
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _keys(prefix: str, names: tuple[str, ...]) -> set[str]:
    return {f"{prefix}.{n}" for n in names}


def _small_encoder_keys() -> set[str]:
    """Point-BERT ``dvae.Encoder`` / ReCon ``Encoder`` / PointGPT ``Encoder_small``: Conv1d, BN, ReLU, Conv1d
    twice."""
    keys: set[str] = set()
    for seq in ("encoder.first_conv", "encoder.second_conv"):
        keys |= _keys(f"{seq}.0", W) | _keys(f"{seq}.1", BN) | _keys(f"{seq}.3", W)
    return keys


def _large_encoder_keys() -> set[str]:
    """PointGPT ``Encoder_large``: (Conv1d, BN, ReLU) x2 + Conv1d, then Conv1d, BN, ReLU, Conv1d."""
    keys = _keys("encoder.first_conv.0", W) | _keys("encoder.first_conv.1", BN)
    keys |= _keys("encoder.first_conv.3", W) | _keys("encoder.first_conv.4", BN)
    keys |= _keys("encoder.first_conv.6", W)
    keys |= _keys("encoder.second_conv.0", W) | _keys("encoder.second_conv.1", BN)
    return keys | _keys("encoder.second_conv.3", W)


def _mae_block_keys(prefix: str) -> set[str]:
    """timm 0.4 block without qkv bias: norm1, attn.qkv (weight only), attn.proj, norm2, mlp.fc1, mlp.fc2."""
    keys = _keys(f"{prefix}.norm1", W) | _keys(f"{prefix}.norm2", W) | {f"{prefix}.attn.qkv.weight"}
    return (
        keys | _keys(f"{prefix}.attn.proj", W) | _keys(f"{prefix}.mlp.fc1", W) | _keys(f"{prefix}.mlp.fc2", W)
    )


def point_bert_keys(depth: int) -> set[str]:
    """Point-BERT ``PointTransformer`` minus ``cls_head_finetune``."""
    keys = _small_encoder_keys() | _keys("reduce_dim", W) | {"cls_token", "cls_pos"}
    keys |= _keys("pos_embed.0", W) | _keys("pos_embed.2", W) | _keys("norm", W)
    for i in range(depth):
        keys |= _mae_block_keys(f"blocks.blocks.{i}")
    return keys


def recon_keys(depth: int) -> set[str]:
    """ReCon ``PointTransformer`` (models/transformer.py) minus ``cls_head_finetune``: six token
    parameters and, per block, the patch stream and the ``*_contrast`` stream (q / kv cross-attention)."""
    keys = _small_encoder_keys() | {"cls_token", "cls_pos", "img_token", "text_token", "img_pos", "text_pos"}
    keys |= _keys("pos_embed.0", W) | _keys("pos_embed.2", W) | _keys("norm", W)
    for i in range(depth):
        p = f"blocks.blocks.{i}"
        keys |= _mae_block_keys(p)
        keys |= _keys(f"{p}.norm1_contrast", W) | _keys(f"{p}.norm2_contrast", W)
        keys |= _keys(f"{p}.mlp_contrast.fc1", W) | _keys(f"{p}.mlp_contrast.fc2", W)
        keys |= {f"{p}.attn_contrast.q.weight", f"{p}.attn_contrast.kv.weight"}
        keys |= _keys(f"{p}.attn_contrast.proj", W)
    return keys


def point_gpt_keys(depth: int, large: bool = False) -> set[str]:
    """PointGPT ``PointTransformer`` on its feature path: encoder, ``cls_token``, ``cls_pos``, ``sos_pos``
    and the extractor ``blocks`` (``sos``, ``layers`` of nn.MultiheadAttention blocks, ``ln_f``)."""
    keys = (_large_encoder_keys() if large else _small_encoder_keys()) | {"cls_token", "cls_pos", "sos_pos"}
    keys |= {"blocks.sos"} | _keys("blocks.ln_f", W)
    for i in range(depth):
        p = f"blocks.layers.{i}"
        keys |= _keys(f"{p}.ln_1", W) | _keys(f"{p}.ln_2", W)
        keys |= {f"{p}.attn.in_proj_weight", f"{p}.attn.in_proj_bias"} | _keys(f"{p}.attn.out_proj", W)
        keys |= _keys(f"{p}.mlp.0", W) | _keys(f"{p}.mlp.2", W)
    return keys


def _point_bert() -> nn.Module:
    return PointBERT(trans_dim=32, encoder_dims=24, depth=2, num_heads=4, num_group=8, group_size=4)


def _recon() -> nn.Module:
    return ReCon(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=4)


def _point_gpt() -> nn.Module:
    return PointGPT(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=4)


TINY: dict[str, Callable[[], nn.Module]] = {
    "point_bert": _point_bert,
    "recon": _recon,
    "pointgpt": _point_gpt,
}
GLOBAL_TOKENS = {"point_bert": 1, "recon": 3, "pointgpt": 2}


def _cloud(batch: int = 2, n: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------- parameter names
@functools.cache
def PUBLISHED(model: type[nn.Module]) -> nn.Module:  # noqa: N802
    """The model at its published defaults, built once."""
    return model()


def test_registry_names_the_four_backbones() -> None:
    assert BACKBONES == {
        "point_mae": PointMAE,
        "point_bert": PointBERT,
        "recon": ReCon,
        "pointgpt": PointGPT,
    }


@pytest.mark.parametrize(
    ("model", "expected", "count"),
    [
        (PointBERT, point_bert_keys(12), 160),
        (ReCon, recon_keys(12), 306),
        (PointGPT, point_gpt_keys(12), 168),
    ],
    ids=["point_bert", "recon", "pointgpt"],
)
def test_published_config_has_the_upstream_backbone_keys(
    model: type[nn.Module], expected: set, count: int
) -> None:
    state = PUBLISHED(model).state_dict()
    assert set(state) == expected
    assert len(state) == count


def test_published_shapes() -> None:
    bert, recon, gpt = PUBLISHED(PointBERT), PUBLISHED(ReCon), PUBLISHED(PointGPT)
    assert bert.reduce_dim.weight.shape == (384, 256)
    assert bert.encoder.second_conv[3].weight.shape == (256, 512, 1)
    assert recon.encoder.second_conv[3].weight.shape == (384, 512, 1)
    assert recon.blocks.blocks[0].attn_contrast.kv.weight.shape == (768, 384)
    assert recon.img_pos.shape == (1, 1, 384)
    assert gpt.blocks.sos.shape == (384,)
    assert gpt.blocks.layers[0].attn.in_proj_weight.shape == (1152, 384)
    assert gpt.blocks.layers[0].mlp[0].weight.shape == (1536, 384)
    assert gpt.sos_pos.shape == (1, 1, 384)
    assert (bert.num_group, bert.group_size, recon.num_group, gpt.num_group) == (64, 32, 128, 128)


def test_point_gpt_large_encoder_keys() -> None:
    model = PointGPT(trans_dim=768, num_heads=12, depth=1, patch_encoder="large")
    assert set(model.state_dict()) == point_gpt_keys(1, large=True)
    assert model.encoder.second_conv[0].weight.shape == (2048, 2048, 1)


def test_point_gpt_leaves_out_the_modules_off_its_feature_path() -> None:
    """A pre-trained PointGPT checkpoint, after its loader strips ``module.`` and ``GPT_Transformer.``,
    loads with only cls_token / cls_pos missing (created at fine-tuning) and only the unused modules
    unexpected."""
    model = _point_gpt()
    upstream = {
        f"module.GPT_Transformer.{k}": v
        for k, v in model.state_dict().items()
        if k not in ("cls_token", "cls_pos")
    }
    extra = [
        "norm.weight",
        "norm.bias",
        "blocks.increase_dim.0.weight",
        "generator_blocks.layers.0.ln_1.weight",
    ]
    upstream.update({f"module.GPT_Transformer.{k}": torch.zeros(1) for k in extra})
    stripped = {k.replace("module.", "").removeprefix("GPT_Transformer."): v for k, v in upstream.items()}
    result = model.load_state_dict(stripped, strict=False)
    assert sorted(result.missing_keys) == ["cls_pos", "cls_token"]
    assert sorted(result.unexpected_keys) == sorted(extra)
    assert not any(isinstance(m, nn.LayerNorm) for n, m in model.named_children())  # no unused top norm


@pytest.mark.parametrize(
    ("upstream", "ours", "final"),
    [
        (tiny_point_bert, lambda: PointBERT(48, 2, 3, 8, 16, encoder_dims=32), "norm"),
        (tiny_recon, lambda: ReCon(48, 2, 3, 8, 16), "norm"),
        (tiny_pointgpt, lambda: PointGPT(48, 2, 3, 8, 16), "blocks.ln_f"),
    ],
    ids=["point_bert", "recon", "pointgpt"],
)
def test_upstream_double_loads_and_gives_the_same_tokens(
    upstream: Callable[[], nn.Module], ours: Callable[[], nn.Module], final: str
) -> None:
    """The test doubles of the upstream fine-tuning models (tests/upstream): their state dict loads into the
    built-in with no missing key (only their heads and unused modules left over), and the built-in's tokens
    equal what the double's final norm returns, in float64."""
    torch.manual_seed(3)
    twin, model = upstream().double().eval(), ours().double().eval()
    result = model.load_state_dict(twin.state_dict(), strict=False)
    assert result.missing_keys == []
    left = {k.split(".")[1] if k.startswith("blocks.") else k.split(".")[0] for k in result.unexpected_keys}
    assert left <= {"cls_head_finetune", "cls_norm", "increase_dim", "generator_blocks", "norm"}
    seen: list[torch.Tensor] = []
    twin.get_submodule(final).register_forward_hook(lambda m, i, out: seen.append(out))
    points = _cloud(n=96, dtype=torch.float64)
    with torch.no_grad():
        twin(points)
        tokens = model(points)
    expected = seen[0].transpose(0, 1) if isinstance(model, PointGPT) else seen[0]
    torch.testing.assert_close(tokens, expected, rtol=1e-10, atol=1e-10)


# -------------------------------------------------------------------------------------------- forward shapes
@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(TINY)),
    batch=st.integers(1, 3),
    groups=st.integers(1, 7),
    size=st.integers(1, 5),
    extra=st.integers(0, 6),
    heads=st.sampled_from([1, 2, 4]),
    depth=st.integers(1, 2),
)
def test_forward_shapes(
    name: str, batch: int, groups: int, size: int, extra: int, heads: int, depth: int
) -> None:
    dim = 16
    common = dict(trans_dim=dim, depth=depth, num_heads=heads, num_group=groups, group_size=size)
    model = {
        "point_bert": lambda: PointBERT(encoder_dims=8, **common),
        "recon": lambda: ReCon(**common),
        "pointgpt": lambda: PointGPT(**common),
    }[name]()
    n = max(groups, size) + extra
    out = model.eval()(_cloud(batch, n))
    assert out.shape == (batch, GLOBAL_TOKENS[name] + groups, dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TINY))
def test_too_few_points(name: str) -> None:
    with pytest.raises(ValueError, match="points"):
        TINY[name]()(_cloud(1, 7))


@pytest.mark.parametrize("name", sorted(TINY))
def test_wrong_dtype(name: str) -> None:
    with pytest.raises(TypeError, match="points"):
        TINY[name]()(_cloud(1, 16, dtype=torch.float64))


# ----------------------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: PointBERT(trans_dim=32, encoder_dims=32, num_heads=4), "encoder_dims"),
        (lambda: PointBERT(depth=0), "depth"),
        (lambda: PointBERT(num_group=-1), "num_group"),
        (lambda: ReCon(trans_dim=30, num_heads=4), "trans_dim"),
        (lambda: ReCon(group_size=0), "group_size"),
        (lambda: ReCon(drop_path_rate=1.0), "drop_path_rate"),
        (lambda: PointGPT(patch_encoder="medium"), "patch_encoder"),  # type: ignore[arg-type]
        (lambda: PointGPT(trans_dim=4, num_heads=1), "trans_dim"),
        (lambda: PointGPT(trans_dim=30, num_heads=4), "trans_dim"),
        (lambda: PointGPT(num_heads=0), "num_heads"),
    ],
)
def test_bad_arguments_name_the_argument(build: Callable[[], nn.Module], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        build()


def test_bad_argument_types() -> None:
    with pytest.raises(TypeError, match="depth"):
        ReCon(depth=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="trans_dim"):
        PointGPT(trans_dim=True)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ upstream formulas
def test_point_bert_is_point_mae_with_reduce_dim() -> None:
    bert = _point_bert().eval()
    mae = PointMAE(trans_dim=32, encoder_dims=24, depth=2, num_heads=4, num_group=8, group_size=4).eval()
    mae.load_state_dict(bert.state_dict())
    points = _cloud()
    assert torch.equal(bert(points), mae(points))


def test_recon_patch_stream_ignores_the_global_tokens() -> None:
    """Upstream: the patches attend only to patches; each global token cross-attends to the patches alone."""
    model = _recon().eval()
    points = _cloud()
    before = model(points)
    with torch.no_grad():
        model.img_token.add_(torch.randn_like(model.img_token))
        model.text_pos.add_(torch.randn_like(model.text_pos))
    after = model(points)
    assert torch.equal(before[:, 3:], after[:, 3:])
    assert not torch.allclose(before[:, 1:3], after[:, 1:3])
    assert torch.equal(before[:, 0], after[:, 0])  # each global token reads the patches on its own
    with torch.no_grad():
        model.pos_embed[2].bias.add_(torch.randn_like(model.pos_embed[2].bias))
    assert not torch.allclose(after[:, 0], model(points)[:, 0])  # CLS reads the patches


def _recon_block_reference(block: ReConBlock, x: torch.Tensor) -> torch.Tensor:
    """ReCon's ``Block.forward`` with ``with_contrast`` and ``finetune`` (models/transformer.py), written
    with functional ops on the block's weights."""
    dim = x.shape[-1]
    heads = block.attn.num_heads

    def ln(mod: nn.LayerNorm, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(t, (dim,), mod.weight, mod.bias, mod.eps)

    def mlp(mod: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(
            nn.functional.gelu(nn.functional.linear(t, mod.fc1.weight, mod.fc1.bias)),
            mod.fc2.weight,
            mod.fc2.bias,
        )

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        split = [t.reshape(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2) for t in (q, k, v)]
        w = (split[0] @ split[1].transpose(-2, -1) / math.sqrt(dim // heads)).softmax(-1)
        return (w @ split[2]).transpose(1, 2).reshape(q.shape)

    cls, vis = ln(block.norm1_contrast, x[:, :3]), ln(block.norm1, x[:, 3:])
    q = nn.functional.linear(cls, block.attn_contrast.q.weight)
    k, v = nn.functional.linear(vis, block.attn_contrast.kv.weight).chunk(2, dim=-1)
    cross = nn.functional.linear(
        attend(q, k, v), block.attn_contrast.proj.weight, block.attn_contrast.proj.bias
    )
    qs, ks, vs = nn.functional.linear(vis, block.attn.qkv.weight).chunk(3, dim=-1)
    own = nn.functional.linear(attend(qs, ks, vs), block.attn.proj.weight, block.attn.proj.bias)
    cls, vis = ln(block.norm2_contrast, cls + cross), ln(block.norm2, vis + own)
    return torch.cat((cls + mlp(block.mlp_contrast, cls), vis + mlp(block.mlp, vis)), dim=1)


@settings(max_examples=8, deadline=None)
@given(patches=st.integers(1, 6), batch=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_recon_block_matches_the_upstream_formula(patches: int, batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    block = ReConBlock(16, 4).double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(batch, 3 + patches, 16, dtype=torch.float64)
    torch.testing.assert_close(block(x), _recon_block_reference(block, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block", [ReConBlock(16, 4), GPTBlock(16, 4)], ids=["recon", "pointgpt"])
def test_residual_is_added_to_the_normalised_input(block: nn.Module) -> None:
    """Upstream adds the attention residual to norm1(x), not to x (unlike Point-MAE's pre-norm block): the
    output is unchanged when a per-token constant is added to every channel of the input."""
    block = block.double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    shift = torch.randn(2, 6, 1, dtype=torch.float64) * 5
    torch.testing.assert_close(block(x + shift), block(x), rtol=1e-10, atol=1e-10)


def test_point_gpt_extractor_is_causal_with_the_start_token_first() -> None:
    extractor = GPTExtractor(16, 4, 2).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    pos = torch.randn(2, 6, 16, dtype=torch.float64)
    mask = torch.ones(6, 6, dtype=torch.bool).triu(1)
    out = extractor(x, pos, mask)
    assert out.shape == (2, 6, 16)
    changed = x.clone()
    changed[:, 3] += torch.randn(
        2, 16, dtype=torch.float64
    )  # input token 3 is sequence position 4 (after sos)
    out2 = extractor(changed, pos, mask)
    assert torch.equal(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:])
    other = extractor(torch.randn(2, 5, 16, dtype=torch.float64), pos, mask)
    assert torch.equal(out[:, 0], other[:, 0])  # the start token sees only itself


def test_point_gpt_model_is_causal() -> None:
    """Under upstream's causal mask the start token and CLS (positions 0 and 1) see only each other, so
    their outputs do not depend on the points; the patches' do."""
    model = _point_gpt().eval()
    first, second = model(_cloud(seed=1)), model(_cloud(seed=2))
    torch.testing.assert_close(first[:, :2], second[:, :2], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(first[:, 2:], second[:, 2:])


def test_recon_global_stream_is_not_detached_at_fine_tuning() -> None:
    """Upstream's fine-tuning blocks (finetune=True) let the gradient of the global tokens reach the
    patches (pre-training detaches them)."""
    model = _recon().train()
    cls = model(_cloud())[:, 0]
    (cls * torch.randn_like(cls)).sum().backward()  # not a plain sum: a LayerNorm output sums to its bias
    grad = model.blocks.blocks[0].attn.qkv.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_point_gpt_positions_follow_upstream_order() -> None:
    """Upstream concatenates [cls_pos, sos_pos, pos(centers)] onto [sos, cls, patches]: the start token gets
    cls_pos. So the start-token output (it sees only itself) depends on cls_pos and not on sos_pos."""
    model = _point_gpt().eval()
    points = _cloud()
    base = model(points)
    with torch.no_grad():
        model.sos_pos.add_(torch.randn_like(model.sos_pos))
    moved_sos = model(points)
    assert torch.equal(base[:, 0], moved_sos[:, 0])
    assert not torch.allclose(base[:, 1], moved_sos[:, 1])
    with torch.no_grad():
        model.cls_pos.add_(torch.randn_like(model.cls_pos))
    assert not torch.allclose(moved_sos[:, 0], model(points)[:, 0])


def _chain_reference(centers: torch.Tensor) -> list[list[int]]:
    orders = []
    for cloud in centers.tolist():
        left, order = set(range(1, len(cloud))), [0]
        while left:
            last = cloud[order[-1]]
            order.append(min(left, key=lambda j: (math.dist(last, cloud[j]), j)))
            left.remove(order[-1])
        orders.append(order)
    return orders


def test_chain_order_on_a_line() -> None:
    xs = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    centers = torch.stack((xs, torch.zeros(6), torch.zeros(6)), dim=-1).unsqueeze(0)
    assert chain_order(centers).tolist() == [[0, 2, 4, 5, 3, 1]]


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 3), groups=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_chain_order_matches_a_reference(batch: int, groups: int, seed: int) -> None:
    centers = torch.randn(
        batch, groups, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    assert chain_order(centers).tolist() == _chain_reference(centers)


def test_point_gpt_patches_come_in_chain_order() -> None:
    model = _point_gpt()
    neighborhood, centers = model.group_divider(_cloud())
    assert torch.equal(chain_order(centers), torch.arange(8).expand(2, 8))
    plain_n, plain_c = pointpeft.ops.group(_cloud(), 8, 4)
    order = chain_order(plain_c)
    assert torch.equal(centers, plain_c[torch.arange(2)[:, None], order])
    assert torch.equal(neighborhood, plain_n[torch.arange(2)[:, None], order])


def test_sine_embedding() -> None:
    emb = SinePositionEmbedding(14, 3, temperature=1.0)  # 4 features per coordinate, 2 padding zeros
    xyz = torch.tensor([[0.1, -0.25, 0.3]], dtype=torch.float64)
    out = emb(xyz)
    expected = []
    for u in xyz[0].tolist():
        a = 2 * math.pi * u
        expected += [math.sin(a), math.cos(a), math.sin(a), math.cos(a)]
    torch.testing.assert_close(out[0], torch.tensor(expected + [0.0, 0.0], dtype=torch.float64))
    hot = SinePositionEmbedding(8, 1, temperature=100.0)  # frequencies 100 ** (2 * (i // 2) / 8)
    u = 0.2
    want = [f(2 * math.pi * u / 100 ** (2 * (i // 2) / 8)) for i, f in enumerate([math.sin, math.cos] * 4)]
    torch.testing.assert_close(
        hot(torch.tensor([[u]], dtype=torch.float64))[0], torch.tensor(want, dtype=torch.float64)
    )


# ------------------------------------------------------------------------------------------------- DAPT
EXPECTED_LAYOUT = {
    "point_bert": dict(
        patch_encoder="reduce_dim",
        final_norm="norm",
        num_global_tokens=1,
        cls_index=0,
        seq_first=False,
        first="blocks.blocks.0",
        preset="point_bert",
    ),
    "recon": dict(
        patch_encoder="encoder",
        final_norm="norm",
        num_global_tokens=3,
        cls_index=0,
        seq_first=False,
        first="blocks.blocks.0",
        preset="recon",
    ),
    "pointgpt": dict(
        patch_encoder="encoder",
        final_norm="blocks.ln_f",
        num_global_tokens=2,
        cls_index=1,
        seq_first=True,
        first="blocks.layers.0",
        preset="pointgpt",
    ),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_detected_layout(name: str) -> None:
    model = TINY[name]()
    layout = pointpeft.detect_layout(model)
    want = EXPECTED_LAYOUT[name]
    assert layout.blocks == (want["first"], want["first"][:-1] + "1")
    for key in ("patch_encoder", "final_norm", "num_global_tokens", "cls_index", "seq_first"):
        assert getattr(layout, key) == want[key], key
    assert layout.trainable_tokens == ("cls_token", "cls_pos")
    preset = pointpeft.preset_layout(str(want["preset"]), model)
    assert preset == type(layout)(**{**layout.to_dict(), "block": preset.block, "preset": preset.preset})
    assert preset.block == layout.block


@pytest.mark.parametrize("name", sorted(TINY))
def test_dapt_wraps_each(name: str) -> None:
    torch.manual_seed(0)
    model = pointpeft.wrap_with_dapt(TINY[name](), pointpeft.DAPTConfig(num_classes=15))
    randomize_dapt(model)
    model.train()
    logits = model(_cloud())
    assert logits.shape == (2, 15)
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    trainable, total = model.get_nb_trainable_parameters()
    assert 0 < trainable < total
    named = dict(model.named_parameters())
    for key, p in named.items():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), key
        else:
            assert p.grad is None, key
    assert {"base_model.cls_token", "base_model.cls_pos"} <= {k for k, p in named.items() if p.requires_grad}
    report = model.execution_report()
    assert [r.block for r in report] == list(model.layout.blocks)
    assert {r.execution for r in report} == {"fused"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.execution = "plain"
        model.eval()
        plain = model(_cloud())
        model.execution = "fused"
        torch.testing.assert_close(model(_cloud()), plain)


# ---------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", sorted(TINY))
def test_float64_eval_is_deterministic(name: str) -> None:
    torch.manual_seed(1)
    model = TINY[name]().double().eval()
    twin = copy.deepcopy(model)
    points = _cloud(dtype=torch.float64)
    first = model(points)
    assert first.dtype == torch.float64
    assert torch.equal(first, model(points))
    assert torch.equal(first, twin(points.clone()))
