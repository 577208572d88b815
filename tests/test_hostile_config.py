"""Hostile and careless values for DAPTConfig and BackboneLayout: every field checked, errors name the field."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pointpeft
from conftest import SMALL
from pointpeft import BackboneLayout, BlockLayout, DAPTConfig
from pointpeft.backbones import PointMAE
from pointpeft.dapt.layout import detect_layout

# The documented range of each float field: (low, high, high inclusive).
FLOAT_RANGES = {
    "adapter_dropout": (0.0, 1.0, False),
    "head_dropout": (0.0, 1.0, False),
    "tfts_init_std": (0.0, 1.0, True),
}
INT_FIELDS = ("num_classes", "rank", "head_hidden")
BOOL_FIELDS = ("tfts", "prompts", "update_bn_stats")
HOSTILE_FLOATS = [math.nan, math.inf, -math.inf, -0.5, -1e-300, 1.0 + 1e-12, 1e300, -1e300]


def _make(**kwargs) -> DAPTConfig:
    return DAPTConfig(**{"num_classes": 5, **kwargs})


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e300, 1.5])
def test_tfts_init_std_must_be_finite_and_in_range(value):
    with pytest.raises(ValueError, match="tfts_init_std"):
        _make(tfts_init_std=value)


@pytest.mark.parametrize("name", sorted(FLOAT_RANGES))
@pytest.mark.parametrize("value", HOSTILE_FLOATS)
def test_every_float_field_refuses_non_finite_and_out_of_range(name, value):
    low, high, high_inclusive = FLOAT_RANGES[name]
    in_range = low <= value and (value <= high if high_inclusive else value < high)
    if in_range:
        assert getattr(_make(**{name: value}), name) == value
    else:
        with pytest.raises(ValueError, match=name):
            _make(**{name: value})


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(FLOAT_RANGES)),
    value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30),
)
def test_float_fields_accept_exactly_their_range(name, value):
    low, high, high_inclusive = FLOAT_RANGES[name]
    finite = math.isfinite(value)
    in_range = finite and low <= value and (value <= high if high_inclusive else value < high)
    if in_range:
        config = _make(**{name: value})
        assert isinstance(getattr(config, name), float) and getattr(config, name) == float(value)
    else:
        with pytest.raises(ValueError, match=name):
            _make(**{name: value})


WRONG_TYPES = {
    "float": ["0.1", None, True, [0.1], torch.tensor(0.1), 1j],
    "int": ["8", 8.0, None, True, [8], torch.tensor(8)],
    "bool": [1, 0, "false", "True", None, 1.0],
}


def _field_kind(name: str) -> str:
    return "float" if name in FLOAT_RANGES else "int" if name in INT_FIELDS else "bool"


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(FLOAT_RANGES) + list(INT_FIELDS) + list(BOOL_FIELDS)))
def test_wrong_types_raise_type_error_naming_the_field(data, name):
    value = data.draw(st.sampled_from(WRONG_TYPES[_field_kind(name)]))
    with pytest.raises(TypeError, match=name):
        _make(**{name: value})


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize(
    ("value", "match"), [(0, ">= 1"), (-3, ">= 1"), (2**20 + 1, "at most"), (10**18, "at most")]
)
def test_int_fields_are_in_range(name, value, match):
    with pytest.raises(ValueError, match=f"{name} must be {match}"):
        _make(**{name: value})
    assert getattr(_make(**{name: 2**20}), name) == 2**20  # the bound itself is allowed


@pytest.mark.parametrize(
    ("pool", "error", "match"),
    [
        ({"cls": 1}, TypeError, "pool must be a sequence"),
        (b"cls", TypeError, "pool must be a sequence"),
        ([1, "cls"], TypeError, r"pool must hold names \(str\)"),
        ([None], TypeError, "pool must hold names"),
        ("mean", ValueError, r"unknown \['mean'\]"),
        ([], ValueError, "pool must name at least one"),
    ],
)
def test_bad_pool(pool, error, match):
    with pytest.raises(error, match=match):
        _make(pool=pool)


def test_pool_from_a_set_or_list_is_kept_in_the_reference_order():
    assert _make(pool={"patch", "cls"}).pool == ("cls", "patch")
    assert _make(pool=["patch", "prompt"]).pool == ("prompt", "patch")


def test_assignment_after_construction_is_checked_and_keeps_the_old_value():
    config = _make(rank=8)
    for name, value, error in [
        ("rank", 0, ValueError),
        ("rank", "8", TypeError),
        ("tfts_init_std", math.nan, ValueError),
        ("head_dropout", 1.0, ValueError),
        ("tfts", "yes", TypeError),
        ("pool", ("cls", "mean"), ValueError),
    ]:
        before = getattr(config, name)
        with pytest.raises(error, match=name):
            setattr(config, name, value)
        assert getattr(config, name) == before
    with pytest.raises(ValueError, match="pool contains 'prompt' but prompts=False"):
        config.prompts = False
    assert config.prompts is True
    config.pool = ["patch", "cls"]  # a valid assignment is normalised as at construction
    assert config.pool == ("cls", "patch")
    config.prompts = False  # allowed now that no prompt is pooled
    changed = dataclasses.replace(_make(), prompts=False, pool=("cls",))
    assert (changed.prompts, changed.pool) == (False, ("cls",))


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ('{"num_classes": "5"}', TypeError, "from_dict: num_classes must be an int"),
        ('{"num_classes": 5.0}', TypeError, "from_dict: num_classes must be an int"),
        ('{"num_classes": 5, "rank": null}', TypeError, "from_dict: rank must be an int"),
        ('{"num_classes": 5, "tfts_init_std": NaN}', ValueError, "from_dict: tfts_init_std must be a finite"),
        ('{"num_classes": 5, "tfts_init_std": Infinity}', ValueError, "from_dict: tfts_init_std"),
        ('{"num_classes": 5, "head_dropout": "0.5"}', TypeError, "from_dict: head_dropout"),
        ('{"num_classes": 5, "tfts": "false"}', TypeError, "from_dict: tfts must be a bool"),
        ('{"num_classes": 5, "update_bn_stats": 0}', TypeError, "from_dict: update_bn_stats must be a bool"),
        ('{"num_classes": 5, "pool": "cls,patch"}', ValueError, "from_dict: pool names must be among"),
        ('{"num_classes": 5, "pool": [["cls"]]}', TypeError, "from_dict: pool must hold names"),
        ('{"num_classes": 5, "pool": {"cls": true}}', TypeError, "from_dict: pool must be a sequence"),
        ('{"rank": 8}', ValueError, r"from_dict: the key\(s\) \['num_classes'\] are missing"),
        ("[5]", TypeError, "data must be a dict"),
        ('"num_classes"', TypeError, "data must be a dict"),
    ],
)
def test_from_dict_of_bad_json_names_the_key(text, error, match):
    with pytest.raises(error, match=match):
        DAPTConfig.from_dict(json.loads(text))


def test_from_dict_round_trips_through_json_and_warns_on_odd_keys():
    config = _make(rank=12, pool=("cls", "patch"), tfts_init_std=0.5, update_bn_stats=False)
    assert DAPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['future_field', 1\]"):
        assert DAPTConfig.from_dict({**config.to_dict(), "future_field": 1, 1: 2}) == config


def test_the_largest_tfts_init_std_still_gives_finite_logits(points):
    torch.manual_seed(0)
    model = pointpeft.wrap_with_dapt(PointMAE(**SMALL), _make(rank=4, head_hidden=16, tfts_init_std=1.0))
    with torch.no_grad():
        assert torch.isfinite(model.eval()(points)).all()


# --- BackboneLayout / BlockLayout, as read back from an adapter_config.json -------------------------------


def _layout_dict() -> dict:
    return detect_layout(PointMAE(**SMALL)).to_dict()


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"blocks": "blocks.blocks.0"}, TypeError, "blocks must be a list or tuple"),
        ({"blocks": 3}, TypeError, "blocks must be a list or tuple"),
        ({"blocks": ["blocks.blocks.0", 1]}, TypeError, r"blocks\[1\] must be a module path"),
        ({"blocks": ["blocks..0"]}, ValueError, r"blocks\[0\] must be a dotted module path"),
        ({"blocks": [""]}, ValueError, r"blocks\[0\] must be a dotted module path"),
        ({"blocks": []}, ValueError, "blocks must name at least one block"),
        ({"blocks": ["blocks.blocks.0", "blocks.blocks.0"]}, ValueError, "blocks must not repeat"),
        ({"block": 5}, TypeError, "block must be a dict"),
        ({"block": {"mlp": 3}}, TypeError, "BlockLayout.mlp must be a module path"),
        ({"block": {"mlp": None}}, TypeError, "BlockLayout.mlp must be a module path"),
        ({"block": {"norm1": ""}}, ValueError, "BlockLayout.norm1 must be a dotted module path.*use None"),
        ({"block": {"qkv": ["attn", "qkv"]}}, TypeError, "BlockLayout.qkv"),
        ({"block": {"fc9": "mlp.fc9"}}, ValueError, r"not a BlockLayout: unknown keys \['fc9'\]"),
        ({"patch_encoder": 0}, TypeError, "patch_encoder must be a module path"),
        ({"final_norm": "norm."}, ValueError, "final_norm must be a dotted module path"),
        ({"num_global_tokens": True}, TypeError, "num_global_tokens must be an int"),
        ({"num_global_tokens": -1}, ValueError, "num_global_tokens must be an int >= 0"),
        ({"num_global_tokens": 1.0}, TypeError, "num_global_tokens must be an int"),
        ({"cls_index": "0"}, TypeError, "cls_index must be an int"),
        ({"cls_index": 1}, ValueError, r"cls_index must be in \[0, num_global_tokens=1\)"),
        ({"num_global_tokens": 0, "cls_index": 2}, ValueError, "cls_index must be 0"),
        ({"seq_first": "false"}, TypeError, "seq_first must be a bool"),
        ({"trainable_tokens": "cls_token"}, TypeError, "trainable_tokens must be a list or tuple"),
        ({"trainable_tokens": [None]}, TypeError, r"trainable_tokens\[0\]"),
        ({"preset": 3}, TypeError, "preset must be a str or None"),
        ({"stack": "x"}, ValueError, r"unknown keys \['stack'\]"),
    ],
)
def test_layout_from_dict_names_the_bad_key(change, error, match):
    data = _layout_dict()
    for key, value in change.items():
        if key == "block" and isinstance(value, dict):
            data["block"] = {**data["block"], **value}
        else:
            data[key] = value
    with pytest.raises(error, match=match):
        BackboneLayout.from_dict(json.loads(json.dumps(data)))


def test_layout_from_dict_needs_a_mapping_with_blocks():
    with pytest.raises(TypeError, match="not a BackboneLayout: expected a dict"):
        BackboneLayout.from_dict(["blocks.blocks.0"])
    with pytest.raises(ValueError, match="not a BackboneLayout: no 'blocks'"):
        BackboneLayout.from_dict({"patch_encoder": "encoder"})
    layout = detect_layout(PointMAE(**SMALL))
    assert BackboneLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def test_hand_written_layouts_are_checked_at_construction():
    with pytest.raises(TypeError, match="BlockLayout.fc1"):
        BlockLayout(fc1=1)
    with pytest.raises(TypeError, match="trainable_tokens must be a list or tuple"):
        BackboneLayout(blocks=("blocks.blocks.0",), trainable_tokens="cls_token")
    layout = BackboneLayout(blocks=["blocks.blocks.0"], trainable_tokens=["cls_token"])
    assert layout.blocks == ("blocks.blocks.0",) and layout.trainable_tokens == ("cls_token",)


def test_a_config_files_model_key_the_backbone_does_not_take_is_left_out_with_a_warning(tmp_path):
    """A method file holds its paper's Point-MAE recipe (pos_mode, drop_path_rate); on ReCon, which takes
    neither pos_mode, the key goes back to its default with a warning naming the file, and the file's
    other keys apply. The same key on the command line is an error naming it."""
    from pointpeft.train import load_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  pos_mode: every_block\n  drop_path_rate: 0.2\noptim:\n  lr: 0.001\n")
    with pytest.warns(UserWarning, match=r"recipe\.yaml: model\.pos_mode='every_block' is left out: .*ReCon"):
        config = load_config(str(recipe), ["model.backbone=recon"])
    assert config["model"]["pos_mode"] == "once" and config["model"]["drop_path_rate"] == 0.2
    assert config["optim"]["lr"] == 0.001
    with pytest.raises(ValueError, match=r"model\.pos_mode is set \('every_block'\) but .*ReCon"):
        load_config(str(recipe), ["model.backbone=recon", "model.pos_mode=every_block"])
    assert load_config(str(recipe), [])["model"]["pos_mode"] == "every_block"  # Point-MAE takes it
