"""PointGST (``pointpeft.PointGSTConfig``) under ``pointpeft.get_peft_model``: the graph bases against a slow
twin written with Python loops (distances, z-order keys by bit strings, Laplacian) and their properties (U
orthogonal, U diag(λ) Uᵀ = L, the local chunks, the inverse permutation), float32 bases under bf16 autocast;
the forward written out in plain torch on the frozen backbone's modules (eval, and train in float64 with
DropPath and gradients), identity at init, the trainable set and its count (622,831 on Point-MAE for 15
classes), gradients only where they belong, every execution mode and torch.compile alike, adapters of other
methods beside it, the adapter round trip, config and input checks, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import pointpeft
from conftest import SMALL, randomize_dapt
from pointpeft import AdapterConfig, DAPTConfig, LinearProbeConfig, PointGSTConfig, SSFConfig
from pointpeft.backbones import PointMAE
from pointpeft.dapt import GroupingSite, StreamAdapterSite
from pointpeft.methods.pointgst import (
    PCSA,
    graph_bases,
    morton_keys,
    normalized_laplacian,
    spectral_basis,
)

C, DEPTH, G = SMALL["trans_dim"], SMALL["depth"], SMALL["num_group"]
LOCAL = 8  # SMALL's G = 16: two local graphs
CONFIGS = Path(__file__).parents[1] / "configs"


def _backbone(seed: int = 0, **kwargs) -> PointMAE:
    torch.manual_seed(seed)
    return PointMAE(**{**SMALL, **kwargs})


def _points(seed: int = 1, batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 96, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _config(**kwargs) -> PointGSTConfig:
    return PointGSTConfig(**{"num_classes": 5, "rank": 6, "local_size": LOCAL, "head_dropout": 0.0, **kwargs})


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _adapters(model: torch.nn.Module) -> list[PCSA]:
    return [m for m in model.modules() if isinstance(m, PCSA)]


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero values in every tensor of every PCSA (fresh, up and adapt1 are zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in _adapters(model):
            for p in adapter.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _weights(model: pointpeft.DAPTModel, grad: bool = False) -> list[dict[str, torch.Tensor]]:
    adapters = _adapters(model)
    assert len(adapters) == len(model.layout.blocks)
    return [{k: v.detach().clone().requires_grad_(grad) for k, v in a.named_parameters()} for a in adapters]


# ----------------------------------------------------------------------------------- the slow twins
def _slow_key(point: list[float]) -> int:
    """The z-order key of one centre by bit strings: the low 16 bits of trunc(100 y), trunc(100 x),
    trunc(100 z) (two's complement), interleaved y, x, z from the most significant bit."""
    y, x, z = (math.trunc(point[i]) & 0xFFFF for i in (1, 0, 2))
    bits = [format(v, "016b") for v in (y, x, z)]
    return int("".join(bits[0][i] + bits[1][i] + bits[2][i] for i in range(16)), 2)


def _slow_laplacian(clouds: list[list[list[float]]]) -> list[list[list[float]]]:
    """The normalised Laplacian of each cloud by loops in Python floats (d_min over every cloud)."""
    dist = [[[math.dist(p, q) for q in cloud] for p in cloud] for cloud in clouds]
    d_min = min((d for rows in dist for row in rows for d in row if d > 0), default=1.0)
    out = []
    for rows in dist:
        n = len(rows)
        adj = [[1.0 / max(rows[i][j] / d_min + (i == j), 1.0) for j in range(n)] for i in range(n)]
        deg = [sum(row) + 1e-6 for row in adj]
        out.append(
            [
                [(1.0 if i == j else 0.0) - adj[i][j] / math.sqrt(deg[i] * deg[j]) for j in range(n)]
                for i in range(n)
            ]
        )
    return out


def _slow_order(centers: torch.Tensor) -> list[list[int]]:
    scaled = (centers * 100).tolist()  # the product in the centres' dtype, as the library takes it
    return [sorted(range(len(c)), key=lambda i, c=c: (_slow_key(c[i]), i)) for c in scaled]


def _clouds(batch: int, g: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, g, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


# ------------------------------------------------------------------------------------- the graph bases
@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), g=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_the_laplacian_matches_the_loops_and_its_basis_diagonalises_it(batch, g, seed):
    centers = _clouds(batch, g, seed)
    laplacian = normalized_laplacian(centers)
    torch.testing.assert_close(
        laplacian,
        torch.tensor(_slow_laplacian(centers.tolist()), dtype=torch.float64),
        rtol=1e-12,
        atol=1e-12,
    )
    values, basis = torch.linalg.eigh(laplacian)
    torch.testing.assert_close(spectral_basis(centers), basis, rtol=0, atol=0)
    eye = torch.eye(g, dtype=torch.float64).expand(batch, g, g)
    torch.testing.assert_close(basis.transpose(-2, -1) @ basis, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        basis @ torch.diag_embed(values) @ basis.transpose(-2, -1), laplacian, atol=1e-12, rtol=0
    )
    assert bool((values[:, 1:] >= values[:, :-1]).all())  # ascending
    assert bool((values > -1e-9).all() and (values < 2 + 1e-9).all())  # a normalised Laplacian's spectrum


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    chunks=st.integers(1, 3),
    size=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    spread=st.sampled_from([1.0, 300.0]),  # 300: coordinates past 2**15 / 100, whose keys wrap
)
def test_the_local_bases_are_those_of_the_z_order_chunks(batch, chunks, size, seed, spread):
    g = chunks * size
    centers = _clouds(batch, g, seed) * spread
    keys = morton_keys(centers)
    scaled = (centers * 100).tolist()
    assert keys.tolist() == [[_slow_key(p) for p in cloud] for cloud in scaled]
    bases = graph_bases(centers, size)
    order = _slow_order(centers)
    assert bases.order.tolist() == order
    assert bases.order.dtype == bases.inverse.dtype == torch.int64
    rows = torch.arange(g).expand(batch, g)
    assert torch.equal(torch.gather(bases.order, 1, bases.inverse), rows)  # inverse ∘ order = identity
    assert torch.equal(torch.gather(bases.inverse, 1, bases.order), rows)
    assert bases.global_basis.shape == (batch, g, g)
    assert bases.local_basis.shape == (batch, chunks, size, size)
    torch.testing.assert_close(bases.global_basis, spectral_basis(centers), rtol=0, atol=0)
    in_order = torch.stack([centers[b, order[b]] for b in range(batch)])
    chunked = in_order.reshape(batch * chunks, size, 3)  # d_min over every chunk of every cloud
    laplacian = torch.tensor(_slow_laplacian(chunked.tolist()), dtype=torch.float64)
    local = bases.local_basis.reshape(batch * chunks, size, size)
    values = torch.linalg.eigvalsh(laplacian)
    torch.testing.assert_close(
        local @ torch.diag_embed(values) @ local.transpose(-2, -1), laplacian, atol=1e-10, rtol=0
    )


