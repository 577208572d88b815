"""Inputs of the wrong dtype, shape, device or values at the entry of DAPTModel, PointMAE and
FullFinetuneModel: a TypeError / ValueError naming ``points``, the expected and received value and the
fix, never a failure inside a convolution."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import SMALL
from pointpeft import DAPTConfig, full_finetune, wrap_with_dapt
from pointpeft.backbones import PointMAE
from pointpeft.checks import check_input_device, check_input_dtype
from standins import TorchEncoderModel

SHAPE = {**SMALL, "depth": 1}
OTHER_DTYPES = [torch.float64, torch.float16, torch.bfloat16]


def _backbone() -> PointMAE:
    torch.manual_seed(0)
    return PointMAE(**SHAPE).eval()


def _models() -> dict[str, nn.Module]:
    return {
        "point_mae": _backbone(),
        "dapt": wrap_with_dapt(_backbone(), DAPTConfig(num_classes=3, rank=4)).eval(),
        "full": full_finetune(_backbone(), 3).eval(),
    }


MODELS = _models()


def _points(batch: int = 2, n: int = 32, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.rand(batch, n, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(MODELS)),
    dtype=st.sampled_from(OTHER_DTYPES),
    batch=st.integers(1, 3),
    n=st.integers(16, 40),
)
def test_points_of_another_dtype_than_the_model_are_refused_at_the_entry(name, dtype, batch, n):
    points = _points(batch, n, dtype)
    message = (
        rf"points must have the dtype of the model's parameters, torch.float32, got {dtype} "
        rf"\(shape \({batch}, {n}, 3\)\); convert it with points\.float\(\) or the model with model\."
    )
    with torch.no_grad(), pytest.raises(TypeError, match=message):
        MODELS[name](points)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_float64_model_takes_float64_points_and_names_the_fix_for_float32(name):
    model = _models()[name].double()
    with torch.no_grad():
        out = model(_points(dtype=torch.float64))
    assert out.dtype == torch.float64
    with (
        torch.no_grad(),
        pytest.raises(TypeError, match=r"torch.float64, got torch.float32.*points\.double\(\)"),
    ):
        model(_points())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float32_points_under_autocast_pass(name):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = MODELS[name](_points())
    assert torch.isfinite(out.float()).all()


def test_dapt_checks_points_with_adapters_disabled_too():
    model = MODELS["dapt"]
    with (
        torch.no_grad(),
        model.disable_adapter(),
        pytest.raises(TypeError, match="points must have the dtype"),
    ):
        model(_points(dtype=torch.float64))
    with pytest.raises(TypeError, match="points must have the dtype"):
        model.forward_features(_points(dtype=torch.float16))


def test_dapt_on_a_third_party_backbone_checks_only_the_dtype_of_floating_inputs():
    torch.manual_seed(0)
    model = wrap_with_dapt(
        TorchEncoderModel(), DAPTConfig(num_classes=3, rank=4), layout="torch_transformer_encoder"
    ).eval()
    with torch.no_grad(), pytest.raises(TypeError, match="points must have the dtype .* got torch.float64"):
        model(_points(n=64, dtype=torch.float64))
    layer = nn.Embedding(5, 4)
    check_input_dtype("tokens", torch.zeros(2, 7, dtype=torch.long), layer)  # not floating: its business
    check_input_dtype("images", torch.zeros(2, 3, 8, 8), layer)  # floating of the model's dtype: fine
    check_input_dtype("points", torch.zeros(2, 3, dtype=torch.float64), nn.Identity())  # no parameters


@pytest.mark.parametrize(
    ("points", "error", "message"),
    [
        (torch.rand(2, 32), ValueError, r"points must have shape \(B, N, 3\), got \(2, 32\)"),
        (torch.rand(2, 32, 4), ValueError, r"points must have shape \(B, N, 3\), got \(2, 32, 4\)"),
        (
            torch.rand(2, 12, 3),
            ValueError,
            r"at least max\(num_group, group_size\) = 16 .* got shape \(2, 12, 3\)",
        ),
        (torch.randint(0, 3, (2, 32, 3)), TypeError, "points must have a floating-point dtype"),
        ([[0.0, 0.0, 0.0]], TypeError, "points must be a torch.Tensor"),
        (
            torch.rand(2, 32, 3, device="meta"),
            ValueError,
            "points must be on the device of the model's parameters, cpu, got meta",
        ),
    ],
)
@pytest.mark.parametrize("name", ["point_mae", "dapt", "full"])
def test_points_of_a_wrong_shape_type_or_device_are_refused_naming_them(name, points, error, message):
    with torch.no_grad(), pytest.raises(error, match=message):
        MODELS[name](points)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_points_are_refused_naming_the_cloud(bad):
    points = _points()
    points[1, 5, 2] = bad
    for model in MODELS.values():
        with (
            torch.no_grad(),
            pytest.raises(ValueError, match=r"(xyz|points) must contain only finite coordinates"),
        ):
            model(points)


def test_check_input_device_names_the_fix():
    layer = nn.Linear(3, 3)
    with pytest.raises(
        ValueError, match=r"x must be on the device .* cpu, got meta; move it with x\.to\('cpu'\)"
    ):
        check_input_device("x", torch.zeros(2, 3, device="meta"), layer)
    check_input_device("x", torch.zeros(2, 3), layer)
    check_input_device("x", "not a tensor", layer)


def test_a_model_after_to_float64_gives_the_same_answer_as_converting_the_points():
    """The check does not cast: a float64 model on float64 points agrees with the float32 model."""
    model = _models()["dapt"]
    with torch.no_grad():
        single = model(_points())
        double = model.double()(_points(dtype=torch.float64))
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-5)
