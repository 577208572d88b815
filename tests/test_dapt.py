from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import pointpeft
from conftest import SMALL, randomize_dapt
from pointpeft import DAPTConfig, count_parameters, wrap_with_dapt
from pointpeft.backbones import PointMAE
from pointpeft.checkpoints import strip_wrapper_names
from pointpeft.dapt import TFTS, DynamicAdapter
from reference_dapt import reference_logits, reference_state_dict

TRAINABLE_NAME = re.compile(r"(^base_model\.(cls_token|cls_pos)$|^heads\.|\.tfts\.|\.adapter\.|\.prompt\.)")


# ----------------------------------------------------------------------------------------------- counting
@pytest.mark.parametrize(
    ("num_group", "rank", "num_classes", "pool", "trainable"),
    [
        (128, 64, 15, ("cls", "prompt", "patch"), 1_087_771),  # OBJ_BG / PB_T50_RS
        (128, 64, 15, ("cls", "prompt"), 989_467),  # OBJ_ONLY
        (64, 72, 40, ("cls", "patch"), 1_069_716),  # ModelNet40
    ],
)
def test_reference_parameter_counts(num_group, rank, num_classes, pool, trainable):
    """The DAPT reference implementation's parameter counts. Where the head does not pool prompts (ModelNet40),
    the reference also counts the last block's prompt TFTS (2 x 384), which never gets a gradient;
    pointpeft does not create it, so that DistributedDataParallel needs no find_unused_parameters."""
    model = wrap_with_dapt(
        PointMAE(num_group=num_group), DAPTConfig(num_classes=num_classes, rank=rank, pool=pool)
    )
    unused_in_reference = 0 if "prompt" in pool else 2 * 384
    got_trainable, total = count_parameters(model)
    assert got_trainable == trainable - unused_in_reference
    assert total == 21_825_024 + got_trainable  # frozen Point-MAE encoder + DAPT


def test_print_trainable_parameters_matches_peft_line(capsys):
    model = wrap_with_dapt(PointMAE(), DAPTConfig(num_classes=15))
    pointpeft.print_trainable_parameters(model)
    assert capsys.readouterr().out == (
        "trainable params: 1,087,771 || all params: 22,912,795 || trainable%: 4.7474\n"
    )
    model.print_trainable_parameters()
    assert "1,087,771" in capsys.readouterr().out


def test_count_parameters_rejects_non_modules():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        count_parameters("not a model")


def test_tfts_off_removes_exactly_the_tfts_parameters(small_backbone):
    with_tfts = wrap_with_dapt(copy.deepcopy(small_backbone), DAPTConfig(num_classes=5, rank=8))
    without = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8, tfts=False))
    c, depth = SMALL["trans_dim"], SMALL["depth"]
    per_block = c + 3 * c + c + c + 4 * c + c + c  # norm1, qkv, proj, norm2, fc1, fc2, prompt
    expected = 2 * (depth * per_block + 2 * c)  # gamma and beta; + patch tokens and output
    assert count_parameters(with_tfts)[0] - count_parameters(without)[0] == expected
    assert not any(isinstance(m, TFTS) for m in without.modules())


# ------------------------------------------------------------------------------------- trainable set
def test_only_dapt_parameters_train(small_backbone):
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8))
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == bool(TRAINABLE_NAME.search(name)), name


def test_frozen_weights_bit_identical_after_steps_and_trainable_ones_move(small_backbone, points):
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    labels = torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(points), labels).backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert not torch.equal(parameter, before[name]), f"{name} did not move"
        else:
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"


def test_gradients_reach_every_trainable_parameter(small_backbone, points):
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8))
    randomize_dapt(model)
    nn.functional.cross_entropy(model(points), torch.tensor([0, 1, 2, 3])).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_fresh_adapter_outputs_zero():
    adapter = DynamicAdapter(16, 4)
    assert torch.equal(adapter(torch.randn(2, 5, 16)), torch.zeros(2, 5, 16))