def test_d_min_is_one_number_for_the_whole_batch():
    """As the released code: the smallest positive distance over the batch, so one cloud's basis depends on
    the others (here, a second cloud with closer centres changes the first's Laplacian)."""
    first = _clouds(1, 6, 0)
    alone = normalized_laplacian(first)
    beside = normalized_laplacian(torch.cat((first, first * 1e-3)))
    assert not torch.allclose(alone[0], beside[0], atol=1e-6)
    torch.testing.assert_close(normalized_laplacian(torch.cat((first, first)))[0], alone[0], rtol=0, atol=0)


def test_equal_keys_keep_their_patch_order():
    centers = torch.tensor([[[0.5, 0.5, 0.5], [0.1, 0.1, 0.1], [0.501, 0.502, 0.503], [0.1, 0.1, 0.1]]])
    order = graph_bases(centers, 2).order
    assert order.tolist() == [[1, 3, 0, 2]]  # 1 and 3 coincide, 0 and 2 share trunc(100 c)


def test_the_bases_are_float32_without_gradient_under_bf16_autocast():
    centers = _clouds(2, 16, 3).float().requires_grad_(True)
    expected = graph_bases(centers, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = graph_bases(centers, 8)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and not a.requires_grad
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert got.global_basis.dtype == torch.float32
    half = graph_bases(centers.detach().bfloat16(), 8)
    assert half.global_basis.dtype == torch.float32  # bf16 centres: computed in float32
    assert graph_bases(centers.detach().double(), 8).global_basis.dtype == torch.float64


def test_the_bases_check_their_input_naming_it():
    with pytest.raises(
        ValueError, match=r"local_size must divide the number of patches G, got local_size = 5 and G = 16"
    ):
        graph_bases(_clouds(1, 16, 0), 5)
    with pytest.raises(
        ValueError, match=r"floating \(B, G, 3\) tensor, got torch\.float64 of shape \(16, 3\)"
    ):
        graph_bases(_clouds(1, 16, 0)[0], 8)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    leading=st.integers(0, 2),
    chunks=st.integers(1, 3),
    size=st.integers(1, 5),
    rank=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_with_adapt1_at_zero_both_branches_give_the_patches_back(batch, leading, chunks, size, rank, seed):
    """With the shared W_a, b_a zero each branch is U (Uᵀ-round trip) of the identity, so the patch rows
    become 2 S + SiLU(S) before the up-projection and the leading rows SiLU(H), whatever the orthogonal bases
    and permutation."""
    g, dim = chunks * size, 7
    gen = torch.Generator().manual_seed(seed)
    adapter = PCSA(dim, rank, scale=0.5).double()
    with torch.no_grad():
        adapter.up.weight.normal_(generator=gen)
        adapter.up.bias.normal_(generator=gen)
    basis = torch.linalg.qr(torch.randn(batch, g, g, generator=gen, dtype=torch.float64)).Q
    local = torch.linalg.qr(torch.randn(batch, chunks, size, size, generator=gen, dtype=torch.float64)).Q
    order = torch.stack([torch.randperm(g, generator=gen) for _ in range(batch)])
    bases = (basis, local, order, torch.argsort(order, dim=1))
    x = torch.randn(batch, leading + g, dim, generator=gen, dtype=torch.float64)
    h = F.linear(x, adapter.down.weight, adapter.down.bias)
    patches = 2 * h[:, leading:] + F.silu(h[:, leading:])
    expected = 0.5 * adapter.up(torch.cat((F.silu(h[:, :leading]), patches), dim=1))
    with torch.no_grad():
        torch.testing.assert_close(adapter(x, bases), expected, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------- what it computes
def _twin_bases(centers: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """The bases from the slow twins: the loops' Laplacians, eigh, and the bit-string z-order."""
    batch, g, _ = centers.shape
    work = centers.detach().double()
    lap = torch.tensor(_slow_laplacian(work.tolist()), dtype=torch.float64)
    order = _slow_order(centers.detach())
    chunked = torch.stack([work[b, order[b]] for b in range(batch)]).reshape(-1, size, 3)
    local = torch.tensor(_slow_laplacian(chunked.tolist()), dtype=torch.float64)
    # eigh in the centres' dtype, as the library: eigenvectors are defined up to sign, and the PCSA is not
    # sign-invariant (its LayerNorms and SiLU), so the twin must hand eigh the same matrices up to rounding
    basis = torch.linalg.eigh(lap.to(centers.dtype)).eigenvectors
    local_basis = torch.linalg.eigh(local.to(centers.dtype)).eigenvectors.reshape(batch, -1, size, size)
    return basis, local_basis, torch.tensor(order)


def _pcsa_twin(z, w, basis, local_basis, order):
    """PCSA on the residual stream z (B, L, C), from the block's weights, written out."""
    batch, g = order.shape
    rank = w["down.weight"].shape[0]
    h = z @ w["down.weight"].T + w["down.bias"]
    s = h[:, -g:].clone()
    h = h * torch.sigmoid(h)

    def branch(coeffs, name):
        normed = F.layer_norm(coeffs, (rank,), w[f"{name}.weight"], w[f"{name}.bias"])
        return coeffs + F.silu(normed @ w["adapt1.weight"].T + w["adapt1.bias"])

    global_part = basis.transpose(1, 2) @ branch(basis @ s, "norm_global")
    sorted_rows = torch.stack([s[b, order[b]] for b in range(batch)]).reshape(local_basis.shape[:3] + (rank,))
    local = (local_basis.transpose(-1, -2) @ branch(local_basis @ sorted_rows, "norm_local")).reshape(
        batch, g, rank
    )
    back = torch.empty_like(local)
    for b in range(batch):
        back[b, order[b]] = local[b]  # row k of the z-order goes back to patch order[b, k]
    patches = global_part + back + h[:, -g:]
    h = torch.cat((h[:, :-g], patches), dim=1)
    return h @ w["up.weight"].T + w["up.bias"]


def _pointgst_twin(backbone, weights, points, size, scale=1.0, library_bases=False):
    """PointGST on a plain (never wrapped) Point-MAE from its frozen modules: in each block
    ``x1 = x + DropPath(attn(norm1(x)))``, ``x = x1 + DropPath(mlp(norm2(x1))) + scale · PCSA(x1)``.
    ``library_bases``: the bases of :func:`graph_bases` instead of the slow twins' (for float32)."""
    neighborhood, centers = backbone.group_divider(points)
    if library_bases:
        basis, local_basis, order, _ = graph_bases(centers, size)
    else:
        basis, local_basis, order = _twin_bases(centers, size)
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
        t = scale * _pcsa_twin(x1, w, basis, local_basis, order)
        x = x1 + block.drop_path(block.mlp(block.norm2(x1))) + t
    return backbone.norm(x)


@pytest.mark.parametrize("pos_mode", ["every_block", "once"])
@pytest.mark.parametrize("local_size", [4, 8, 16])
def test_the_wrapped_model_computes_pointgst_written_out_in_torch(pos_mode, local_size):
    """Eval mode, in float64: the eigenvectors of nearly repeated eigenvalues move by far more than the
    rounding of their matrix (and a sign may flip), so float32 bases of the twin's own Laplacian differ from
    the library's by ~1e-4 in the output; in float64 they agree to ~1e-12."""
    points = _points().double()
    config = _config(local_size=local_size, scale=0.7)
    model = pointpeft.get_peft_model(_backbone(pos_mode=pos_mode).double(), config).eval()
    _randomize(model, seed=3)
    twin = _backbone(pos_mode=pos_mode).double().eval()
    with torch.no_grad():
        expected = _pointgst_twin(twin, _weights(model), points, local_size, scale=0.7)
        got = model.forward_features(points).tokens
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(model(points), model.head(expected, None), rtol=1e-9, atol=1e-10)
        frozen = pointpeft.get_peft_model(_backbone(pos_mode=pos_mode), LinearProbeConfig(num_classes=5))
        frozen_tokens = frozen.double().eval().forward_features(points).tokens
        assert not torch.allclose(got, frozen_tokens, atol=1e-3)


def test_in_float32_it_is_the_written_out_forward_on_the_librarys_bases():
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), _config(scale=0.7)).eval()
    _randomize(model, seed=3)
    twin = _backbone().eval()
    with torch.no_grad():
        expected = _pointgst_twin(twin, _weights(model), points, LOCAL, scale=0.7, library_bases=True)
        torch.testing.assert_close(model.forward_features(points).tokens, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("execution", ["plain", "recompute", "fused"])
def test_in_train_mode_it_is_the_written_out_forward_with_its_gradients(execution):
    """Train mode in float64, DropPath on (the same random draws): features, logits and every PCSA
    tensor's gradient agree with the written-out forward."""
    points = _points().double()
    backbone = _backbone(drop_path_rate=0.5).double()
    model = pointpeft.get_peft_model(backbone, _config(), execution=execution).train()
    _randomize(model, seed=5)
    twin = _backbone(drop_path_rate=0.5).double().train()
    weights = _weights(model, grad=True)
    torch.manual_seed(11)
    got = model.forward_features(points).tokens
    torch.manual_seed(11)
    expected = _pointgst_twin(twin, weights, points, LOCAL)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-11)
    probe = torch.randn(got.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (got * probe).sum().backward()
    (expected * probe).sum().backward()
    for adapter, w in zip(_adapters(model), weights, strict=True):
        for name, p in adapter.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, w[name].grad, rtol=1e-9, atol=1e-10, msg=name)


def test_a_fresh_adapter_leaves_the_frozen_features():
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), _config()).eval()
    frozen = pointpeft.get_peft_model(_backbone(), LinearProbeConfig(num_classes=5)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(points).tokens, frozen.forward_features(points).tokens, rtol=0, atol=0
        )
    for adapter in _adapters(model):  # the released init
        assert not adapter.up.weight.any() and not adapter.up.bias.any()
        assert not adapter.adapt1.weight.any() and not adapter.adapt1.bias.any()
        bound = math.sqrt(6 / (C + 6))  # Xavier-uniform
        assert adapter.down.weight.abs().max() <= bound and adapter.down.weight.std() > bound / 4


