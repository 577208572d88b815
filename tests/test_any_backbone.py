"""Any backbone through the training CLI and pointpeft.train.train: the built-ins of BACKBONES, a
``model.factory``, a backbone / datasets given in Python; adapter folders that describe their backbone and
data, so that ``pointpeft eval --adapter DIR`` needs no YAML and ``load_adapter(DIR)`` needs no backbone."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from torch.utils.data import Dataset

import pointpeft
from pointpeft.backbones import BACKBONES, PointMAE
from pointpeft.cli import main
from pointpeft.train import adapter_run_config, build_backbone, build_model, load_config, train

TINY = [
    "data.npoints=128",
    "data.synthetic_points=128",
    "data.synthetic_classes=4",
    "data.synthetic_train=16",
    "data.synthetic_test=8",
    "model.init=default",
    "dapt.rank=4",
    "optim.batch_size=8",
    "optim.eval_batch_size=8",
    "optim.warmup_epochs=0",
    "optim.epochs=2",
    "run.progress=false",
    "run.threads=1",
    "run.device=cpu",  # the same numbers on a machine with a GPU
]
ARCH = [
    "model.trans_dim=48",
    "model.depth=2",
    "model.num_heads=2",
    "model.num_group=16",
    "model.group_size=8",
]
FACTORY = "tests.any_backbone_factories:official_point_mae"
FACTORY_ARGS = "model.args={trans_dim: 48, depth: 2, num_heads: 2, num_group: 16, group_size: 8}"


def _cli(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _train_and_eval(capsys, tmp_path, overrides: list[str]) -> tuple[str, float, list[str]]:
    """Train through the CLI; evaluate ``best/`` without a YAML; return the folder, the accuracy and the
    config's overrides."""
    run = [*TINY, *overrides, f"run.output_dir={tmp_path / 'run'}"]
    printed = _cli(capsys, "train", *run)
    best = float(re.search(r"best test accuracy ([0-9.]+)%", printed).group(1))
    folder = str(tmp_path / "run" / "best")
    evaluated = _cli(capsys, "eval", "--adapter", folder, "run.progress=false", "run.device=cpu")
    assert re.search(r"test accuracy ([0-9.]+)% \(8 clouds", evaluated).group(1) == f"{best:.2f}"
    return folder, best, run


def _points(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 128, 3, generator=torch.Generator().manual_seed(seed))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_points())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_builtin_trains_and_its_adapter_describes_itself(name, capsys, tmp_path):
    folder, _, run = _train_and_eval(capsys, tmp_path, [f"model.backbone={name}", *ARCH])
    saved = json.loads(open(os.path.join(folder, "adapter_config.json")).read())
    record = saved["backbone"]
    assert record["builtin"] == name and record["pretrained"] is None and record["seed"] == 0
    assert record["init"] == "default" and len(record["weights_sha256"]) == 64
    assert {"trans_dim": 48, "depth": 2, "num_group": 16}.items() <= record["args"].items()
    assert saved["data"]["npoints"] == 128 and saved["data"]["num_classes"] == 4
    assert saved["data"]["dataset"] == "synthetic"
    rebuilt = pointpeft.load_adapter(folder)  # no backbone: rebuilt from the folder
    assert type(rebuilt.base_model) is BACKBONES[name]
    config = load_config(None, run)
    from_config = pointpeft.load_adapter(build_backbone(config), folder)
    assert torch.equal(_logits(rebuilt), _logits(from_config))


def test_a_factory_trains_and_evaluates_without_yaml(capsys, tmp_path):
    folder, _, run = _train_and_eval(capsys, tmp_path, [f"model.factory={FACTORY}", FACTORY_ARGS])
    record = json.loads(open(os.path.join(folder, "adapter_config.json")).read())["backbone"]
    assert record["factory"] == FACTORY and "builtin" not in record
    assert record["args"] == {"trans_dim": 48, "depth": 2, "num_heads": 2, "num_group": 16, "group_size": 8}
    rebuilt = pointpeft.load_adapter(folder)
    assert type(rebuilt.base_model).__name__ == "PointTransformer"
    from_config = pointpeft.load_adapter(build_backbone(load_config(None, run)), folder)
    assert torch.equal(_logits(rebuilt), _logits(from_config))