# ------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("execution", ["plain", "fused"])
@pytest.mark.parametrize("pos_mode", ["once", "every_block"])
def test_identity_dapt_reproduces_frozen_backbone_tokens(small_backbone, points, pos_mode, execution):
    """Bit for bit on the plain path; the fused path computes the same function with another rounding
    (fused attention, TFTS folded into the LayerNorms)."""
    small_backbone.pos_mode = pos_mode
    small_backbone.eval()
    with torch.no_grad():
        expected = small_backbone(points)
    model = wrap_with_dapt(
        small_backbone,
        DAPTConfig(num_classes=5, rank=8, prompts=False, pool=("cls", "patch")),
        execution=execution,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TFTS):
                module.gamma.fill_(1.0)
                module.beta.zero_()
    model.eval()
    with torch.no_grad():
        tokens, prompts = model.forward_features(points)
    assert prompts is None
    if execution == "plain":
        assert torch.equal(tokens, expected)
    else:
        torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("pool", "num_group"), [(("cls", "prompt", "patch"), 16), (("cls", "prompt"), 16), (("cls", "patch"), 8)]
)
def test_reference_checkpoint_import_reproduces_reference_logits(points, pool, num_group, dtype):
    sd = reference_state_dict(dim=32, depth=3, rank=8, num_classes=5, head_parts=len(pool), seed=3)
    model = pointpeft.load_reference_dapt(
        {"base_model": sd}, num_heads=4, num_group=num_group, group_size=8, pool=pool
    )
    assert not model.training
    model.to(dtype)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    with torch.no_grad():
        got = model(points.to(dtype))
        expected = reference_logits(
            sd, points.to(dtype), num_heads=4, num_group=num_group, group_size=8, pool=pool
        )
    torch.testing.assert_close(got, expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    # Every component matters: perturbing any one DAPT tensor changes the logits.
    for key in (
        "blocks.blocks.1.Adapter_MLP.up_proj.weight",
        "blocks.blocks.2.attn.tfts_beta_1",
        "tfts_gamma_1",
    ):
        other = dict(sd)
        other[key] = sd[key] + 0.5
        with torch.no_grad():
            moved = reference_logits(
                other, points.to(dtype), num_heads=4, num_group=num_group, group_size=8, pool=pool
            )
        assert not torch.allclose(moved, got)


def test_dapt_on_every_block_backbone_matches_reference_with_prompts_outside_pos(points):
    """Prompts travel beside the sequence, so a backbone that re-adds pos before every block still works,
    and its prompts never receive a positional embedding."""
    sd = reference_state_dict(dim=32, depth=3, rank=8, num_classes=5, seed=4)
    model = pointpeft.load_reference_dapt(sd, num_heads=4, num_group=16, group_size=8)
    model.base_model.pos_mode = "every_block"
    with torch.no_grad():
        got = model(points)
    expected = reference_logits(sd, points, num_heads=4, num_group=16, group_size=8, pos_every_block=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_features_hold_one_prompt_per_block(small_backbone, points):
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8)).eval()
    tokens, prompts = model.forward_features(points)
    assert tokens.shape == (4, 1 + SMALL["num_group"], SMALL["trans_dim"])
    assert prompts.shape == (4, SMALL["depth"], SMALL["trans_dim"])
    assert model(points).shape == (4, 5)


def test_adapter_shares_the_ffn_drop_path(small_backbone, points):
    """With the FFN branch dropped, the adapter's output is dropped with it."""

    class DropAll(nn.Module):
        def forward(self, x):
            return x * 0

    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8, prompts=False, pool=("cls",)))
    randomize_dapt(model)
    model.eval()
    block = model.base_model.blocks.blocks[0]
    x = torch.randn(2, 7, SMALL["trans_dim"])
    inner = block.base_layer
    after_attention = x + inner.attn(inner.norm1(x))
    inner.drop_path = DropAll()
    with torch.no_grad():
        assert torch.equal(block(x), x)  # both residual branches dropped: adapter included
        inner.drop_path = nn.Identity()
        assert not torch.allclose(
            block(x), after_attention + inner.mlp.base_layer(inner.norm2(after_attention))
        )


def test_bn_statistics_update_in_train_mode_unless_opted_out(small_backbone, points):
    bn = small_backbone.encoder.first_conv[1]
    model = wrap_with_dapt(copy.deepcopy(small_backbone), DAPTConfig(num_classes=5, rank=8)).train()
    frozen = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8, update_bn_stats=False)).train()
    start = bn.running_mean.clone()
    model(points)
    frozen(points)
    assert not torch.equal(model.base_model.encoder.base_layer.first_conv[1].running_mean, start)
    assert torch.equal(frozen.base_model.encoder.base_layer.first_conv[1].running_mean, start)
    assert frozen.head.mlp[1].training  # the trainable head's BatchNorm still trains