def test_under_bf16_autocast_it_runs_with_float32_bases():
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), _config()).train()
    _randomize(model, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(points)
    F.cross_entropy(logits.float(), torch.arange(4) % 5).backward()
    assert all(a.up.weight.grad is not None for a in _adapters(model))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.eval()(points).float()
    with torch.no_grad():
        high = model(points)
    torch.testing.assert_close(low, high, rtol=0.1, atol=0.1)


# ----------------------------------------------------------------------------------- trainable set
def _head_size(in_features: int, classes: int, hidden: int = 256) -> int:
    return (
        (in_features * hidden + hidden)
        + 2 * hidden
        + (hidden * hidden + hidden)
        + 2 * hidden
        + (hidden * classes + classes)
    )


def _pcsa_size(dim: int, rank: int) -> int:
    return (dim * rank + rank) + (rank * dim + dim) + (rank * rank + rank) + 2 * (2 * rank)


@pytest.mark.parametrize("train_cls", [True, False])
def test_the_trainable_set_and_its_count_from_the_shapes(train_cls):
    model = pointpeft.get_peft_model(_backbone(), _config(train_cls=train_cls))
    names = _trainable(model)
    tokens = {"base_model.cls_token", "base_model.cls_pos"}
    assert (tokens <= names) == train_cls and not (tokens & names and not train_cls)
    others = names - tokens
    assert all(".norm2.adapter.default." in n or n.startswith("heads.default.") for n in others), others
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == DEPTH * _pcsa_size(C, 6) + _head_size(2 * C, 5) + (2 * C if train_cls else 0)


def test_on_point_mae_the_count_is_622831():
    """Point-MAE for ScanObjectNN (15 classes, width 384, 12 blocks), r = 36: 12 · 29,544 in the adapters,
    the head on [CLS, max of the patches] 267,535, the CLS token and its position 768."""
    assert (_pcsa_size(384, 36), _head_size(768, 15)) == (29_544, 267_535)
    model = pointpeft.get_peft_model(PointMAE(), PointGSTConfig(num_classes=15))
    assert model.get_nb_trainable_parameters()[0] == 12 * 29_544 + 267_535 + 768 == 622_831
    assert pointpeft.count_parameters(model)[0] == 622_831


def test_gradients_reach_the_adapters_the_head_and_the_cls_token_only():
    model = pointpeft.get_peft_model(_backbone(), _config()).train()
    F.cross_entropy(model(_points()), torch.arange(4) % 5).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == _trainable(model)
    assert all(a.up.weight.grad.abs().sum() > 0 for a in _adapters(model))  # W_u = 0: only W_u learns first


# ---------------------------------------------------------------------------------- execution modes
def test_every_execution_mode_gives_the_same_logits_and_gradients():
    points, labels = _points(), torch.arange(4) % 5
    results = {}
    for execution in ("plain", "recompute", "fused"):
        model = pointpeft.get_peft_model(
            _backbone(drop_path_rate=0.3), _config(), execution=execution
        ).train()
        _randomize(model, seed=2)
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
    model = pointpeft.get_peft_model(backbone, _config(num_classes=4, rank=4, local_size=4))
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
def test_adapters_of_other_methods_beside_it_and_switching():
    """PointGST, an AdaptFormer adapter, DAPT and SSF on one backbone: each computes what it computes alone
    and trains only its own tensors; the bare backbone inside disable_adapter; deleting one leaves the rest."""
    points = _points()
    configs = {
        "gst": _config(),
        "adapter": AdapterConfig(num_classes=5, rank=8, head_dropout=0.0),
        "dapt": DAPTConfig(num_classes=5, rank=8, head_dropout=0.0),
        "ssf": SSFConfig(num_classes=5, head_dropout=0.0),
    }
    alone = {}
    for name, config in configs.items():
        single = pointpeft.get_peft_model(_backbone(), config, adapter_name=name).eval()
        randomize_dapt(single, seed=4)
        _randomize(single, seed=5)
        for m in single.modules():  # the AdaptFormer adapter too
            if type(m).__name__ == "AdaptFormerAdapter":
                with torch.no_grad():
                    m.up.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(6))
        alone[name] = single
    shared = pointpeft.get_peft_model(_backbone(), configs["adapter"], adapter_name="adapter").eval()
    for name in ("gst", "dapt", "ssf"):
        shared.add_adapter(name, configs[name])
    assert isinstance(shared.base_model.group_divider, GroupingSite)
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
    shared.set_adapter("gst")
    with torch.no_grad():
        adapted = shared(points)
        with shared.disable_adapter():
            torch.testing.assert_close(shared(points), _backbone().eval()(points), rtol=0, atol=0)
        torch.testing.assert_close(shared(points), adapted, rtol=0, atol=0)
    shared.set_adapter("ssf")
    shared.delete_adapter("gst")
    assert not _adapters(shared)
    assert not shared.base_model.group_divider.graph_bases
    with torch.no_grad():
        torch.testing.assert_close(shared(points), alone["ssf"](points), rtol=1e-6, atol=1e-6)


