"""DistributedDataParallel on CPU (gloo, 2 processes): DAPT's trainable set is DDP-safe.

Every parameter with ``requires_grad=True`` gets a gradient on every step, so
``DistributedDataParallel(model, find_unused_parameters=False)`` trains without the "Expected to have
finished reduction in the prior iteration" error, also where the head does not pool the prompts.

The workers are started with the ``spawn`` method, which re-imports this module by name in each child;
``multiprocessing`` hands the parent's ``sys.path`` (``src`` and ``tests``) to the children first.
"""

from __future__ import annotations

import datetime
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.multiprocessing.spawn import ProcessException
from torch.nn.parallel import DistributedDataParallel

from conftest import SMALL
from pointpeft import DAPTConfig, wrap_with_dapt
from pointpeft.backbones import PointMAE

if not dist.is_available():
    pytest.skip("torch.distributed is not available in this build of torch", allow_module_level=True)
if not dist.is_gloo_available():
    pytest.skip("the gloo backend of torch.distributed is not available", allow_module_level=True)

WORLD_SIZE = 2
STEPS = 3
BATCH = 4  # per rank; the head's BatchNorm needs >= 2 samples in train mode
NUM_CLASSES = 4


def _ddp_worker(rank: int, world_size: int, init_method: str, pool: tuple[str, ...], out_dir: str) -> None:
    """One rank: wrap the small backbone with DAPT, train it under DDP, save what the parent asserts."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only; no network needed
    dist.init_process_group(
        "gloo",
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.manual_seed(0)  # the same model on every rank
        model = wrap_with_dapt(PointMAE(**SMALL), DAPTConfig(num_classes=NUM_CLASSES, rank=8, pool=pool))
        model.train()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        # weight_decay=0: a parameter moves only if it got a non-zero gradient
        optimizer = torch.optim.AdamW(
            [p for p in ddp.parameters() if p.requires_grad], lr=1e-2, weight_decay=0
        )

        gen = torch.Generator().manual_seed(1000 + rank)  # different data on every rank
        losses, missing_grads = [], set()
        for _ in range(STEPS):
            points = torch.rand(BATCH, 96, 3, generator=gen) * 2 - 1
            labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(points), labels)
            loss.backward()
            missing_grads |= {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
            optimizer.step()
            losses.append(loss.item())

        # The largest difference of each trainable parameter to the same parameter on the other ranks.
        cross_rank_diff = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                gathered = [torch.empty_like(param) for _ in range(world_size)]
                dist.all_gather(gathered, param.detach().contiguous())
                cross_rank_diff[name] = max((g - param).abs().max().item() for g in gathered)
        final = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(
            {
                "names": names,
                "initial": initial,
                "final": final,
                "losses": losses,
                "missing_grads": sorted(missing_grads),
                "cross_rank_diff": cross_rank_diff,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("pool", [("cls", "patch"), ("cls", "prompt", "patch")], ids=lambda p: "+".join(p))
def test_ddp_trains_without_find_unused_parameters(tmp_path, pool):
    """Under DDP with ``find_unused_parameters=False`` and different data per rank, 3 AdamW steps run
    without error (an unused trainable parameter fails the second step); every trainable parameter gets a
    gradient on every step and moves; and after the steps all trainable parameters are identical on both
    ranks, i.e. DDP averaged the gradients of all of them."""
    init_method = f"file://{tmp_path}/rendezvous"
    failure = None
    try:
        mp.spawn(
            _ddp_worker, args=(WORLD_SIZE, init_method, pool, str(tmp_path)), nprocs=WORLD_SIZE, join=True
        )
    except ProcessException as exc:  # a child raised or died; a raised error's traceback is in the message
        failure = f"a DDP worker failed (pool={pool}):\n{exc}"
    if failure is not None:  # outside the except block, so that the child's traceback is shown once
        pytest.fail(failure, pytrace=False)

    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    names = results[0]["names"]
    assert names, "DAPT has no trainable parameters"
    assert all(r["names"] == names for r in results)

    for rank, res in enumerate(results):
        assert res["missing_grads"] == [], f"rank {rank}: trainable parameters without a gradient"
        not_moved = [n for n in names if torch.equal(res["initial"][n], res["final"][n])]
        assert not_moved == [], f"rank {rank}: trainable parameters that did not change"
        assert res["cross_rank_diff"] == {n: 0.0 for n in names}, f"rank {rank}: all_gather saw differences"

    # The ranks saw different data (else identical parameters would prove nothing) ...
    assert results[0]["losses"] != results[1]["losses"]
    # ... and still ended with the same parameters.
    differ = [n for n in names if not torch.equal(results[0]["final"][n], results[1]["final"][n])]
    assert differ == [], f"trainable parameters differ across ranks after the steps: {differ}"