def test_eval_overrides_still_apply_without_yaml(capsys, tmp_path):
    folder, _, _ = _train_and_eval(capsys, tmp_path, ["model.backbone=point_mae", *ARCH, "optim.epochs=1"])
    printed = _cli(
        capsys, "eval", "--adapter", folder, "data.synthetic_test=4", "run.progress=false", "run.device=cpu"
    )
    assert "(4 clouds" in printed
    with pytest.raises(SystemExit) as error:
        main(["eval", "--adapter", folder, "model.depth=3", "run.progress=false"])
    assert error.value.code == 2
    assert "depth" in capsys.readouterr().err


def _config(tmp_path, *extra: str) -> dict:
    return load_config(None, [*TINY, *ARCH, "optim.epochs=1", f"run.output_dir={tmp_path}", *extra])


def test_load_adapter_without_backbone_gives_the_trained_models_logits(tmp_path):
    config = _config(tmp_path)
    torch.manual_seed(0)
    model = build_model(config, 4)
    train(config, model=model, out=open(os.devnull, "w"))  # one epoch: best/ is the model as it ends
    rebuilt = pointpeft.load_adapter(tmp_path / "best")
    assert torch.equal(_logits(rebuilt), _logits(model))


class UserBackbone(PointMAE):
    """A backbone class of the user's (not in BACKBONES): its adapter folder records no backbone."""