def test_adapter_round_trip_and_loading_beside_another_method(tmp_path):
    points = _points()
    config = _config(rank=5, local_size=4, scale=0.5)
    model = pointpeft.get_peft_model(_backbone(), config).eval()
    _randomize(model, seed=6)
    model.save_adapter(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "POINTGST" and saved["config"] == config.to_dict()
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    assert type(loaded.config) is PointGSTConfig and loaded.config == config
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)
    other = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    other.load_adapter(str(tmp_path), "gst")
    other.set_adapter("gst")
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(points), model(points), rtol=0, atol=0)


def test_unload_gives_the_backbone_back():
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = pointpeft.get_peft_model(backbone, _config())
    _randomize(model, seed=2)
    plain = model.unload()
    assert type(plain.group_divider).__name__ == "Group"
    assert not any(isinstance(m, (GroupingSite, StreamAdapterSite)) for m in plain.modules())
    assert plain.state_dict().keys() == before.keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())


# ------------------------------------------------------------------------------------ other backbones
@pytest.mark.parametrize("name", ["point_bert", "pointgpt"])
def test_on_point_bert_and_sequence_first_pointgpt_it_starts_at_the_frozen_features(name):
    """A fresh PCSA adds exactly zero on Point-BERT and on PointGPT (sequence-first blocks, a causal mask);
    randomized, it changes the tokens."""
    from pointpeft.backbones import PointBERT, PointGPT

    points = _points()

    def make() -> torch.nn.Module:
        if name == "pointgpt":
            return PointGPT(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=4)
        return PointBERT(trans_dim=32, encoder_dims=24, depth=2, num_heads=4, num_group=8, group_size=4)

    torch.manual_seed(0)
    model = pointpeft.get_peft_model(make(), _config(local_size=4)).eval()
    torch.manual_seed(0)
    frozen = pointpeft.get_peft_model(make(), LinearProbeConfig(num_classes=5)).eval()
    with torch.no_grad():
        expected = frozen.forward_features(points).tokens
        torch.testing.assert_close(model.forward_features(points).tokens, expected, rtol=0, atol=0)
        _randomize(model, seed=1)
        assert not torch.allclose(model.forward_features(points).tokens, expected, atol=1e-4)


