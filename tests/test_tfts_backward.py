"""The one-pass TFTS backward: the plain-torch twin against autograd, the Triton kernel against the twin.

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py), so sizes stay
small; on a CUDA machine the same tests run the compiled kernel.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from pointpeft.dapt import tfts_backward as tb

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
SLOW = settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])


def _inputs(seed, shape, dtype, gelu, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    c = shape[-1]
    grad = torch.randn(shape, generator=gen).to(dtype)
    x = (2 * torch.randn(shape, generator=gen)).to(dtype)
    gamma = 1 + 0.3 * torch.randn(c, generator=gen)
    beta = 0.3 * torch.randn(c, generator=gen) if gelu else None
    moved = [t if t is None else t.to(device) for t in (grad, x, gamma, beta)]
    return moved


@pytest.mark.parametrize("gelu", [False, True])
def test_reference_is_the_gradient_of_the_tfts(gelu):
    """In float64 the twin equals autograd through ``x·γ + β`` (and a GELU after it)."""
    grad, x, gamma, beta = _inputs(0, (3, 7, 10), torch.float64, True)
    gamma, beta = gamma.double(), beta.double()
    leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
    y = leaves[0] * leaves[1] + leaves[2]
    if gelu:
        y = F.gelu(y)
    expected = torch.autograd.grad(y, leaves, grad)
    got = tb.tfts_backward_reference(grad, x, gamma, beta, gelu=gelu)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert got[0].dtype == torch.float64 and got[1].dtype == torch.float64


def _assert_sums_close(got, expected, terms):
    """Sums over tokens in another order: within float32 rounding of the sum of the terms' magnitudes."""
    bound = 1e-5 * terms.abs().reshape(-1, terms.shape[-1]).sum(0) + 1e-6
    assert ((got.double() - expected.double()).abs() <= bound.double()).all()


pytest.importorskip("triton")
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)


@SLOW
@given(
    seed=st.integers(0, 2**16),
    lead=st.lists(st.integers(0, 40), min_size=1, max_size=2),
    c=st.integers(1, 150),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    gelu=st.booleans(),
)
def test_triton_kernel_matches_the_reference(seed, lead, c, dtype, gelu):
    grad, x, gamma, beta = _inputs(seed, (*lead, c), dtype, gelu, DEVICE)
    got = tb.tfts_backward_triton(grad, x, gamma, beta, gelu=gelu)
    expected = tb.tfts_backward_reference(grad, x, gamma, beta, gelu=gelu)
    assert got[0].shape == x.shape and got[0].dtype == expected[0].dtype == torch.float32
    assert got[1].shape == got[2].shape == (c,) and got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    g = expected[0] / gamma  # g' of the module docstring
    _assert_sums_close(got[1], expected[1], g * x.float())
    _assert_sums_close(got[2], expected[2], g)


def test_triton_kernel_over_many_programs():
    """More rows than one program takes (partial sums of several programs), and C over one column block."""
    grad, x, gamma, beta = _inputs(3, (700, 130), torch.float32, True, DEVICE)
    got = tb.tfts_backward_triton(grad, x, gamma, beta, gelu=True)
    expected = tb.tfts_backward_reference(grad, x, gamma, beta, gelu=True)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    g = expected[0] / gamma
    _assert_sums_close(got[1], expected[1], g * x)
    _assert_sums_close(got[2], expected[2], g)


def test_bad_inputs_are_named():
    grad, x, gamma, beta = _inputs(0, (4, 6), torch.float32, True)
    with pytest.raises(ValueError, match="same shape"):
        tb.tfts_backward(grad, x[:3], gamma)
    with pytest.raises(ValueError, match=r"gamma must have shape \(6,\)"):
        tb.tfts_backward(grad, x, gamma[:5])
    with pytest.raises(ValueError, match="beta"):
        tb.tfts_backward(grad, x, gamma, None, gelu=True)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        tb.tfts_backward_triton(grad.double(), x.double(), gamma.double())
