"""Training cost of DAPT against full fine-tuning: peak memory and median step time, side by side.

One step = forward (grouping included) + backward + AdamW step, ScanObjectNN setting (2048 points,
128 groups x 32, 15 classes), Point-MAE at its defaults. Full fine-tuning is the reference's computation
(eager, unfused attention, every parameter trained); DAPT is pointpeft's default path. Also: inference
time of DAPT against the frozen backbone's own forward.

Run on a GPU:  PYTHONPATH=src python benchmarks/bench_training.py [--batches 32 128 512] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE


def _build(method: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = PointMAE(drop_path_rate=0.1, pos_mode="once")
    if method == "full":
        model = pointpeft.full_finetune(backbone, 15, pool=("cls", "patch"))
    else:
        model = pointpeft.wrap_with_dapt(backbone, pointpeft.DAPTConfig(num_classes=15, adapter_dropout=0.5))
    return model.to(device).train()


def _time_steps(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_training(
    method: str, dtype: str, batch: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """``(peak GiB, median ms)`` of a training step."""
    torch.cuda.empty_cache()  # the previous configuration's tensors are gone with its frames
    model = _build(method, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    points = torch.rand(batch, 2048, 3, device=device, generator=gen) * 2 - 1
    labels = torch.randint(0, 15, (batch,), device=device, generator=gen)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(points)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # allocate optimizer state before measuring
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = _time_steps(step, steps, warmup=2)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return peak, ms


@torch.no_grad()
def measure_inference(batch: int, steps: int, device: torch.device) -> tuple[float, float]:
    """``(frozen backbone ms, DAPT ms)`` of an eval forward (grouping included)."""
    points = torch.rand(batch, 2048, 3, device=device) * 2 - 1
    torch.manual_seed(0)
    backbone = PointMAE(pos_mode="once").to(device).eval()
    bare = _time_steps(lambda: backbone(points), steps, warmup=3)
    model = _build("dapt", device).eval()
    dapt = _time_steps(lambda: model(points), steps, warmup=3)
    return bare, dapt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--no-cudnn",
        action="store_true",
        help="disable cuDNN (its Conv1d weight-gradient workspace dominates full fine-tuning's peak)",
    )
    args = parser.parse_args()
    torch.backends.cudnn.enabled = not args.no_cudnn
    if not torch.cuda.is_available():
        raise SystemExit("bench_training.py measures GPU memory and time: it needs a CUDA device")
    device = torch.device("cuda")
    print(
        f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | pointpeft {pointpeft.__version__} | "
        f"cuDNN {'off' if args.no_cudnn else 'on'}"
    )
    print(
        "| batch | dtype | method | peak GiB | step ms | memory / plain full FT fp32 | time / plain full FT fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch in args.batches:
        base = None
        for dtype in ("fp32", "bf16"):
            for method in ("full", "dapt"):
                peak, ms = measure_training(method, dtype, batch, args.steps, device)
                if base is None:
                    base = (peak, ms)
                print(
                    f"| {batch} | {dtype} | {method} | {peak:.3f} | {ms:.1f} | {peak / base[0]:.3f} | "
                    f"{ms / base[1]:.3f} |",
                    flush=True,
                )
    for batch in (128,):
        bare, dapt = measure_inference(batch, args.steps, device)
        print(
            f"inference, batch {batch}: frozen backbone {bare:.1f} ms, DAPT {dapt:.1f} ms, ratio {dapt / bare:.3f}"
        )


if __name__ == "__main__":
    main()