class _GroupedEncoderModel(torch.nn.Module):
    """``nn.TransformerEncoder`` blocks (pre-norm), batch- or sequence-first, fed by a Point-MAE
    ``group_divider``: the same weights for either orientation at the same seed."""

    def __init__(self, batch_first: bool) -> None:
        from pointpeft.backbones.point_mae import Group
        from standins import TorchEncoderModel

        super().__init__()
        torch.manual_seed(0)
        inner = TorchEncoderModel(dim=32, depth=2, heads=4, batch_first=batch_first, norm_first=True)
        self.group_divider = Group(16, 8)
        self.patch_encoder, self.cls_token, self.pos_embed = (
            inner.patch_encoder,
            inner.cls_token,
            inner.pos_embed,
        )
        self.transformer = inner.transformer
        self.batch_first = batch_first

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        neighborhood, centers = self.group_divider(points)
        tokens = self.patch_encoder(neighborhood)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        x = x + torch.cat([torch.zeros_like(tokens[:, :1]), self.pos_embed(centers)], dim=1)
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.transformer(x)
        out: torch.Tensor = x if self.batch_first else x.transpose(0, 1)
        return out


@pytest.mark.parametrize("train", [False, True])
def test_sequence_first_blocks_compute_what_batch_first_blocks_compute(train):
    """PCSA mixes the patch tokens of each cloud, so it must read a sequence-first stream ``(L, B, C)``
    through a transpose: the same model built sequence-first and batch-first (the same weights, every PCSA
    randomized alike) gives the same logits and the same PCSA gradients, in float64."""
    results = []
    for batch_first in (True, False):
        backbone = _GroupedEncoderModel(batch_first).double()
        model = pointpeft.get_peft_model(backbone, _config(), layout="torch_transformer_encoder")
        assert model.layout.seq_first is (not batch_first)
        _randomize(model, seed=3)
        model.train(train)
        logits = model(_points().double())
        logits.square().sum().backward()
        grads = [p.grad.clone() for a in _adapters(model) for p in a.parameters()]
        results.append((logits.detach(), grads))
    (logits, grads), (logits_seq, grads_seq) = results
    assert len(grads) == len(grads_seq) > 0
    torch.testing.assert_close(logits_seq, logits, rtol=1e-10, atol=1e-12)
    for g, g_seq in zip(grads, grads_seq, strict=True):
        assert g.abs().max() > 0
        torch.testing.assert_close(g_seq, g, rtol=1e-9, atol=1e-11)


