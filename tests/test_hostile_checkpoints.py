"""Hostile and careless checkpoints for load_pretrained and load_reference_dapt: unreadable files, pickled
code, wrong structures and shapes, non-finite values and training-wrapper prefixes."""

from __future__ import annotations

import math
import os
import pickle
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import pointpeft
from conftest import SMALL
from pointpeft.backbones import PointMAE
from pointpeft.checkpoints import strip_training_wrapper_prefixes, strip_wrapper_names
from reference_dapt import reference_logits, reference_state_dict

KW = dict(num_heads=4, num_group=16, group_size=8)


def _reference(**kwargs) -> dict[str, torch.Tensor]:
    return reference_state_dict(**{"dim": 32, "depth": 2, "rank": 8, **kwargs})


def _encoder_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in PointMAE(**SMALL).state_dict().items()}


def _load_reference(source):
    return pointpeft.load_reference_dapt(source, **KW)


def _load_pretrained(source):
    return pointpeft.load_pretrained(PointMAE(**SMALL), source)


LOADERS = {"load_reference_dapt": _load_reference, "load_pretrained": _load_pretrained}


# --- training-wrapper prefixes (item 7) -------------------------------------------------------------------


def test_only_leading_wrapper_prefixes_are_stripped():
    state = {"module.pre_module.weight": 1, "module.blocks.module.x": 2, "module.a_orig_mod.b": 3}
    assert strip_training_wrapper_prefixes(state) == {
        "pre_module.weight": 1,
        "blocks.module.x": 2,
        "a_orig_mod.b": 3,
    }
    nested = {"module._orig_mod.module.x": 1, "module._orig_mod.module.y": 2}
    assert strip_training_wrapper_prefixes(nested) == {"x": 1, "y": 2}
    # Not every key has the prefix: the model itself has a child named "module"; nothing is removed.
    mixed = {"module.weight": 1, "norm.weight": 2}
    assert strip_training_wrapper_prefixes(mixed) == mixed
    assert strip_wrapper_names("blocks.0.base_layer.norm1.base_layer.weight") == "blocks.0.norm1.weight"
    assert strip_wrapper_names("pre_base_layer.weight") == "pre_base_layer.weight"
    assert strip_wrapper_names("base_layer_x.base_layer.y") == "base_layer_x.y"


class _PreModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre_module = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)


def test_the_issue_case_pre_module_is_loaded_from_a_ddp_checkpoint():
    torch.manual_seed(0)
    trained = _PreModule()
    checkpoint = {f"module.{k}": v for k, v in trained.state_dict().items()}
    model = _PreModule()
    result = pointpeft.load_pretrained(model, {"base_model": checkpoint})
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(model.pre_module.weight, trained.pre_module.weight)
    assert torch.equal(model.norm.bias, trained.norm.bias)


SEGMENTS = [
    "module",
    "pre_module",
    "module_",
    "submodule",
    "_orig_mod",
    "x_orig_mod",
    "pre_base_layer",
    "blocks",
]


def _build(paths: list[tuple[str, ...]]) -> nn.Module:
    """A module tree with an ``nn.Linear(2, 3)`` at every path (containers made as needed)."""
    root = nn.Module()
    for path in paths:
        parent = root
        for name in path[:-1]:
            if name not in parent._modules:
                parent.add_module(name, nn.Module())
            parent = parent._modules[name]
        if path[-1] not in parent._modules:
            parent.add_module(path[-1], nn.Linear(2, 3))
    return root


