"""Training memory and step time of every PEFT method of ``pointpeft.get_peft_model``, side by side on one GPU.

Usage: ``PYTHONPATH=src python benchmarks/bench_methods.py [--batches 32,128] [--precisions fp32,bf16]
[--steps 20]``

The ScanObjectNN setting: Point-MAE 12×384 (``drop_path_rate=0.1``), 2,048 points per cloud, 128 groups of 32,
15 classes. One step is the forward with grouping, cross entropy, backward and AdamW on a fixed random batch,
eager, fused execution. ``fp32`` has TF32 off for matrix products and cuDNN; ``bf16`` is bf16 autocast with TF32
off. Each row: trainable parameters, peak GiB allocated during the timed steps, and the median of CUDA-event
timings after warm-up (the batch and the timing of bench_training.py). Every method's config is its default (the paper's hyper-parameters where the method's
docs give them).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import subprocess
from collections.abc import Callable

import torch
from bench_training import fixed_batch, time_ms
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE

NUM_CLASSES = 15  # the classes of bench_training.py's fixed batch

#: Method name → its config with the benchmark's head (15 classes).
CONFIGS: dict[str, Callable[[], pointpeft.methods.plan.MethodConfig]] = {
    "full_finetune": lambda: pointpeft.FullFinetuneConfig(num_classes=NUM_CLASSES),
    "linear_probe": lambda: pointpeft.LinearProbeConfig(num_classes=NUM_CLASSES),
    "bitfit": lambda: pointpeft.BitFitConfig(num_classes=NUM_CLASSES),
    "ssf": lambda: pointpeft.SSFConfig(num_classes=NUM_CLASSES),
    "adapter": lambda: pointpeft.AdapterConfig(num_classes=NUM_CLASSES),
    "vpt": lambda: pointpeft.VPTConfig(num_classes=NUM_CLASSES),
    "vpt_shallow": lambda: pointpeft.VPTConfig(num_classes=NUM_CLASSES, deep=False),
    "lora": lambda: pointpeft.LoRAConfig(num_classes=NUM_CLASSES),
    "idpt": lambda: pointpeft.IDPTConfig(num_classes=NUM_CLASSES),
    "pointgst": lambda: pointpeft.PointGSTConfig(num_classes=NUM_CLASSES),
    "pointlora": lambda: pointpeft.PointLoRAConfig(num_classes=NUM_CLASSES),
    "dapt": lambda: pointpeft.DAPTConfig(num_classes=NUM_CLASSES),
}


def set_precision() -> None:
    """TF32 off for matrix products and cuDNN (both precisions: bf16 rows differ only by autocast)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def build(method: str, device: torch.device) -> torch.nn.Module:
    """``method``'s model on a fresh Point-MAE (seed 0), in train mode on ``device``."""
    torch.manual_seed(0)
    backbone = PointMAE(drop_path_rate=0.1)
    return pointpeft.get_peft_model(backbone, CONFIGS[method]()).to(device).train()


def make_step(model: torch.nn.Module, precision: str, batch: int, device: torch.device) -> Callable[[], None]:
    """One forward + cross entropy (+ the method's auxiliary loss) + backward + AdamW step on the fixed random
    ``(batch, 2048, 3)`` batch of bench_training.py."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    points, labels = fixed_batch(batch, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(points)
        loss = F.cross_entropy(logits.float(), labels)
        # PointLoRA's mask loss, as pointpeft train adds it
        auxiliary = getattr(model, "auxiliary_loss", None)
        if auxiliary is not None:
            loss = loss + auxiliary
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(
    method: str, precision: str, batch: int, steps: int, device: torch.device
) -> tuple[int, float, float]:
    """``(trainable parameters, peak GiB, median ms)`` of ``method``'s training step."""
    gc.collect()
    torch.cuda.empty_cache()
    model = build(method, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step = make_step(model, precision, batch, device)
    for _ in range(3):  # optimizer state, cuDNN algorithm search, Triton autotuning
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()  # the peak of the timed steps alone
    ms = time_ms(step, steps, warmup=0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, step
    return trainable, peak, ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--methods", default=",".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_methods.py needs a CUDA GPU")
    device = torch.device("cuda")
    set_precision()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
        f"date {datetime.date.today()}; commit {commit or 'unknown'}; eager, fused execution, TF32 off"
    )
    print("| method | batch | precision | trainable | peak GiB | ms per step | × full fine-tuning |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            full_ms = None
            for method in args.methods.split(","):
                trainable, peak, ms = measure(method, precision, batch, args.steps, device)
                if method == "full_finetune":
                    full_ms = ms
                ratio = f"{ms / full_ms:.2f}" if full_ms else "–"
                print(
                    f"| {method} | {batch} | {precision} | {trainable:,} | {peak:.2f} | {ms:.1f} | {ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
