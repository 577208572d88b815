"""GPU-only checks (skipped without CUDA): ops and DAPT on a CUDA device agree with the CPU."""

from __future__ import annotations

import pytest
import torch

import pointpeft
from pointpeft.ops import farthest_point_sample, group, knn
from reference_dapt import reference_state_dict

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _no_tf32():
    # cuDNN convolutions default to TF32, which would blur the CPU/GPU comparison of the patch encoder.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_ops_on_cuda_match_cpu(dtype):
    gen = torch.Generator().manual_seed(0)
    xyz = (torch.rand(4, 2048, 3, generator=gen) * 2 - 1).to(dtype)
    cpu_idx = farthest_point_sample(xyz, 128)
    gpu_idx = farthest_point_sample(xyz.cuda(), 128)
    assert gpu_idx.device.type == "cuda" and gpu_idx.dtype == torch.int64
    assert torch.equal(gpu_idx.cpu(), cpu_idx)
    centers = torch.gather(xyz, 1, cpu_idx[..., None].expand(-1, -1, 3))
    cpu = knn(centers, xyz, 32)
    gpu = knn(centers.cuda(), xyz.cuda(), 32)
    assert torch.equal(gpu.idx.cpu(), cpu.idx)
    torch.testing.assert_close(gpu.sq_dist.cpu(), cpu.sq_dist)
    neighborhood, _ = group(xyz.cuda(), 128, 32)
    assert neighborhood.shape == (4, 128, 32, 3) and neighborhood.dtype == dtype


def test_reference_import_on_cuda_matches_cpu():
    sd = reference_state_dict(dim=64, depth=4, rank=16, num_classes=7, seed=2)
    model = pointpeft.load_reference_dapt(sd, num_heads=4, num_group=32, group_size=16)
    points = torch.rand(8, 512, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = model(points)
        got = model.cuda()(points.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)


def test_wrap_and_train_on_cuda():
    backbone = pointpeft.backbones.PointMAE(
        trans_dim=64, depth=2, num_heads=4, num_group=32, group_size=16, encoder_dims=64
    ).cuda()
    model = pointpeft.wrap_with_dapt(backbone, pointpeft.DAPTConfig(num_classes=5, rank=8))
    assert all(p.device.type == "cuda" for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    points = torch.rand(6, 1024, 3, device="cuda")
    loss = torch.nn.functional.cross_entropy(model(points), torch.arange(6, device="cuda") % 5)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_fused_execution_on_cuda_equals_plain():
    """The fused blocks on the GPU (fused attention there too): within 1e-5 of the plain path in fp32 on
    the logits and every gradient; under bf16 autocast they run and give finite float32 gradients."""
    from test_fused import _assert_same_step, _point_mae_like, _step

    model, points = _point_mae_like(dict(rank=16, adapter_dropout=0.3), train=True)
    model, points = model.cuda(), points.cuda()
    plain = _step(model, points, 0)
    for execution in ("fused", "recompute"):
        model.execution = execution
        _assert_same_step(_step(model, points, 0), plain, 1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, grads = _step(model, points, 0)
    assert torch.isfinite(logits).all()
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
