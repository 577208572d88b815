"""pointpeft.checks: the argument checks every module uses. Each returns the value it accepts, normalised,
or raises TypeError / ValueError naming the argument, what it accepts and what it got."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pointpeft
import pointpeft.data.checks
from pointpeft import checks
from pointpeft.checks import (
    check_bool,
    check_callable,
    check_choice,
    check_fraction,
    check_int,
    check_number,
    check_path,
    check_positive_int,
    check_real,
    check_type,
)

NOT_NUMBERS = st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2), st.booleans())


# ------------------------------------------------------------------------------------------- integers
@given(st.integers(-(2**70), 2**70), st.integers(-50, 50), st.one_of(st.none(), st.integers(-50, 50)))
def test_check_int_accepts_exactly_the_integers_in_range(value, low, high):
    inside = value >= low and (high is None or value <= high)
    if inside:
        assert check_int("n", value, low, high) == value
    else:
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        with pytest.raises(ValueError, match=f"^{re.escape(f'n must be an int {expected}, got {value}')}$"):
            check_int("n", value, low, high)


@pytest.mark.parametrize("value", [np.int64(7), np.uint8(7), np.int32(7)])
def test_check_int_takes_numpy_integers_as_int(value):
    got = check_int("n", value, 0)
    assert got == 7 and type(got) is int


@given(st.one_of(NOT_NUMBERS, st.floats(allow_nan=True)))
def test_check_int_refuses_non_integers_with_a_type_error(value):
    with pytest.raises(TypeError, match=rf"^n must be an int >= 1, got {type(value).__name__} "):
        check_int("n", value, 1)


def test_check_positive_int_keeps_its_own_messages():
    assert check_positive_int("depth", 3) == 3
    with pytest.raises(ValueError, match=r"^depth must be >= 1, got 0$"):
        check_positive_int("depth", 0)
    with pytest.raises(TypeError, match=r"^depth must be an int >= 1, got bool True$"):
        check_positive_int("depth", True)
    with pytest.raises(TypeError, match=r"^depth must be an int >= 1, got float 2\.0$"):
        check_positive_int("depth", 2.0)


# -------------------------------------------------------------------------------------------- numbers
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6))
def test_check_number_in_a_half_open_range(value):
    if not math.isfinite(value):
        with pytest.raises(ValueError, match=r"^lr must be a finite number in \(0, inf\), got "):
            check_number("lr", value, low=0.0, low_inclusive=False)
    elif value <= 0:
        with pytest.raises(ValueError, match=r"^lr must be in \(0, inf\), got "):
            check_number("lr", value, low=0.0, low_inclusive=False)
    else:
        got = check_number("lr", value, low=0.0, low_inclusive=False)
        assert got == value and type(got) is float


def test_check_number_without_bounds_names_only_finiteness():
    with pytest.raises(ValueError, match=r"^x must be a finite number, got nan$"):
        check_number("x", float("nan"))
    with pytest.raises(TypeError, match=r"^x must be a number, got bool True$"):
        check_number("x", True)
    with pytest.raises(ValueError, match=r"^x must be in \[0, 1\], got 1\.5$"):
        check_number("x", 1.5, low=0, high=1)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_fraction_is_the_half_open_unit_interval(value):
    if 0 <= value < 1:
        assert check_fraction("p", value) == value
    else:
        with pytest.raises(ValueError, match=r"^p must be in \[0, 1\), got "):
            check_fraction("p", value)


def test_check_real_takes_numpy_reals_and_refuses_what_ok_refuses():
    assert check_real("s", np.float32(0.5), "a float > 0", lambda v: v > 0) == 0.5
    with pytest.raises(ValueError, match=r"^s must be a float > 0, got -1\.0$"):
        check_real("s", -1, "a float > 0", lambda v: v > 0)
    with pytest.raises(ValueError, match=r"^s must be a float > 0, got inf$"):
        check_real("s", float("inf"), "a float > 0", lambda v: True)
    with pytest.raises(TypeError, match=r"^s must be a float > 0, got str '1'$"):
        check_real("s", "1", "a float > 0", lambda v: v > 0)


# ------------------------------------------------------------------------------------ other values
@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_check_bool_accepts_python_and_numpy_bools(value):
    got = check_bool("flag", value)
    assert got is bool(value)


@pytest.mark.parametrize("value", [0, 1, "true", None, 1.0])
def test_check_bool_refuses_ints_strings_and_none(value):
    with pytest.raises(TypeError, match=rf"^flag must be a bool, got {type(value).__name__} "):
        check_bool("flag", value)
    with pytest.raises(TypeError, match=r"^flag must be a bool \(True or False\), got "):
        check_bool("flag", value, expected="a bool (True or False)")


def test_check_choice_returns_the_choice_of_the_same_kind():
    assert check_choice("split", "test", ["train", "test"]) == "test"
    assert check_choice("split", np.str_("train"), ["train", "test"]) == "train"
    got = check_choice("way", np.int64(10), [5, 10])
    assert got == 10 and type(got) is int


@pytest.mark.parametrize(
    ("value", "choices", "shown"),
    [
        (True, [0, 1], r"\[0, 1\], got True"),  # a bool is not an int choice
        (5.0, [5, 10], r"\[5, 10\], got 5\.0"),  # nor is a float
        ("5", [5, 10], r"\[5, 10\], got '5'"),
        (5, ("5", "10"), r"\('5', '10'\), got 5"),  # nor an int a string one
        (["train"], ["train", "test"], r"\['train', 'test'\], got \['train'\]"),  # unhashable: no crash
        ("Train", ("train",), r"\('train',\), got 'Train'"),
    ],
)
def test_check_choice_refuses_values_of_another_kind(value, choices, shown):
    with pytest.raises(ValueError, match=rf"^x must be one of {shown}$"):
        check_choice("x", value, choices)


def test_check_path_takes_text_paths_only(tmp_path):
    assert check_path("root", tmp_path) == str(tmp_path)
    assert check_path("root", "a/b") == "a/b"
    with pytest.raises(TypeError, match=r"^root must be a path \(str or os\.PathLike\), got NoneType None$"):
        check_path("root", None)
    with pytest.raises(TypeError, match=r"^root must be a path \(str or os\.PathLike\), got bytes b'a'$"):
        check_path("root", b"a")
    with pytest.raises(ValueError, match=r"^root must be a path to the dataset folder, got an empty string$"):
        check_path("root", "", what="the dataset folder")


def test_check_path_refuses_a_bytes_path_like():
    class BytesPath:
        def __fspath__(self) -> bytes:
            return b"folder"

    with pytest.raises(TypeError, match=r"^root must be a text path, got bytes b'folder'$"):
        check_path("root", BytesPath())


def test_check_type_and_check_callable_name_the_type_received():
    layer = nn.Linear(2, 2)
    assert check_type("model", layer, nn.Module, "a torch.nn.Module") is layer
    assert check_type("g", None, (torch.Generator, type(None)), "None or a torch.Generator") is None
    with pytest.raises(TypeError, match=r"^model must be a torch\.nn\.Module, got str$"):
        check_type("model", "resnet", nn.Module, "a torch.nn.Module")
    with pytest.raises(TypeError, match=r"^g must be None or a torch\.Generator, got int$"):
        check_type("g", 0, (torch.Generator, type(None)), "None or a torch.Generator")
    assert check_callable("fn", len) is len
    with pytest.raises(TypeError, match=r"^fn must be callable, got int$"):
        check_callable("fn", 3)


# --------------------------------------------------------------------- the modules that use them
def test_the_old_check_modules_are_gone():
    """One module of argument checks: the former families are not importable any more."""
    for name in ("pointpeft._checks", "pointpeft.input_checks"):
        with pytest.raises(ModuleNotFoundError):
            __import__(name)
    assert not {"check_int", "check_real", "check_path"} & set(dir(pointpeft.data.checks))
    assert set(checks.__all__) <= set(dir(checks))


def test_numpy_settings_are_taken_as_python_values():
    """Numpy bools and integers, as a script computing its settings gives them, are accepted and stored
    as Python values (so they serialise to JSON and YAML like the others)."""
    config = pointpeft.DAPTConfig(num_classes=4, tfts=np.True_, update_bn_stats=np.False_)
    assert config.tfts is True and config.update_bn_stats is False
    from pointpeft.train.optim import learning_rate

    kwargs = dict(lr=1e-3, min_lr=1e-6, warmup_lr=1e-6)
    assert learning_rate(np.int64(3), epochs=np.int32(10), warmup_epochs=np.uint8(2), **kwargs) == (
        learning_rate(3, epochs=10, warmup_epochs=2, **kwargs)
    )
    with pytest.raises(TypeError, match=re.escape("epoch must be an int >= 0, got float 1.0")):
        learning_rate(1.0, epochs=10, warmup_epochs=2, **kwargs)
