from __future__ import annotations

import pytest

from pointpeft import DAPTConfig


def test_defaults_are_the_reference_obj_bg_setting():
    config = DAPTConfig(num_classes=15)
    assert (config.rank, config.pool, config.head_hidden, config.head_dropout) == (
        64,
        ("cls", "prompt", "patch"),
        256,
        0.5,
    )
    assert config.tfts and config.prompts and config.update_bn_stats
    assert config.adapter_dropout == 0.0


def test_pool_is_kept_in_the_reference_order():
    assert DAPTConfig(num_classes=2, pool=["patch", "cls"]).pool == ("cls", "patch")
    assert DAPTConfig(num_classes=2, pool="patch").pool == ("patch",)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pool": ()}, ValueError, "pool must name at least one"),
        ({"pool": ("cls", "mean")}, ValueError, r"unknown \['mean'\]"),
        ({"pool": ("cls", "cls")}, ValueError, "must not repeat"),
        ({"pool": 3}, TypeError, "pool must be a sequence"),
        ({"rank": 0}, ValueError, "rank must be >= 1, got 0"),
        ({"rank": 2.5}, TypeError, "rank must be an int"),
        ({"adapter_dropout": 1.0}, ValueError, r"adapter_dropout must be in \[0, 1\), got 1.0"),
        ({"adapter_dropout": -0.1}, ValueError, "adapter_dropout must be in"),
        ({"head_dropout": 1.5}, ValueError, "head_dropout must be in"),
        ({"tfts": "yes"}, TypeError, "tfts must be a bool"),
        ({"prompts": False}, ValueError, "pool contains 'prompt' but prompts=False"),
        ({"tfts_init_std": -1.0}, ValueError, "tfts_init_std must be >= 0"),
    ],
)
def test_bad_values_are_rejected_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        DAPTConfig(num_classes=5, **kwargs)


@pytest.mark.parametrize("num_classes", [0, -3, True])
def test_num_classes_must_be_positive_int(num_classes):
    with pytest.raises((ValueError, TypeError), match="num_classes"):
        DAPTConfig(num_classes=num_classes)


def test_to_dict_is_plain():
    d = DAPTConfig(num_classes=4, pool=("cls",)).to_dict()
    assert d["pool"] == ["cls"] and d["num_classes"] == 4
