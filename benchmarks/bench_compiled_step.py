"""Training steps of DAPT and full fine-tuning, eager and compiled, side by side: compile time, median GPU
time, host time to issue a step, and memory, for each method, batch, precision and mode.

``fp32`` has TF32 off for matrix products and cuDNN, ``tf32`` on for both; ``bf16`` is bf16 autocast (TF32 off
for what stays in fp32). Modes: ``eager``, ``default`` (``torch.compile``, inductor) and ``reduce-overhead``
(inductor, the compiled forward and backward replayed as CUDA graphs). Methods: ``dapt`` (rank 64, pool
cls+prompt+patch, adapter dropout 0.5, the fused computation), ``full`` (every parameter trained, fused
attention) and ``full-plain`` (every parameter trained, the reference's unfused computation: the yardstick).
ScanObjectNN setting (2048 points, 128 groups of 32, 15 classes), Point-MAE 12 x 384 with drop path 0.1;
forward with grouping + cross entropy + backward + AdamW (fused); median of 10 steps after 3 warm-up steps. "compile
s" is the wall time of the first step (compilation included). Memory: the peak allocated during the timed
steps (blind to a CUDA graph's pool, which replays do not allocate from) and the memory reserved since the
model was built (which holds the pools; an upper bound).

``--parallel`` runs every row in its own process and compiles them all at once (compilation is CPU work and
the GPU has room for every model), then times the rows one process at a time, each alone on the GPU and
the CPUs: the timings are those of a sequential run, in a fraction of its wall time.

Run on a GPU:  PYTHONPATH=src python benchmarks/bench_compiled_step.py [--methods dapt full full-plain]
               [--batches 32 128] [--dtypes fp32 bf16] [--modes eager default reduce-overhead] [--parallel]
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_training import time_ms
from torch.nn import functional as F

import pointpeft
from pointpeft.backbones import PointMAE

METHODS = ("dapt", "full", "full-plain")
MODES = ("eager", "default", "reduce-overhead")
HEADER = (
    "| method | batch | precision | TF32 | mode | compile s | peak GiB | reserved GiB | GPU ms per step "
    "| host ms |\n|---|---|---|---|---|---|---|---|---|---|"
)


def build(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = PointMAE(drop_path_rate=0.1, pos_mode="once")
    if method == "dapt":
        config = pointpeft.DAPTConfig(num_classes=15, adapter_dropout=0.5)
        return pointpeft.wrap_with_dapt(backbone, config, execution="fused")
    execution = "plain" if method == "full-plain" else "fused"
    return pointpeft.full_finetune(backbone, 15, pool=("cls", "patch"), execution=execution)


def prepare(method: str, dtype: str, batch: int, mode: str) -> tuple[Callable[[], None], float, int]:
    """Build, compile and warm one row's step; returns the step, its first call's wall time (compilation
    included) and the memory reserved before the model was built."""
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    reserved_before = torch.cuda.memory_reserved()
    model = build(method).cuda().train()
    run = model if mode == "eager" else torch.compile(model, mode=None if mode == "default" else mode)
    # fused, as pointpeft train builds it on a GPU (train/optim.py)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    points = torch.rand(batch, 2048, 3, device="cuda") * 2 - 1
    labels = torch.randint(0, 15, (batch,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = run(points)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    return step, compile_s, reserved_before


def time_row(
    step: Callable[[], None],
    compile_s: float,
    reserved_before: int,
    method: str,
    dtype: str,
    batch: int,
    mode: str,
) -> str:
    torch.cuda.reset_peak_memory_stats()
    gpu_ms = time_ms(step, steps=10, warmup=0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    # A CUDA graph's memory pool is allocated while it records, before the peak above was reset, and its
    # replays allocate nothing: the memory reserved since the model was built counts it (an upper bound).
    reserved = (torch.cuda.memory_reserved() - reserved_before) / 2**30
    hosts = []
    for _ in range(10):
        torch.cuda.synchronize()
        begin_s = time.perf_counter()
        step()
        hosts.append((time.perf_counter() - begin_s) * 1e3)
    torch.cuda.synchronize()
    shown_mode = "eager" if mode == "eager" else f"compiled, {mode}"
    return (
        f"| {method} | {batch} | {'fp32' if dtype == 'tf32' else dtype} | {'on' if dtype == 'tf32' else 'off'} | "
        f"{shown_mode} | {compile_s:.0f} | {peak:.3f} | {reserved:.3f} | {gpu_ms:.1f} | "
        f"{statistics.median(hosts):.1f} |"
    )


def failed_row(method: str, dtype: str, batch: int, mode: str, error: BaseException) -> str:
    line = str(error).splitlines()[0][:200] if str(error) else ""
    return f"| {method} | {batch} | {dtype} | | {mode} | failed: {type(error).__name__}: {line} | | | | |"


def measure(method: str, dtype: str, batch: int, mode: str) -> str:
    try:
        prepared = prepare(method, dtype, batch, mode)
        return time_row(*prepared, method, dtype, batch, mode)
    except Exception as error:  # a compiler failure (or an out-of-memory) is a result here, not a crash
        return failed_row(method, dtype, batch, mode, error)


def one_of_many(method: str, dtype: str, batch: int, mode: str, sync: Path, index: int, count: int) -> str:
    """Row ``index`` of a ``--parallel`` run: compile and warm up, wait until all ``count`` rows have (or
    ended), then time this one while holding ``sync/lock`` (so that no two rows time at once)."""
    try:
        prepared: tuple[Callable[[], None], float, int] | None = prepare(method, dtype, batch, mode)
        error: BaseException | None = None
    except Exception as caught:
        prepared, error = None, caught
    (sync / f"ready.{index}").touch()
    while len(list(sync.glob("ready.*"))) < count:
        time.sleep(1.0)
    with open(sync / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if prepared is None:
                assert error is not None
                return failed_row(method, dtype, batch, mode, error)
            try:
                return time_row(*prepared, method, dtype, batch, mode)
            except Exception as caught:
                return failed_row(method, dtype, batch, mode, caught)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            fcntl.flock(lock, fcntl.LOCK_UN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["dapt"], choices=METHODS)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=["reduce-overhead"], choices=MODES)
    parser.add_argument("--parallel", action="store_true", help="compile every row at once (see above)")
    parser.add_argument(
        "--row", nargs=4, metavar=("METHOD", "DTYPE", "BATCH", "MODE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--sync", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    if args.row is not None:  # one row of a --parallel run
        method, dtype, batch, mode = args.row
        print(one_of_many(method, dtype, int(batch), mode, args.sync, args.index, args.count), flush=True)
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"# {device} | torch {torch.__version__} | pointpeft {pointpeft.__version__}")
    print(HEADER, flush=True)
    rows = list(itertools.product(args.methods, args.batches, args.dtypes, args.modes))
    if not args.parallel:
        for method, batch, dtype, mode in rows:
            print(measure(method, dtype, batch, mode), flush=True)
        return
    with tempfile.TemporaryDirectory() as sync:
        started = time.perf_counter()
        children = {
            index: subprocess.Popen(
                [sys.executable, __file__, "--row", method, dtype, str(batch), mode, "--sync", sync]
                + ["--index", str(index), "--count", str(len(rows))],
                stdout=subprocess.PIPE,
                text=True,
            )
            for index, (method, batch, dtype, mode) in enumerate(rows)
        }
        while children:  # print each row as its process ends; one that dies early still counts as ready
            for index, child in list(children.items()):
                if child.poll() is None:
                    continue
                (Path(sync) / f"ready.{index}").touch()
                out = child.stdout.read() if child.stdout is not None else ""
                lines = [line for line in out.splitlines() if line.startswith("|")]
                method, batch, dtype, mode = rows[index]
                died = f"| {method} | {batch} | {dtype} | | {mode} | no result (exit {child.returncode}) | | | | |"
                print(lines[-1] if lines else died, flush=True)
                del children[index]
            time.sleep(1.0)
        print(f"# {len(rows)} rows in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