def test_a_backbone_without_a_grouping_module_is_refused():
    from standins import TorchEncoderModel

    backbone = TorchEncoderModel(batch_first=True, norm_first=True)
    with pytest.raises(ValueError, match=r"PointGSTConfig builds graphs of the patch centres.*group_divider"):
        pointpeft.get_peft_model(backbone, _config(), layout="torch_transformer_encoder")
    assert not any(type(m).__name__ == "DAPTBlock" for m in backbone.modules())  # left as it was


# ------------------------------------------------------------------------------------------- checks
def test_the_config_checks_its_fields_naming_them():
    with pytest.raises(ValueError, match=r"rank must be >= 1, got 0"):
        PointGSTConfig(num_classes=5, rank=0)
    with pytest.raises(ValueError, match=r"local_size must be an int in \[1, 1048576\], got 0"):
        PointGSTConfig(num_classes=5, local_size=0)
    with pytest.raises(TypeError, match=r"local_size must be an int in \[1, 1048576\], got float 2\.5"):
        PointGSTConfig(num_classes=5, local_size=2.5)
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1e\+06\], got 0"):
        PointGSTConfig(num_classes=5, scale=0.0)
    with pytest.raises(ValueError, match=r"pool must not contain 'prompt'"):
        PointGSTConfig(num_classes=5, pool=("cls", "prompt"))
    config = PointGSTConfig(num_classes=5)
    assert (config.rank, config.local_size, config.scale, config.pool, config.train_cls) == (
        36,
        32,
        1.0,
        ("cls", "patch"),
        True,
    )
    with pytest.raises(TypeError, match=r"rank must be"):
        config.rank = 2.5
    assert PointGSTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_local_size_that_does_not_divide_g_is_refused_when_the_adapter_is_added():
    backbone = _backbone()
    with pytest.raises(
        ValueError,
        match=r"PointGSTConfig\.local_size must divide the number of patches G, got local_size = 32, and "
        r"PointMAE's group_divider makes num_group = 16 patches",
    ):
        pointpeft.get_peft_model(backbone, PointGSTConfig(num_classes=5))
    assert type(backbone.group_divider).__name__ == "Group"  # left as it was
    model = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    with pytest.raises(ValueError, match=r"local_size = 3"):
        model.add_adapter("gst", _config(local_size=3))
    assert model.adapters == ("default",)