def test_deepcopy_gives_an_independent_equal_model(small_backbone, points):
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8)).eval()
    randomize_dapt(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(model(points), twin(points))
    assert twin._link is not model._link


def test_wrapped_names_strip_back_to_backbone_names(small_backbone):
    original = set(small_backbone.state_dict())
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8))
    stripped = {
        strip_wrapper_names(k)[len("base_model.") :]
        for k in model.state_dict()
        if k.startswith("base_model.")
    }
    assert original <= stripped


def test_head_rejects_single_sample_batches_in_train_mode(small_backbone, points):
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=5, rank=8)).train()
    with pytest.raises(ValueError, match="batch of at least 2"):
        model(points[:1])
    assert model.eval()(points[:1]).shape == (1, 5)


# --------------------------------------------------------------------------------------------- walker
class _TinyAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v)


class _TinyMlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _TinyBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = (
            nn.LayerNorm(dim),
            _TinyAttention(dim),
            nn.LayerNorm(dim),
            _TinyMlp(dim),
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _ThirdPartyTransformer(nn.Module):
    """Not a pointpeft class: different names for the container, norms and patch embedding."""

    def __init__(self, dim=24, depth=2):
        super().__init__()
        self.patch_embed = nn.Linear(3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.ModuleList([_TinyBlock(dim) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, points):
        x = torch.cat([self.cls_token.expand(points.shape[0], -1, -1), self.patch_embed(points)], dim=1)
        for layer in self.layers:
            x = layer(x)
        return self.ln_f(x)


def test_walker_adapts_a_third_party_transformer(points):
    backbone = _ThirdPartyTransformer()
    layout = pointpeft.detect_layout(backbone)
    assert layout.blocks == ("layers.0", "layers.1")
    assert (layout.block.norm1, layout.block.norm2, layout.patch_encoder, layout.final_norm) == (
        "ln_1",
        "ln_2",
        "patch_embed",
        "ln_f",
    )
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=3, rank=4))
    c, r, depth = 24, 4, 2
    adapter = 2 * c + (c + 1) + (c * r + r) + (r * c + c)
    tfts = 2 * (depth * (c + 3 * c + c + c + 2 * c + c + c) + 2 * c)
    head = (3 * c * 256 + 256) + 2 * 256 + (256 * 256 + 256) + 2 * 256 + (256 * 3 + 3)
    assert count_parameters(model)[0] == depth * adapter + tfts + c + head  # + cls_token
    tokens, prompts = model.eval().forward_features(points)
    assert tokens.shape == (4, 1 + 96, c) and prompts.shape == (4, depth, c)
    nn.functional.cross_entropy(model.train()(points), torch.tensor([0, 1, 2, 0])).backward()


def test_walker_error_lists_candidates_and_the_override():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(
        ValueError, match=r"(?s)no transformer blocks found.*Containers seen.*<root>.*BackboneLayout"
    ):
        wrap_with_dapt(model, DAPTConfig(num_classes=2))


def test_explicit_layout_override(points):
    backbone = _ThirdPartyTransformer()
    layout = pointpeft.BackboneLayout(
        blocks=("layers.1",),
        block=pointpeft.BlockLayout(norm1="ln_1", norm2="ln_2"),
        patch_encoder="patch_embed",
        final_norm="ln_f",
        trainable_tokens=("cls_token",),
    )
    model = wrap_with_dapt(backbone, DAPTConfig(num_classes=3, rank=4), layout=layout)
    assert model.eval().forward_features(points).prompts.shape == (4, 1, 24)
    with pytest.raises(ValueError, match="layout names 'layers.7'"):
        wrap_with_dapt(
            _ThirdPartyTransformer(),
            DAPTConfig(num_classes=3),
            layout=pointpeft.BackboneLayout(blocks=("layers.7",)),
        )


def test_wrap_rejects_bad_arguments(small_backbone):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        wrap_with_dapt("backbone", DAPTConfig(num_classes=2))
    with pytest.raises(TypeError, match="config must be a pointpeft.DAPTConfig"):
        wrap_with_dapt(small_backbone, {"num_classes": 2})
    model = wrap_with_dapt(small_backbone, DAPTConfig(num_classes=2))
    with pytest.raises(ValueError, match="already has DAPT"):
        wrap_with_dapt(model.base_model, DAPTConfig(num_classes=2))