@settings(max_examples=40, deadline=None)
@given(
    paths=st.lists(
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(tuple), min_size=2, max_size=5
    ),
    leading=st.lists(st.sampled_from(["module.", "_orig_mod."]), max_size=3),
)
def test_names_containing_module_load_and_leading_prefixes_are_stripped(paths, leading):
    assume(len({p[0] for p in paths}) >= 2)  # two top-level children: not every key starts with one name
    torch.manual_seed(0)
    model, trained = _build(paths), _build(paths)
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_()
    prefix = "".join(leading)
    checkpoint = {prefix + k: v for k, v in trained.state_dict().items()}
    result = pointpeft.load_pretrained(model, checkpoint, source="plain")
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("prefix", ["module.", "module._orig_mod.", "_orig_mod.module.module."])
def test_reference_checkpoint_with_wrapper_prefixes_gives_the_reference_logits(tmp_path, points, prefix):
    sd = _reference(seed=3)
    path = tmp_path / "ref.pth"
    torch.save({"base_model": {prefix + k: v for k, v in sd.items()}, "epoch": 1}, path)
    model = pointpeft.load_reference_dapt(path, **KW)
    with torch.no_grad():
        torch.testing.assert_close(model(points), reference_logits(sd, points, **KW), rtol=1e-5, atol=1e-6)


# --- unreadable files and pickled code (item 15) -----------------------------------------------------------