class Clouds(Dataset):
    def __init__(self, n: int, seed: int, classes: int = 3) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.points = torch.randn(n, 128, 3, generator=generator)
        self.labels = [i % classes for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.points[index], self.labels[index]


def _user_backbone() -> UserBackbone:
    torch.manual_seed(7)
    return UserBackbone(trans_dim=48, depth=2, num_heads=2, num_group=16, group_size=8, encoder_dims=48)


def test_train_takes_a_user_backbone_and_datasets(tmp_path):
    config = _config(tmp_path)
    lines = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    result = train(config, model=_user_backbone(), datasets=(Clouds(16, 0), Clouds(6, 1)), out=Out())
    assert result.epochs_run == 1
    assert "num_classes 3 (inferred: the largest label of the given datasets plus one)" in "".join(lines)
    folder = tmp_path / "best"
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert "backbone" not in saved and saved["data"]["dataset"] is None and saved["data"]["num_classes"] == 3
    with pytest.raises(ValueError, match=r"records no backbone .*pointpeft\.load_adapter\(backbone, DIR\)"):
        pointpeft.load_adapter(folder)
    model = pointpeft.load_adapter(_user_backbone(), folder)
    assert model.configs["default"].num_classes == 3
    with pytest.raises(ValueError, match=r"datasets given to pointpeft\.train\.train"):
        adapter_run_config(folder)


def test_data_num_classes_is_used_for_given_datasets(tmp_path):
    config = _config(tmp_path, "data.num_classes=5")
    train(config, model=_user_backbone(), datasets=(Clouds(16, 0), Clouds(6, 1)), out=open(os.devnull, "w"))
    assert pointpeft.load_adapter(_user_backbone(), tmp_path / "best").configs["default"].num_classes == 5


@pytest.mark.parametrize(
    ("datasets", "error", "match"),
    [
        (
            [Clouds(8, 0)],
            TypeError,
            r"datasets must be a \(train, test\) pair of torch Datasets, got list of 1",
        ),
        ((Clouds(8, 0), 3), TypeError, r"the test set must be a torch Dataset .*got int"),
        ((Clouds(8, 0), Clouds(0, 1)), ValueError, "the test set is empty"),
        ((Clouds(8, 0, classes=1), Clouds(4, 1, classes=1)), ValueError, "set data.num_classes"),
    ],
)
def test_bad_datasets_are_refused(tmp_path, datasets, error, match):
    with pytest.raises(error, match=match):
        train(_config(tmp_path), model=_user_backbone(), datasets=datasets, out=open(os.devnull, "w"))


def test_a_dapt_model_whose_head_does_not_fit_the_data_is_refused(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(ValueError, match="head has 7 classes but the data has 4"):
        train(config, model=build_model(config, 7), out=open(os.devnull, "w"))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module backbone or a pointpeft.DAPTModel"):
        train(config, model="point_mae", out=open(os.devnull, "w"))


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["model.backbone=pointnet"], ValueError, r"model\.backbone must be one of \('point_mae', .*got 'pointnet'"),
        (["model.factory=tests.any_backbone_factories"], ValueError, r"model\.factory must be 'package\.module:function'"),
        (["model.factory=a b:c"], ValueError, r"model\.factory must be 'package\.module:function'"),
        (["model.backbone=recon", f"model.factory={FACTORY}"], ValueError,
         r"model\.backbone \('recon'\) and model\.factory \(.*\) are both set"),
        (["model.backbone=point_mae", f"model.factory={FACTORY}"], ValueError, "are both set"),
        (["model.backbone=null"], ValueError, r"model\.backbone and model\.factory are both null"),
        (["model.backbone=recon", "model.pos_mode=every_block"], ValueError,
         r"model\.pos_mode is set \('every_block'\) but model\.backbone='recon' \(ReCon\) does not take pos_mode"),
        (["model.backbone=pointgpt", "model.drop_path_rate=0.1"], ValueError,
         r"model\.drop_path_rate is set \(0\.1\) but model\.backbone='pointgpt' \(PointGPT\) does not take"),
        ([f"model.factory={FACTORY}", "model.depth=2"], ValueError,
         r"model\.depth is set \(2\) but model\.factory=.* does not take depth: .*put depth in model\.args"),
        (["model.args.patch_encoder=large"], ValueError,
         r"model\.args\.patch_encoder: model\.backbone='point_mae' \(PointMAE\) does not take patch_encoder"),
        (["model.args.depth=3"], ValueError, r"model\.args\.depth: depth is a model key; set model\.depth instead"),
        (["model.args=[1, 2]"], TypeError, r"model\.args must be a mapping of argument names to values"),
        (["model.args={x: .nan}"], ValueError, r"model\.args\.x must be a finite number"),
        (["model.layout=somewhere"], ValueError, r"model\.layout must be one of \("),
    ],
)  # fmt: skip
def test_bad_backbone_settings_name_the_key(overrides, error, match):
    with pytest.raises(error, match=match):
        load_config(None, overrides)


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        ("tests.no_such_module:f", ValueError, r"model\.factory = 'tests\.no_such_module:f': cannot import 'tests\.no_such_module'"),
        ("tests.any_backbone_factories:missing", ValueError, r"has no attribute 'missing'"),
        ("tests.any_backbone_factories:NOT_CALLABLE", TypeError, r"names a int, which is not callable"),
        ("tests.any_backbone_factories:not_a_module", TypeError, r"must return a torch\.nn\.Module \(the backbone\), got int"),
    ],
)  # fmt: skip
def test_a_factory_that_cannot_build_names_the_key(factory, error, match):
    with pytest.raises(error, match=match):
        build_backbone(load_config(None, [f"model.factory={factory}"]))


def test_factory_arguments_it_does_not_take_are_refused():
    config = load_config(None, [f"model.factory={FACTORY}", "model.args={width: 3}"])
    with pytest.raises(
        TypeError, match=r"model\.factory = .* cannot be called with model\.args \{'width': 3\}"
    ):
        build_backbone(config)


