"""Triton kernel of the TFTS backward (private; imported on first use by
:mod:`pointpeft.dapt.tfts_backward`, so that CPU-only users never import triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tfts_backward_kernel(
    g_ptr,
    x_ptr,
    gamma_ptr,
    beta_ptr,
    dx_ptr,
    part_gamma_ptr,
    part_beta_ptr,
    n_rows,
    n_cols,
    rows_per_program,
    GELU: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program: ``rows_per_program`` rows × ``BLOCK_C`` columns of contiguous ``(N, C)`` inputs.

    ``g`` is d/d(output), ``x`` the TFTS input. With GELU, the output is ``GELU(x·γ + β)`` and ``g`` is
    first multiplied by the GELU derivative. Writes ``dx = g·γ`` and this program's column sums of
    ``g·x`` and ``g`` (to ``part_*[program row, :]``). All arithmetic in float32.
    """
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < n_cols
    gamma = tl.load(gamma_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if GELU:
        beta = tl.load(beta_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    acc_gamma = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_beta = tl.zeros([BLOCK_C], dtype=tl.float32)
    first = pid_n * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    for start in range(first, last, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        mask = (rows < last)[:, None] & col_mask[None, :]
        offsets = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            t = x * gamma[None, :] + beta[None, :]
            cdf = 0.5 * (1.0 + tl.math.erf(t * 0.7071067811865476))
            pdf = tl.exp(-0.5 * t * t) * 0.3989422804014327
            g = g * (cdf + t * pdf)
        tl.store(dx_ptr + offsets, (g * gamma[None, :]).to(dx_ptr.dtype.element_ty), mask=mask)
        acc_gamma += tl.sum(g * x, axis=0)
        acc_beta += tl.sum(g, axis=0)
    out = pid_n * n_cols + cols
    tl.store(part_gamma_ptr + out, acc_gamma, mask=col_mask)
    tl.store(part_beta_ptr + out, acc_beta, mask=col_mask)