def _assert_names_file_and_no_unsafe_advice(error: pytest.ExceptionInfo, path) -> None:
    text = str(error.value)
    assert str(path) in text
    assert "weights_only=False" not in text


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "text", "half_zip"])
def test_unreadable_files_give_a_value_error_naming_the_file(tmp_path, loader, damage):
    good = tmp_path / "good.pth"
    torch.save({"base_model": _reference()}, good)
    data = good.read_bytes()
    path = tmp_path / f"{damage}.pth"
    payload = {
        "truncated": data[: len(data) // 3],
        "random": os.urandom(4096),
        "empty": b"",
        "text": b"this is not a checkpoint\n",
        "half_zip": data[: len(data) - 100],
    }[damage]
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        LOADERS[loader](path)
    _assert_names_file_and_no_unsafe_advice(error, path)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_missing_file_and_folder(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*nothing.pth"):
        LOADERS[loader](tmp_path / "nothing.pth")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint file at .*\(it is a folder\)"):
        LOADERS[loader](tmp_path)


class _WritesMarker:
    """Unpickling this object would call ``open(path, "w")``: it creates the marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("container", ["torch_save", "raw_pickle"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, loader, container):
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_WritesMarker(str(control)))).close()
    assert control.exists()  # the payload does run when unpickled without weights_only

    marker = tmp_path / "marker"
    payload = {"base_model": {**_reference(), "cls_token": _WritesMarker(str(marker))}}
    path = tmp_path / "evil.pth"
    if container == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        LOADERS[loader](path)
    _assert_names_file_and_no_unsafe_advice(error, path)
    assert not marker.exists()


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([1, 2], "holds a list, not a checkpoint"),
        (torch.zeros(3), "holds a Tensor, not a checkpoint"),
        ({}, "holds an empty state dict"),
        ({"base_model": {}}, "holds an empty state dict"),
        ({"base_model": [torch.zeros(1)]}, "'base_model' holds a list"),
        (  # a container key no framework we know uses (openpoints' 'model' is read: see test_pretrained.py)
            {"weights": {"cls_token": torch.zeros(1, 1, 32)}, "epoch": 3},
            r"'weights' \(dict\).*checkpoint\['weights'\]",
        ),
        (
            {"base_model": {"cls_token": torch.zeros(1, 1, 32), "epoch": 3}},
            r"non-tensor entries: 'epoch' \(int\)",
        ),
        ({"base_model": {0: torch.zeros(1)}}, r"keys must be non-empty names \(str\), got \[0\]"),
        ({"base_model": {"": torch.zeros(1)}}, "keys must be non-empty names"),
    ],
)
def test_files_that_hold_no_state_dict(tmp_path, loader, content, match):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match=match) as error:
        LOADERS[loader](path)
    _assert_names_file_and_no_unsafe_advice(error, path)
    with pytest.raises((ValueError, TypeError), match="path_or_state_dict"):
        LOADERS[loader](content)  # the same object passed directly


# --- the structure of a reference checkpoint ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("cls_token", torch.tensor(0.5), r"'cls_token' must have shape \(1, 1, C\).*got \(\)"),
        (
            "cls_token",
            torch.zeros(1, 1, 0),
            r"'cls_token' must have shape \(1, 1, C\).*sizes >= 1, got \(1, 1, 0\)",
        ),
        ("cls_token", torch.zeros(32), r"'cls_token' must have shape \(1, 1, C\)"),
        ("cls_token", torch.zeros(2, 1, 32), r"'cls_token' must have shape \(1, 1, C\).*got \(2, 1, 32\)"),
        (
            "cls_head_finetune.0.weight",
            torch.zeros(96),
            r"'cls_head_finetune.0.weight' must have shape \(h, W\)",
        ),
        ("cls_head_finetune.0.weight", torch.zeros(256, 0), r"'cls_head_finetune.0.weight'.*sizes >= 1"),
        (
            "cls_head_finetune.4.weight",
            torch.zeros(256, 128),
            r"'cls_head_finetune.4.weight' must have shape \(h, h\)",
        ),
        (
            "cls_head_finetune.8.weight",
            torch.zeros(5),
            r"'cls_head_finetune.8.weight' must have shape \(K, h\)",
        ),
        (
            "cls_head_finetune.8.weight",
            torch.zeros(5, 128),
            r"'cls_head_finetune.8.weight'.*with h = 256 \(from 'cls_head_finetune.0.weight'\), got \(5, 128\)",
        ),
        (
            "blocks.blocks.0.mlp.fc1.weight",
            torch.zeros(128, 16),
            r"fc1.weight' must have shape \(H, C\).*C = 32",
        ),
        (
            "blocks.blocks.0.Adapter_MLP.down_proj.weight",
            torch.zeros(0, 32),
            r"down_proj.weight'.*sizes >= 1",
        ),
        (
            "encoder.second_conv.3.weight",
            torch.zeros(32, 512),
            r"second_conv.3.weight' must have shape \(E, 512, 1\)",
        ),
        (
            "encoder.second_conv.3.weight",
            torch.zeros(32, 256, 1),
            r"second_conv.3.weight' must have shape \(E, 512, 1\)",
        ),
        (
            "cls_head_finetune.0.weight",
            torch.zeros(256, 80),
            r"input width 80 .* not 1-3 times the token width 32",
        ),
        ("cls_head_finetune.0.weight", torch.zeros(256, 128), r"input width 128 .* not 1-3 times"),
    ],
)
def test_reference_shapes_are_checked_before_use(key, value, match):
    sd = _reference()
    sd[key] = value
    with pytest.raises(ValueError, match=match):
        pointpeft.load_reference_dapt(sd, **KW)


@pytest.mark.parametrize("key", ["cls_token", "cls_head_finetune.4.weight", "cls_head_finetune.8.weight"])
def test_missing_shape_keys_are_named(key):
    sd = _reference()
    del sd[key]
    with pytest.raises(ValueError, match=f"the key '{re.escape(key)}' is missing"):
        pointpeft.load_reference_dapt(sd, **KW)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.sampled_from([0, 1, 2, 32]), max_size=4).map(tuple))
def test_any_wrong_cls_token_shape_is_named(shape):
    assume(shape != (1, 1, 32))
    sd = _reference()
    sd["cls_token"] = torch.zeros(shape)
    if len(shape) == 3 and shape[:2] == (1, 1) and shape[2] >= 1:  # a token shape, of another width C
        match = (
            rf"'blocks.blocks.0.mlp.fc1.weight' must have shape \(H, C\).*C = {shape[2]} \(from 'cls_token'\)"
        )
    else:
        match = r"'cls_token' must have shape \(1, 1, C\)"
    with pytest.raises(ValueError, match=match):
        pointpeft.load_reference_dapt(sd, **KW)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.sampled_from([0, 1, 5, 256]), max_size=3).map(tuple))
def test_any_wrong_last_head_layer_shape_is_named(shape):
    assume(not (len(shape) == 2 and shape[0] >= 1 and shape[1] == 256))
    sd = _reference()
    sd["cls_head_finetune.8.weight"] = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"'cls_head_finetune.8.weight' must have shape \(K, h\)"):
        pointpeft.load_reference_dapt(sd, **KW)


def test_block_numbering_must_have_no_gaps():
    sd = {k: v for k, v in _reference(depth=3).items() if not k.startswith("blocks.blocks.1.")}
    with pytest.raises(ValueError, match=r"numbered 0..2 without gaps.*for i in \[1\]"):
        pointpeft.load_reference_dapt(sd, **KW)
    huge = {**_reference(), "blocks.blocks.999999.norm1.weight": torch.ones(32)}
    with pytest.raises(ValueError, match=r"numbered 0..999999 without gaps.*\[2, 3, 4"):
        pointpeft.load_reference_dapt(huge, **KW)  # refused before any model is built


@pytest.mark.parametrize("key", ["blocks.blocks.12345678.norm1.weight", "blocks.blocks.01.norm1.weight"])
def test_odd_block_numbers_are_unmatched_keys(key):
    sd = {**_reference(), key: torch.ones(32)}
    with pytest.raises(ValueError, match=r"1 checkpoint key\(s\) match no tensor.*" + re.escape(key)):
        pointpeft.load_reference_dapt(sd, **KW)


@pytest.mark.parametrize(
    ("num_heads", "error", "match"),
    [(5, ValueError, "num_heads=5 does not divide the checkpoint's token width C=32"), (0, ValueError, "num_heads"),
     (True, TypeError, "num_heads"), ("4", TypeError, "num_heads")],
)  # fmt: skip
def test_num_heads_is_checked_against_the_token_width(num_heads, error, match):
    with pytest.raises(error, match=match):
        pointpeft.load_reference_dapt(_reference(), num_heads=num_heads, num_group=16, group_size=8)


def test_pool_argument_is_checked():
    with pytest.raises(TypeError, match="pool must be a sequence"):
        pointpeft.load_reference_dapt(_reference(head_parts=2), pool=3, **KW)
    with pytest.raises(ValueError, match=r"pool names must be among .* unknown \['c'"):
        pointpeft.load_reference_dapt(_reference(head_parts=2), pool=["c", "l"], **KW)
    model = pointpeft.load_reference_dapt(_reference(head_parts=1), pool="cls", **KW)
    assert model.head.pool == ("cls",)


# --- values that would give a silent wrong answer ------------------------------------------------------------


def _sparse(n: int) -> torch.Tensor:
    return torch.ones(n).to_sparse()


def _poke(tensor: torch.Tensor, index: int, value: float) -> torch.Tensor:
    """``tensor`` with its flat element ``index`` set to ``value``."""
    tensor.view(-1)[index] = value
    return tensor


@pytest.mark.parametrize(
    ("key", "make", "match"),
    [
        ("cls_token", lambda t: t.fill_(math.nan), r"cls_token: holds 32 NaN or infinite value\(s\) of 32"),
        (
            "blocks.blocks.1.attn.qkv.weight",
            lambda t: _poke(t, 7, math.inf),
            "qkv.weight: holds 1 NaN",
        ),
        ("cls_head_finetune.8.bias", lambda t: t.fill_(-math.inf), "cls_head_finetune.8.bias: holds 5 NaN"),
        (
            "cls_head_finetune.5.running_var",
            lambda t: t.sub_(10),
            "5.running_var: holds a negative BatchNorm",
        ),
        ("norm.weight", lambda t: t.long(), r"norm.weight: has dtype torch.int64 \(integer\).*torch.float32"),
        (
            "encoder.first_conv.1.num_batches_tracked",
            lambda t: t.float(),
            "num_batches_tracked: has dtype torch.float32",
        ),
        (
            "blocks.blocks.0.Adapter_MLP.up_proj.bias",
            lambda t: _sparse(32),
            "up_proj.bias: is a torch.sparse_coo tensor",
        ),
        ("tfts_gamma_1", lambda t: t.bool(), r"tfts_gamma_1: has dtype torch.bool \(bool\)"),
    ],
)
def test_reference_values_that_cannot_be_loaded_are_named(tmp_path, key, make, match):
    sd = _reference()
    sd[key] = make(sd[key].clone())
    path = tmp_path / "ref.pth"
    torch.save({"base_model": sd}, path)
    with pytest.raises(ValueError, match=match) as error:
        pointpeft.load_reference_dapt(path, **KW)
    assert str(path) in str(error.value)


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_a_non_finite_value_anywhere_in_a_reference_checkpoint_is_named(data):
    sd = _reference()
    key = data.draw(st.sampled_from(sorted(k for k, v in sd.items() if v.is_floating_point())))
    index = data.draw(st.integers(0, sd[key].numel() - 1))
    bad = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    sd[key] = sd[key].clone()
    sd[key].view(-1)[index] = bad
    with pytest.raises(ValueError, match=re.escape(f"{key}: holds 1 NaN or infinite value(s)")):
        pointpeft.load_reference_dapt(sd, **KW)


def test_half_precision_reference_checkpoint_loads(points):
    sd = _reference(seed=4)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    model = pointpeft.load_reference_dapt(half, **KW)
    exact = {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(points), reference_logits(exact, points, **KW), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("key", "make", "match"),
    [
        (
            "MAE_encoder.blocks.blocks.0.attn.qkv.weight",
            lambda t: _poke(t, 3, math.nan),
            "qkv.weight: holds 1 NaN",
        ),
        ("MAE_encoder.norm.weight", lambda t: t.long(), "MAE_encoder.norm.weight: has dtype torch.int64"),
        ("MAE_encoder.encoder.first_conv.1.running_var", lambda t: t - 5, "running_var: holds a negative"),
        (
            "MAE_encoder.encoder.first_conv.1.num_batches_tracked",
            lambda t: t.double(),
            "num_batches_tracked: has dtype",
        ),
        ("MAE_encoder.pos_embed.0.bias", lambda t: _sparse(128), "pos_embed.0.bias: is a torch.sparse_coo"),
    ],
)
def test_load_pretrained_refuses_bad_values_and_changes_nothing(tmp_path, key, make, match):
    checkpoint = {f"MAE_encoder.{k}": v for k, v in _encoder_state(1).items()}
    checkpoint[key] = make(checkpoint[key].clone())
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": checkpoint}, path)
    backbone = PointMAE(**SMALL)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=match) as error:
        pointpeft.load_pretrained(backbone, path)
    assert str(path) in str(error.value) and "Nothing was loaded" in str(error.value)
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_load_pretrained_ignores_bad_values_of_unused_tensors_and_loads_half_precision():
    encoder = _encoder_state(2)
    checkpoint = {f"MAE_encoder.{k}": v.half() if v.is_floating_point() else v for k, v in encoder.items()}
    checkpoint["MAE_decoder.blocks.0.norm1.weight"] = torch.full((32,), math.nan)  # not loaded: ignored
    backbone = PointMAE(**SMALL)
    result = pointpeft.load_pretrained(backbone, checkpoint)
    assert result.unexpected_keys == ["MAE_decoder.blocks.0.norm1.weight"]
    for key, value in encoder.items():
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(backbone.state_dict()[key], expected), key


def test_load_pretrained_non_tensor_entries_are_named():
    with pytest.raises(ValueError, match=r"non-tensor entries: 'MAE_encoder.norm.weight' \(list\)"):
        pointpeft.load_pretrained(PointMAE(**SMALL), {"MAE_encoder.norm.weight": [1.0] * 32})


def test_a_pre_training_checkpoint_given_to_load_reference_dapt_says_which_loader_to_use():
    checkpoint = {f"module.MAE_encoder.{k}": v for k, v in _encoder_state(3).items() if k != "cls_token"}
    with pytest.raises(ValueError, match=r"look like a point_mae pre-training checkpoint.*load_pretrained"):
        pointpeft.load_reference_dapt({"base_model": checkpoint}, **KW)


def test_long_key_lists_are_shortened():
    sd = {**_reference(), **{f"decoder.{i}.weight": torch.zeros(1) for i in range(50)}}
    with pytest.raises(
        ValueError, match=r"50 checkpoint key\(s\) match no tensor.*decoder.19.weight'\] \.\.\. and 30 more"
    ):
        pointpeft.load_reference_dapt(sd, **KW)
