"""Where a training step's GPU time goes: the CUDA kernels of a few steps, grouped and summed.

Run on a GPU:  PYTHONPATH=src python benchmarks/profile_training.py [--method dapt-fused] [--batch 128]
               [--dtype fp32|bf16] [--rows 25]

It also times the attention alone (forward + backward at the block's shape) three ways: unfused
(matmul + softmax, as the reference), and ``scaled_dot_product_attention`` with the memory-efficient and
the math backends.
"""

from __future__ import annotations

import argparse

import torch
from bench_training import METHODS, make_step, time_ms
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile


def profile_step(method: str, batch: int, dtype: str, rows: int) -> None:
    step = make_step(method, dtype, batch, torch.device("cuda"))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(f"## {method}, batch {batch}, {dtype}: CUDA kernels over 3 steps")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))


def attention_variants(batch: int, length: int, heads: int, dim: int, dtype: torch.dtype) -> None:
    device = torch.device("cuda")
    q, k, v = (
        torch.randn(batch, heads, length, dim, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    )
    grad = torch.randn(batch, heads, length, dim, device=device, dtype=dtype)
    scale = dim**-0.5

    def unfused() -> None:
        attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        torch.autograd.backward(attn @ v, grad)

    def sdpa(backend) -> None:
        with torch.nn.attention.sdpa_kernel(backend):
            torch.autograd.backward(F.scaled_dot_product_attention(q, k, v, scale=scale), grad)

    from torch.nn.attention import SDPBackend

    print(f"## attention forward + backward, (B, H, L, D) = ({batch}, {heads}, {length}, {dim}), {dtype}")
    print(f"  unfused (matmul + softmax): {time_ms(unfused, 20, 3):.3f} ms")
    backends = [("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)]
    if dtype != torch.float32:
        backends.append(("flash", SDPBackend.FLASH_ATTENTION))
    for name, backend in backends:
        try:
            print(f"  sdpa {name}: {time_ms(lambda b=backend: sdpa(b), 20, 3):.3f} ms")
        except RuntimeError as error:
            print(f"  sdpa {name}: not available ({str(error).splitlines()[0][:80]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", nargs="+", default=["dapt-fused"], choices=METHODS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    for method in args.method:
        for dtype in args.dtype:
            profile_step(method, args.batch, dtype, args.rows)
    for dtype in (torch.float32, torch.bfloat16):
        attention_variants(args.batch, 135, 6, 64, dtype)


if __name__ == "__main__":
    main()