def test_a_builtin_refusing_its_arguments_names_the_backbone():
    # Point-BERT's own patch encoder is 256 wide; a 256-wide token makes its reduce_dim pointless.
    config = load_config(None, ["model.backbone=point_bert", "model.trans_dim=256", "model.num_heads=4"])
    with pytest.raises(
        ValueError, match=r"model\.backbone='point_bert' \(PointBERT\) refuses .*encoder_dims must differ"
    ):
        build_backbone(config)


def test_a_recorded_checkpoint_that_is_gone_is_a_clear_error(tmp_path):
    torch.manual_seed(3)
    checkpoint = tmp_path / "pretrain.pth"
    source = PointMAE(trans_dim=48, depth=2, num_heads=2, num_group=16, group_size=8)
    torch.save({"base_model": source.state_dict()}, checkpoint)
    config = _config(tmp_path / "run", f"model.pretrained={checkpoint}")
    torch.manual_seed(0)
    model = build_model(config, 4)
    pointpeft.save_adapter(model, tmp_path / "adapter")
    record = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["backbone"]
    assert record["pretrained"] == str(checkpoint)
    assert torch.equal(_logits(pointpeft.load_adapter(tmp_path / "adapter")), _logits(model))
    os.remove(checkpoint)
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{checkpoint!s}") + r".* is gone.*load_adapter\(backbone, DIR\)"
    ):
        pointpeft.load_adapter(tmp_path / "adapter")


def test_a_hand_built_builtin_records_its_arguments_and_a_rebuild_must_match_its_weights(tmp_path):
    torch.manual_seed(11)
    backbone = PointMAE(trans_dim=48, depth=2, num_heads=2, num_group=16, group_size=8, qkv_bias=True)
    model = pointpeft.wrap_with_dapt(backbone, pointpeft.DAPTConfig(num_classes=4, rank=4))
    pointpeft.save_adapter(model, tmp_path)
    record = json.loads((tmp_path / "adapter_config.json").read_text())["backbone"]
    assert record["builtin"] == "point_mae" and record["args"]["qkv_bias"] is True and record["seed"] is None
    # Its random weights cannot be rebuilt from the record: refused, not loaded into other weights.
    with pytest.raises(ValueError, match=r"frozen weights differ .*records no seed nor checkpoint"):
        pointpeft.load_adapter(tmp_path)
    torch.manual_seed(11)
    same = PointMAE(trans_dim=48, depth=2, num_heads=2, num_group=16, group_size=8, qkv_bias=True)
    assert torch.equal(_logits(pointpeft.load_adapter(same, tmp_path)), _logits(model))


def test_load_adapter_needs_a_folder():
    with pytest.raises(TypeError, match=r"directory must be a str or os\.PathLike folder path .*got None"):
        pointpeft.load_adapter(PointMAE(depth=1))


def test_a_last_pt_written_before_the_backbone_keys_resumes(tmp_path):
    config = _config(tmp_path)
    train(config, out=open(os.devnull, "w"))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("backbone", "factory", "args", "layout"):
        del state["config"]["model"][key]
    torch.save(state, tmp_path / "last.pt")
    result = train(_config(tmp_path, "optim.epochs=2"), out=open(os.devnull, "w"))
    assert result.epochs_run == 1
    state["config"]["model"]["backbone"] = "recon"  # another backbone is another model
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"model\.backbone: saved 'recon', now 'point_mae'"):
        train(_config(tmp_path, "optim.epochs=3"), out=open(os.devnull, "w"))


def test_another_builtin_builds_at_its_own_published_sizes_unless_told_otherwise():
    bert = build_backbone(load_config(None, ["model.backbone=point_bert"]))
    assert (bert.num_group, bert.encoder_dims, bert.trans_dim) == (
        64,
        256,
        384,
    )  # Point-BERT's, not Point-MAE's
    sized = build_backbone(load_config(None, ["model.backbone=point_bert", "model.num_group=32"]))
    assert sized.num_group == 32
    mae = build_backbone(load_config(None, ["model.backbone=point_mae"]))
    assert (mae.num_group, mae.encoder_dims, mae.pos_mode) == (128, 384, "once")  # the DAPT recipe's