def test_a_local_size_that_does_not_divide_g_fails_at_forward_naming_it():
    model = pointpeft.get_peft_model(_backbone(), _config())
    model.base_model.group_divider.graph_bases["default"].local_size = 5  # past the check at add time
    with pytest.raises(
        ValueError, match=r"local_size must divide the number of patches G, got local_size = 5 and G = 16"
    ):
        model.eval()(_points())


def test_a_forward_without_the_graph_bases_fails_naming_the_grouping_module():
    model = pointpeft.get_peft_model(_backbone(), _config()).eval()
    del model.base_model.group_divider.graph_bases["default"]  # the grouping site makes no bases now
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"PCSA needs the graph bases .*group_divider"):
        model(_points())


# ---------------------------------------------------------------------------------------------- CLI
def _table(lines: list[str]) -> dict[str, int]:
    return {
        line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1].replace(",", "")) for line in lines[:-1]
    }


def test_pointpeft_params_counts_pointgst_on_point_mae(capsys):
    from pointpeft.cli import main

    base = ["params", "--config", str(CONFIGS / "scanobjectnn_objbg.yaml"), "dapt.pool=[cls,patch]"]
    assert main([*base, "method=pointgst"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert _table(lines) == {"head": 267_535, "adapters": 12 * 29_544, "tokens": 768}
    assert "trainable params: 622,831 ||" in lines[-1]
    assert main([*base, "method=pointgst", "pointgst.rank=8"]) == 0
    assert f"trainable params: {267_535 + 12 * _pcsa_size(384, 8) + 768:,d} ||" in capsys.readouterr().out


def test_the_pointgst_section_is_checked():
    from pointpeft.train import build_model, load_config

    config = load_config(None, ["method=pointgst", "pointgst.rank=4", "pointgst.local_size=8"])
    assert config["pointgst"] == {"rank": 4, "local_size": 8, "scale": 1.0}
    with pytest.raises(ValueError, match=r"pointgst\.local_size"):
        load_config(None, ["pointgst.local_size=0"])
    with pytest.raises(ValueError, match=r"pointgst\.scale"):
        load_config(None, ["pointgst.scale=0"])
    small = [
        "method=pointgst",
        "dapt.pool=[cls,patch]",
        "pointgst.rank=4",
        "model.trans_dim=32",
        "model.depth=1",
        "model.num_heads=4",
        "model.encoder_dims=32",
        "model.num_group=16",
    ]
    model = build_model(load_config(None, [*small, "pointgst.local_size=8"]), 5)
    assert model.config == PointGSTConfig(num_classes=5, rank=4, local_size=8)
    with pytest.raises(ValueError, match=r"local_size must divide the number of patches G"):
        build_model(load_config(None, small), 5)  # the default 32 does not divide 16


def test_pointpeft_train_and_eval_run_pointgst(tmp_path, capsys):
    from pointpeft.cli import main
    from tiny_run import TINY

    args = [
        *TINY,
        "run.device=cpu",
        f"run.output_dir={tmp_path}",
        "method=pointgst",
        "dapt.pool=[cls,patch]",
        "pointgst.rank=4",
        "pointgst.local_size=4",
    ]
    assert main(["train", *args, "optim.epochs=1"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "POINTGST" and saved["config"]["local_size"] == 4
    best = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["best_accuracy"]
    assert "trainable params:" in out
    assert main(["eval", "--adapter", str(tmp_path / "best"), *args]) == 0
    assert f"test accuracy {best:.2f}%" in capsys.readouterr().out
