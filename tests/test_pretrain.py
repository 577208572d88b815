"""Point-MAE pre-training: the Chamfer-L2 loss against a loop over the points, the model against its
forward written out from the released code's steps, the released checkpoint layout read back by
``load_pretrained``, and the run (the loss falls, resuming gives the uninterrupted run, other settings are
refused, the CLI)."""

from __future__ import annotations

import io
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pointpeft
from pointpeft.backbones import PointMAE
from pointpeft.data import SyntheticShapes
from pointpeft.pretrain import PointMAEPretrainer, chamfer_l2, pretrain, random_mask

SIZES = dict(trans_dim=32, depth=2, num_heads=4, num_group=16, group_size=8, encoder_dims=32)


def _chamfer_by_loops(p: torch.Tensor, t: torch.Tensor) -> float:
    """The same distance, one point at a time in Python (float64)."""
    forward, backward = [], []
    for a, b in zip(p.double().tolist(), t.double().tolist(), strict=True):
        for x in a:
            forward.append(min(sum((xi - yi) ** 2 for xi, yi in zip(x, y, strict=True)) for y in b))
        for y in b:
            backward.append(min(sum((xi - yi) ** 2 for xi, yi in zip(x, y, strict=True)) for x in a))
    return sum(forward) / len(forward) + sum(backward) / len(backward)


@settings(max_examples=30, deadline=None)
@given(
    sets=st.integers(1, 4),
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    offset=st.sampled_from([0.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_chamfer_l2_is_the_mean_squared_nearest_distance_both_ways(sets, n, m, offset, seed):
    generator = torch.Generator().manual_seed(seed)
    p = torch.randn(sets, n, 3, generator=generator, dtype=torch.float64) + offset
    t = torch.randn(sets, m, 3, generator=generator, dtype=torch.float64) + offset
    got = chamfer_l2(p, t).item()
    assert got == pytest.approx(_chamfer_by_loops(p, t), rel=1e-12, abs=1e-12)
    # far from the origin too: differences, not |p|^2 + |t|^2 - 2 p.t
    assert chamfer_l2(p.float(), t.float()).item() == pytest.approx(got, rel=1e-4, abs=1e-5)


def test_chamfer_l2_refuses_bad_input_naming_it():
    with pytest.raises(ValueError, match=r"same number of sets"):
        chamfer_l2(torch.zeros(2, 3, 3), torch.zeros(3, 3, 3))
    with pytest.raises(TypeError, match=r"share dtype and device"):
        chamfer_l2(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"target must have shape \(B, N, 3\)"):
        chamfer_l2(torch.zeros(2, 3, 3), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"predicted must contain only finite coordinates"):
        chamfer_l2(torch.full((2, 3, 3), float("nan")), torch.zeros(2, 3, 3))


def _chamfer_by_min(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The same distance as a min over all pairs (autograd's gradient of ``min`` is the reference)."""
    squared = (p.unsqueeze(2) - t.unsqueeze(1)).square().sum(-1)
    return squared.min(dim=2).values.mean() + squared.min(dim=1).values.mean()


@settings(max_examples=15, deadline=None)
@given(
    sets=st.integers(1, 3),
    n=st.integers(1, 20),
    m=st.integers(1, 20),
    backend=st.sampled_from(["torch", "triton"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_chamfer_l2_gradient_is_that_of_the_min_on_each_backend(sets, n, m, backend, dtype, seed):
    """Both backends (Triton in its interpreter without a GPU) give the distance and the gradients of the
    all-pairs minimum: through the nearest point of each point, both ways."""
    if backend == "triton":
        pytest.importorskip("triton")
        if dtype == torch.float64:
            return  # the kernels take float16/bfloat16/float32
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(seed)
    p = torch.randn(sets, n, 3, generator=generator, dtype=dtype).to(device).requires_grad_()
    t = torch.randn(sets, m, 3, generator=generator, dtype=dtype).to(device).requires_grad_()
    got = chamfer_l2(p, t, backend=backend)
    want = _chamfer_by_min(p, t)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for a, b in zip(torch.autograd.grad(got, (p, t)), torch.autograd.grad(want, (p, t)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("groups", "ratio"), [(16, 0.6), (10, 0.6), (8, 0.0), (5, 0.9)])
def test_the_mask_hides_int_ratio_g_patches_of_each_cloud(groups, ratio):
    mask = random_mask(
        6, groups, ratio, generator=torch.Generator().manual_seed(0), device=torch.device("cpu")
    )
    assert mask.dtype == torch.bool and mask.shape == (6, groups)
    assert (mask.sum(1) == int(ratio * groups)).all()
    again = random_mask(
        6, groups, ratio, generator=torch.Generator().manual_seed(0), device=torch.device("cpu")
    )
    assert torch.equal(mask, again)
    if 0 < int(ratio * groups) < groups:
        assert not (mask == mask[0]).all()  # each cloud draws its own


def _model(seed: int = 0) -> PointMAEPretrainer:
    torch.manual_seed(seed)
    return PointMAEPretrainer(PointMAE(**SIZES, drop_path_rate=0.1), decoder_depth=2, decoder_num_heads=4)


def test_the_model_computes_the_released_forward_written_out():
    """Eval mode (no stochastic depth), float64: the loss equals the released steps written out here from
    the same modules (visible patches through the encoder with positions before every block, the decoder on
    them and one mask token per masked patch, increase_dim to K points, Chamfer-L2 by loops)."""
    model = _model().double().eval()
    points = torch.rand(2, 64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = model(points, generator=torch.Generator().manual_seed(7)).item()

    encoder = model.MAE_encoder
    neighborhood, center = encoder.group_divider(points)
    mask = random_mask(2, 16, 0.6, generator=torch.Generator().manual_seed(7), device=points.device)
    rows = []
    for b in range(2):
        vis, hid = (~mask[b]).nonzero().flatten(), mask[b].nonzero().flatten()
        x = encoder.encoder(neighborhood[b : b + 1, vis])
        pos = encoder.pos_embed(center[b : b + 1, vis])
        for block in encoder.blocks.blocks:
            x = block(x + pos)
        x = encoder.norm(x)
        tokens = torch.cat((x, model.mask_token.expand(1, len(hid), -1)), dim=1)
        pos = model.decoder_pos_embed(torch.cat((center[b : b + 1, vis], center[b : b + 1, hid]), dim=1))
        for block in model.MAE_decoder.blocks:
            tokens = block(tokens + pos)
        out = model.MAE_decoder.norm(tokens[:, -len(hid) :])
        conv = model.increase_dim[0]
        rebuilt = torch.einsum("bmc,oc->bmo", out, conv.weight[:, :, 0]) + conv.bias  # the 1x1 conv
        rows.append((rebuilt.reshape(len(hid), 8, 3), neighborhood[b, hid]))
    want = _chamfer_by_loops(torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]))
    assert got == pytest.approx(want, rel=1e-10)


def test_the_checkpoint_has_the_released_layout_and_load_pretrained_reads_it(tmp_path):
    model = _model()
    state = model.checkpoint_state_dict()
    heads = {k.split(".")[0] for k in state}
    assert heads == {"MAE_encoder", "mask_token", "decoder_pos_embed", "MAE_decoder", "increase_dim"}
    assert "MAE_encoder.cls_token" not in state and "increase_dim.0.weight" in state
    torch.save({"base_model": state, "epoch": 0}, tmp_path / "pretrain.pth")
    backbone = PointMAE(**SIZES)
    result = pointpeft.load_pretrained(backbone, tmp_path / "pretrain.pth")
    assert result.source == "point_mae" and sorted(result.missing_keys) == ["cls_pos", "cls_token"]
    assert all(k.split(".")[0] != "MAE_encoder" for k in result.unexpected_keys)
    for name, value in model.MAE_encoder.state_dict().items():
        if name not in ("cls_token", "cls_pos"):
            assert torch.equal(backbone.state_dict()[name], value), name


def test_the_model_refuses_what_it_cannot_pre_train():
    with pytest.raises(TypeError, match=r"backbone must be a pointpeft\.backbones\.PointMAE"):
        PointMAEPretrainer(torch.nn.Linear(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"encoder_dims == trans_dim"):
        PointMAEPretrainer(PointMAE(**{**SIZES, "encoder_dims": 24}))
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\), got 1\.0"):
        PointMAEPretrainer(PointMAE(**SIZES), mask_ratio=1.0)
    with pytest.raises(
        ValueError, match=r"decoder_num_heads \(6\) must divide the token width trans_dim \(32\)"
    ):
        PointMAEPretrainer(PointMAE(**SIZES))


def _run(folder, epochs: int, **kwargs):
    torch.manual_seed(0)
    return pretrain(
        folder,
        backbone=PointMAE(**SIZES, drop_path_rate=0.1),
        dataset=SyntheticShapes(32, 128, seed=0, cache=True),
        epochs=epochs,
        batch_size=8,
        warmup_epochs=1,
        npoints=96,
        decoder_num_heads=4,
        progress=False,
        **kwargs,
    )


def test_a_run_lowers_the_loss_and_a_finished_run_trains_nothing(tmp_path):
    whole = _run(tmp_path, 4)
    assert whole.epochs_run == 4 and len(whole.losses) == 4
    assert whole.losses[-1] < whole.losses[0]
    again = _run(tmp_path, 4)
    assert again.epochs_run == 0 and again.losses == whole.losses


class _DiesAfterFirstEpoch(io.StringIO):
    """An output whose first epoch line kills the run (after that epoch's files are written)."""

    def write(self, text: str) -> int:
        if text.startswith("epoch   1/"):
            raise KeyboardInterrupt
        return super().write(text)


def test_a_run_killed_after_an_epoch_resumes_to_the_uninterrupted_run_exactly(tmp_path):
    whole = _run(tmp_path / "whole", 3)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", 3, out=_DiesAfterFirstEpoch())
    assert len(torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["losses"]) == 1
    resumed = _run(tmp_path / "cut", 3)
    assert resumed.epochs_run == 2 and resumed.losses == whole.losses
    a = torch.load(whole.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["base_model"].keys() == b["base_model"].keys()
    for name, value in a["base_model"].items():
        assert torch.equal(b["base_model"][name], value), name


def test_a_last_pt_of_other_settings_is_refused_naming_them(tmp_path):
    _run(tmp_path, 1)
    with pytest.raises(ValueError, match=r"other settings \(saved, now\): \{'lr': \(0\.001, 0\.002\)\}"):
        _run(tmp_path, 2, lr=2e-3)


def test_pointpeft_pretrain_writes_what_pointpeft_train_loads(tmp_path, capsys):
    from pointpeft.cli import main
    from tiny_run import TINY

    sizes = ["--trans-dim", "32", "--depth", "1", "--num-heads", "4", "--num-group", "8", "--group-size", "8"]
    args = ["pretrain", "--epochs", "2", "--clouds", "16", "--batch-size", "8", "--npoints", "64"]
    args += [*sizes, "--decoder-num-heads", "4", "--warmup-epochs", "1", "--no-progress"]
    assert main([*args, "--output-dir", str(tmp_path / "pre")]) == 0
    out = capsys.readouterr().out
    checkpoint = tmp_path / "pre" / "pretrain.pth"
    assert "epoch   2/2" in out and f"checkpoint: {checkpoint}" in out
    assert (
        main(
            [
                "train",
                *TINY,
                "run.device=cpu",
                f"run.output_dir={tmp_path / 'run'}",
                f"model.pretrained={checkpoint}",
            ]
        )
        == 0
    )
    assert "read as point_mae; missing (kept as initialised): cls_token, cls_pos" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pretrain", "--clouds", "0"])


def test_pointpeft_pretrain_reads_the_training_split_of_a_scanobjectnn_folder(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    from pointpeft.cli import main
    from pointpeft.data.scanobjectnn import SCANOBJECTNN_FILES

    for split, count in (("train", 16), ("test", 4)):
        path = tmp_path / "scan" / SCANOBJECTNN_FILES["OBJ_ONLY"][split]
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=torch.rand(count, 80, 3).numpy())
            f.create_dataset("label", data=(torch.arange(count) % 15).numpy())
    sizes = ["--trans-dim", "32", "--depth", "1", "--num-heads", "4", "--num-group", "8", "--group-size", "8"]
    args = [
        "pretrain",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--npoints",
        "64",
        *sizes,
        "--decoder-num-heads",
        "4",
    ]
    args += ["--warmup-epochs", "0", "--no-progress", "--output-dir", str(tmp_path / "pre")]
    assert (
        main(
            [*args, "--data", "scanobjectnn", "--data-root", str(tmp_path / "scan"), "--variant", "OBJ_ONLY"]
        )
        == 0
    )
    assert "16 clouds" in capsys.readouterr().out  # the training split's
    result = pointpeft.load_pretrained(
        PointMAE(trans_dim=32, depth=1, num_heads=4, num_group=8, group_size=8, encoder_dims=32),
        tmp_path / "pre" / "pretrain.pth",
    )
    assert sorted(result.missing_keys) == ["cls_pos", "cls_token"]
    with pytest.raises(SystemExit):
        main([*args, "--data", "scanobjectnn"])  # no --data-root
    assert "--data scanobjectnn needs --data-root" in capsys.readouterr().err


def test_two_process_ddp_pretraining_writes_once_and_resumes(tmp_path):
    """`torchrun --nproc_per_node=2 -m pointpeft pretrain ...` on CPU (gloo): the run finishes under DDP (every
    trained parameter used), rank 0 alone prints and writes, the checkpoint loads, and a second torchrun with
    more epochs continues the run from its last.pt."""
    import os
    import pathlib
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    src = str(pathlib.Path(__file__).parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    sizes = ["--trans-dim", "32", "--depth", "1", "--num-heads", "4", "--num-group", "8", "--group-size", "8"]

    def run(epochs: int) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "pointpeft", "pretrain", "--epochs", str(epochs), "--clouds", "32", "--batch-size", "8",
            "--npoints", "64", *sizes, "--decoder-num-heads", "4", "--warmup-epochs", "1", "--no-progress",
            "--output-dir", str(tmp_path),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    first = run(2)
    assert first.stdout.count("epoch   1/2") == 1 and first.stdout.count("checkpoint:") == 1  # rank 0 alone
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert len(saved["losses"]) == 2 and all(0 < loss < float("inf") for loss in saved["losses"])
    second = run(3)
    assert (
        "resumed from" in second.stdout
        and "epoch   3/3" in second.stdout
        and "epoch   1/" not in second.stdout
    )
    resumed = torch.load(tmp_path / "last.pt", weights_only=True)
    assert resumed["losses"][:2] == saved["losses"] and len(resumed["losses"]) == 3
    result = pointpeft.load_pretrained(
        PointMAE(trans_dim=32, depth=1, num_heads=4, num_group=8, group_size=8, encoder_dims=32),
        tmp_path / "pretrain.pth",
    )
    assert set(result.missing_keys) == {"cls_token", "cls_pos"}


def test_pretraining_gives_back_the_cls_tensors_trainable(tmp_path):
    """The CLS tensors are frozen while pre-training runs (it does not use them) and trainable again after,
    as they were: a full fine-tuning of the same backbone afterwards trains them."""
    backbone = PointMAE(**SIZES)
    pretrain(
        tmp_path,
        backbone=backbone,
        dataset=SyntheticShapes(8, 96, seed=0, cache=True),
        epochs=1,
        batch_size=8,
        npoints=96,
        decoder_num_heads=4,
        progress=False,
        out=io.StringIO(),
    )
    assert backbone.cls_token.requires_grad and backbone.cls_pos.requires_grad


def test_pointpeft_pretrain_synthetic_clouds_are_none_of_pointpeft_trains(monkeypatch, tmp_path, capsys):
    """--data synthetic draws --clouds clouds of --synthetic-points points of --classes classes from seeds that
    pointpeft train's synthetic sets (seeds run.seed and run.seed + 1,000,003) do not use."""
    from pointpeft import cli

    seen = {}

    def fake_pretrain(output_dir, *, dataset, **kwargs):
        seen["dataset"] = dataset
        raise SystemExit(0)

    monkeypatch.setattr("pointpeft.pretrain.pretrain", fake_pretrain)
    args = ["pretrain", "--clouds", "12", "--npoints", "64", "--synthetic-points", "128", "--classes", "5"]
    with pytest.raises(SystemExit):
        cli.main([*args, "--seed", "3", "--output-dir", str(tmp_path)])
    data = seen["dataset"]
    assert (len(data), data.num_points, data.num_classes, data.seed) == (12, 128, 5, cli.SYNTHETIC_SEED + 3)
    assert cli.SYNTHETIC_SEED > 1_000_003 + 1000
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrain", "--npoints", "64", "--synthetic-points", "32"])
    assert (
        exit_info.value.code == 2
        and "--synthetic-points (32) must be >= --npoints (64)" in capsys.readouterr().err
    )


def test_a_bad_device_is_refused_naming_the_argument(tmp_path):
    """pretrain's device errors name ``device`` (its argument), not pointpeft train's ``run.device``."""
    with pytest.raises(ValueError, match=r"^device must") as bad:
        _run(tmp_path, 1, device="gpu")
    assert "run.device" not in str(bad.value)
    if not torch.cuda.is_available():
        with pytest.raises(
            ValueError, match=r"^device = 'cuda' but torch sees no CUDA GPU .* use device=cpu"
        ):
            _run(tmp_path, 1, device="cuda")
