"""Hostile and careless adapter files, backbones that do not match them, and DAPTModel.unload().

Every refused load names the file (and the tensor, key or setting) and leaves the caller's backbone or
model exactly as it was; unload() gives the original backbone back bit for bit.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save
from torch import nn

import pointpeft
from conftest import SMALL, randomize_dapt
from pointpeft import DAPTConfig, wrap_with_dapt
from pointpeft.backbones import PointMAE
from pointpeft.dapt.adapter_files import CONFIG_METADATA_KEY, CONFIG_NAME, WEIGHTS_NAME
from pointpeft.dapt.tfts import AdapterModules
from standins import TorchEncoderModel

SHAPE = {**SMALL, "depth": 2}


def _backbone(seed: int = 0, **overrides) -> PointMAE:
    torch.manual_seed(seed)
    return PointMAE(**{**SHAPE, **overrides})


def _points() -> torch.Tensor:
    return torch.rand(4, 64, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _trained(backbone: nn.Module | None = None, **config) -> pointpeft.DAPTModel:
    """A DAPT model whose adapter tensors, CLS token and BatchNorm statistics all moved."""
    model = wrap_with_dapt(
        _backbone() if backbone is None else backbone, DAPTConfig(**{"num_classes": 4, "rank": 8, **config})
    )
    randomize_dapt(model, 1)
    with torch.no_grad():
        model.base_model.cls_token.add_(0.3)
        model.train()(_points())
    return model.eval()


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_points())


def _snapshot(backbone: nn.Module) -> dict:
    """Everything a failed load must leave as it was."""
    return {
        "state": {k: v.clone() for k, v in backbone.state_dict().items()},
        "types": [(n, type(m)) for n, m in backbone.named_modules()],
        "requires_grad": {n: p.requires_grad for n, p in backbone.named_parameters()},
        "ids": {n: id(p) for n, p in backbone.named_parameters()},
        "hooks": [len(m._forward_pre_hooks) for m in backbone.modules()],
        "training": [m.training for m in backbone.modules()],
    }


def _assert_unchanged(backbone: nn.Module, before: dict) -> None:
    after = _snapshot(backbone)
    assert list(after["state"]) == list(before["state"])
    for key, value in before["state"].items():
        assert after["state"][key].dtype == value.dtype and torch.equal(after["state"][key], value), key
    for key in ("types", "requires_grad", "ids", "hooks", "training"):
        assert after[key] == before[key], key


def _tensors(folder) -> dict[str, torch.Tensor]:
    """The weights of an adapter folder, as copies (not views of the file, which the tests rewrite)."""
    return {k: v.clone() for k, v in load_file(folder / WEIGHTS_NAME).items()}


def _rewrite(folder, config: dict | None = None, tensors: dict | None = None, embed: bool = True) -> None:
    """Rewrite an adapter folder consistently: the JSON and, in the weights, its embedded copy."""
    config = json.loads((folder / CONFIG_NAME).read_text()) if config is None else config
    tensors = _tensors(folder) if tensors is None else tensors
    text = json.dumps(config)
    (folder / CONFIG_NAME).write_text(text)
    metadata = {"format": "pt", CONFIG_METADATA_KEY: text} if embed else {"format": "pt"}
    (folder / WEIGHTS_NAME).write_bytes(save(tensors, metadata=metadata))


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory):
    """A saved adapter (built once) and its logits."""
    folder = tmp_path_factory.mktemp("good")
    model = _trained()
    model.save_adapter(str(folder))
    return folder, _logits(model)


def _copy_of(good_adapter, folder):
    """A fresh copy of the good adapter's folder at ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (folder / name).write_bytes((good_adapter[0] / name).read_bytes())
    return folder


@pytest.fixture
def saved(good_adapter, tmp_path):
    return _copy_of(good_adapter, tmp_path / "good"), good_adapter[1]


# ------------------------------------------------------------------- issue 5: the backbone's signature
def test_adapter_of_a_shallower_backbone_is_refused_before_wrapping(saved):
    folder, _ = saved
    deeper = _backbone(depth=3)
    before = _snapshot(deeper)
    with pytest.raises(
        ValueError,
        match=r"(?s)adapter_config\.json was saved for another backbone.*"
        r"blocks in 'blocks\.blocks': saved 2, this backbone 3.*blocks\.blocks\.2\.norm1\.weight",
    ):
        pointpeft.load_adapter(deeper, folder)
    _assert_unchanged(deeper, before)
    shallower = _backbone(depth=1)
    with pytest.raises(ValueError, match="blocks in 'blocks.blocks': saved 2, this backbone 1"):
        pointpeft.load_adapter(shallower, folder)
    wrap_with_dapt(deeper, DAPTConfig(num_classes=4))  # still a plain backbone


@settings(max_examples=8, deadline=None)
@given(
    num_group=st.sampled_from([12, 16]),
    group_size=st.sampled_from([6, 8]),
    pos_mode=st.sampled_from(["every_block", "once"]),
)
def test_settings_that_change_no_shape_are_checked(good_adapter, num_group, group_size, pos_mode):
    folder = good_adapter[0]
    backbone = _backbone(num_group=num_group, group_size=group_size, pos_mode=pos_mode)
    wanted = {"num_group": 16, "group_size": 8, "pos_mode": "every_block"}
    given_now = {"num_group": num_group, "group_size": group_size, "pos_mode": pos_mode}
    differing = [k for k in wanted if wanted[k] != given_now[k]]
    if not differing:
        pointpeft.load_adapter(backbone, folder)
        return
    before = _snapshot(backbone)
    with pytest.raises(ValueError, match="was saved for another backbone") as raised:
        pointpeft.load_adapter(backbone, folder)
    for key in differing:
        assert f"{key}: saved {wanted[key]!r}, this backbone {given_now[key]!r}" in str(raised.value)
    _assert_unchanged(backbone, before)


def test_wider_backbone_lists_each_difference(saved):
    folder, _ = saved
    with pytest.raises(ValueError, match=r"(?s)token width: saved 32, this backbone 48.*trans_dim: saved 32"):
        pointpeft.load_adapter(_backbone(trans_dim=48, encoder_dims=48), folder)


def test_files_of_older_versions_without_signature_or_embedded_config_still_load(saved):
    folder, expected = saved
    config = json.loads((folder / CONFIG_NAME).read_text())
    del config["backbone_signature"]
    _rewrite(folder, config, embed=False)
    assert torch.equal(_logits(pointpeft.load_adapter(_backbone(), folder)), expected)


def test_load_adapter_into_checks_the_signature_and_layout(tmp_path):
    other = _trained(_backbone(num_group=12))
    other.save_adapter(str(tmp_path))
    model = _trained()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="num_group: saved 12, this backbone 16"):
        model.load_adapter(str(tmp_path), "other")
    _assert_unchanged(model, before)
    assert model.adapters == ("default",)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["layout"]["num_global_tokens"] = 0
    config["config"]["pool"] = ["patch"]
    _rewrite(tmp_path, config)
    with pytest.raises(ValueError, match="saved for another layout.*num_global_tokens: saved 0, model 1"):
        model.load_adapter(str(tmp_path), "other")


# ------------------------------------------------------- issue 6: failed loads leave everything as it was
def test_failed_load_with_a_wrong_rank_leaves_the_backbone_and_the_right_adapter_loads(saved, tmp_path):
    folder, expected = saved
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (wrong / name).write_bytes((folder / name).read_bytes())
    config = json.loads((wrong / CONFIG_NAME).read_text())
    config["config"]["rank"] = 4
    _rewrite(wrong, config)
    backbone = _backbone()
    before = _snapshot(backbone)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: tensor shapes do not match the model"):
        pointpeft.load_adapter(backbone, wrong)
    _assert_unchanged(backbone, before)
    assert torch.equal(_logits(pointpeft.load_adapter(backbone, folder)), expected)


def test_failed_load_adapter_into_leaves_the_model(saved, tmp_path):
    folder, expected = saved
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["config"]["rank"] = 4
    _rewrite(folder, config)
    model = wrap_with_dapt(_backbone(), DAPTConfig(num_classes=2, rank=2))
    before = _snapshot(model)
    with pytest.raises(ValueError, match="tensor shapes do not match the model"):
        model.load_adapter(str(folder), "b")
    _assert_unchanged(model, before)
    assert model.adapters == ("default",) and not any(
        "b" in m for m in model.modules() if isinstance(m, AdapterModules)
    )
    with pytest.raises(ValueError, match="an adapter named 'default' exists already"):
        model.load_adapter(str(folder), "default")


def test_wrap_that_fails_late_leaves_the_backbone(monkeypatch):
    backbone = _backbone()
    backbone.pos_embed[0].weight.requires_grad_(False)
    before = _snapshot(backbone)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(pointpeft.dapt.model, "PooledHead", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        wrap_with_dapt(backbone, DAPTConfig(num_classes=4))
    _assert_unchanged(backbone, before)
    monkeypatch.undo()
    layout = pointpeft.BackboneLayout(
        blocks=("blocks.blocks.0", "blocks.blocks.1"), block=pointpeft.BlockLayout(fc1="mlp.act")
    )
    with pytest.raises(ValueError, match=r"cannot tell the output width of blocks\.blocks\.0\.mlp\.act"):
        wrap_with_dapt(backbone, DAPTConfig(num_classes=4), layout=layout)
    _assert_unchanged(backbone, before)
    nested = pointpeft.BackboneLayout(blocks=("blocks.blocks.0", "blocks.blocks.0.mlp"))
    with pytest.raises(ValueError, match=r"blocks\.blocks\.0\.mlp is inside blocks\.blocks\.0"):
        wrap_with_dapt(backbone, DAPTConfig(num_classes=4), layout=nested)
    with pytest.raises(ValueError, match="adapter_name must be a non-empty string"):
        wrap_with_dapt(backbone, DAPTConfig(num_classes=4), adapter_name="a/b")
    _assert_unchanged(backbone, before)


# ---------------------------------------------------------------------------- issue 6: unload()
def _wrap_train_unload(backbone: nn.Module, points: torch.Tensor, config: DAPTConfig, **wrap) -> nn.Module:
    model = wrap_with_dapt(backbone, config, **wrap)
    model.train()
    logits = model(points)  # one training step: the CLS token, BatchNorm statistics and adapter move
    nn.functional.cross_entropy(logits, torch.arange(len(logits)) % logits.shape[-1]).backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.sub_(0.5 * parameter.grad.sign())
    model.add_adapter("second", DAPTConfig(num_classes=3, rank=4, pool=("cls", "patch")))
    model.set_adapter("second")
    model(points)
    back = model.unload()
    with pytest.raises(RuntimeError, match="this DAPTModel was unloaded"):
        model(points)
    with pytest.raises(RuntimeError, match="was unloaded"):
        model.unload()
    with pytest.raises(RuntimeError, match="this DAPTModel was unloaded"):
        model.save_adapter("unused")
    return back


def test_unload_gives_the_original_backbone_back():
    backbone = _backbone()
    backbone.pos_embed[0].weight.requires_grad_(False)  # restored as it was, not to True
    before = _snapshot(backbone)
    expected = _logits(backbone)
    backbone.train()
    back = _wrap_train_unload(backbone, _points(), DAPTConfig(num_classes=4, rank=8))
    assert back is backbone
    back.eval()
    before["training"] = [m.training for m in back.modules()]
    _assert_unchanged(back, before)
    assert torch.equal(_logits(back), expected)
    again = wrap_with_dapt(back, DAPTConfig(num_classes=4, rank=8))
    assert again(_points()).shape == (4, 4)


def test_unload_after_moving_the_model_and_inside_disable_adapter():
    backbone = _backbone()
    reference = copy.deepcopy(backbone).double()
    model = _trained(backbone)
    model.double()
    with model.disable_adapter():
        back = model.unload()
    before = _snapshot(reference)
    before["ids"] = {n: id(p) for n, p in back.named_parameters()}
    _assert_unchanged(back.eval(), {**before, "training": [m.training for m in back.modules()]})
    assert back.cls_token.dtype == torch.float64


def test_unload_restores_the_values_load_pretrained_gave():
    donor = _backbone(seed=7)
    model = _trained()
    pointpeft.load_pretrained(model, {f"MAE_encoder.{k}": v for k, v in donor.state_dict().items()})
    back = model.unload()
    for key, value in donor.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_unload_of_a_torch_transformer_encoder_removes_the_hooks_and_double_wrappers():
    torch.manual_seed(0)
    backbone = TorchEncoderModel(batch_first=False, norm_first=True)
    before = _snapshot(backbone)
    points = torch.rand(4, 64, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = backbone.eval()(points)
    backbone.train()
    back = _wrap_train_unload(
        backbone, points, DAPTConfig(num_classes=3, rank=4), layout="torch_transformer_encoder"
    )
    back.eval()
    _assert_unchanged(back, {**before, "training": [m.training for m in back.modules()]})
    with torch.no_grad():
        assert torch.equal(back(points), expected)


def test_unload_of_a_copy_leaves_the_original_model(saved):
    folder, expected = saved
    model = pointpeft.load_adapter(_backbone(), folder).eval()
    copy.deepcopy(model).unload()
    assert torch.equal(_logits(model), expected)


# ------------------------------------------------------------- issue 12: tensors of the weights file
@settings(max_examples=10, deadline=None)
@given(data=st.data(), bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_non_finite_tensor_is_refused_naming_it(good_adapter, tmp_path_factory, data, bad):
    folder = _copy_of(good_adapter, tmp_path_factory.mktemp("nan"))
    tensors = _tensors(folder)
    name = data.draw(st.sampled_from(sorted(k for k, v in tensors.items() if v.is_floating_point())))
    tensors[name].view(-1)[0] = bad
    _rewrite(folder, tensors=tensors)
    backbone = _backbone()
    before = _snapshot(backbone)
    with pytest.raises(ValueError, match=rf"adapter_model\.safetensors: tensor '{name}' holds 1 NaN or inf"):
        pointpeft.load_adapter(backbone, folder)
    _assert_unchanged(backbone, before)


@pytest.mark.parametrize(
    ("key", "dtype", "message"),
    [
        (
            "head.mlp.0.weight",
            torch.int32,
            r"must be a floating-point tensor like the model's \(torch.float32\), got torch.int32",
        ),
        ("head.mlp.0.weight", torch.bool, "has dtype torch.bool; adapter tensors are float16"),
        ("head.mlp.0.weight", torch.float8_e4m3fn, "has dtype torch.float8_e4m3fn"),
        (
            "base_model.encoder.base_layer.first_conv.1.num_batches_tracked",
            torch.float32,
            r"must be an integer tensor like the model's \(torch.int64\), got torch.float32",
        ),
    ],
)
def test_tensor_of_a_wrong_dtype_is_refused_naming_it(saved, key, dtype, message):
    folder, _ = saved
    tensors = _tensors(folder)
    tensors[key] = tensors[key].to(dtype)
    _rewrite(folder, tensors=tensors)
    backbone = _backbone()
    before = _snapshot(backbone)
    with pytest.raises(ValueError, match=rf"adapter_model\.safetensors: tensor '{key}' .*{message}"):
        pointpeft.load_adapter(backbone, folder)
    _assert_unchanged(backbone, before)


def test_float64_tensor_that_overflows_float32_and_negative_variance_are_refused(saved):
    folder, _ = saved
    tensors = _tensors(folder)
    good = dict(tensors)
    tensors["head.mlp.0.weight"] = tensors["head.mlp.0.weight"].double() * 1e300
    _rewrite(folder, tensors=tensors)
    with pytest.raises(
        ValueError, match=r"tensor 'head\.mlp\.0\.weight' overflows the model's torch.float32"
    ):
        pointpeft.load_adapter(_backbone(), folder)
    tensors = dict(good)
    key = "base_model.encoder.base_layer.first_conv.1.running_var"
    tensors[key] = -tensors[key]
    _rewrite(folder, tensors=tensors)
    with pytest.raises(ValueError, match=rf"tensor '{key}' \(a BatchNorm variance\) holds negative values"):
        pointpeft.load_adapter(_backbone(), folder)
    good["head.mlp.0.weight"] = good["head.mlp.0.weight"].double()  # float64 that fits: loads
    _rewrite(folder, tensors=good)
    pointpeft.load_adapter(_backbone(), folder)


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", None])
def test_unreadable_weights_file_names_it(saved, content):
    folder, _ = saved
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2] if content is None else content)
    backbone = _backbone()
    before = _snapshot(backbone)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: not a readable safetensors file"):
        pointpeft.load_adapter(backbone, folder)
    _assert_unchanged(backbone, before)


# ------------------------------------------------------------------ issue 12: the config file
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "not a pointpeft adapter config.*list"),
        ('"DAPT"', "not a pointpeft adapter config"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        (
            '{"peft_type": "DAPT", "config": [], "layout": {}}',
            "the 'config' entry is missing or not an object",
        ),
    ],
)
def test_config_that_is_not_an_adapter_config_names_the_file(saved, text, message):
    folder, _ = saved
    (folder / CONFIG_NAME).write_text(text)
    with pytest.raises(ValueError, match=rf"(?s)adapter_config\.json: {message}"):
        pointpeft.load_adapter(_backbone(), folder)


def test_config_that_is_not_utf8_or_holds_nan_names_the_file(saved):
    folder, _ = saved
    good = (folder / CONFIG_NAME).read_text()
    (folder / CONFIG_NAME).write_bytes(b"\xff\xfe" + good.encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"adapter_config\.json: not a UTF-8 text file"):
        pointpeft.load_adapter(_backbone(), folder)
    (folder / CONFIG_NAME).write_text(good.replace('"adapter_dropout": 0.0', '"adapter_dropout": NaN'))
    with pytest.raises(ValueError, match=r"adapter_config\.json: not valid JSON \(NaN is not allowed"):
        pointpeft.load_adapter(_backbone(), folder)


@pytest.mark.parametrize(
    ("entry", "field", "value", "message"),
    [
        ("config", "rank", "8", "rank must be an int"),
        ("config", "num_classes", None, "num_classes"),
        ("config", "pool", ["cls", "nope"], "pool"),
        ("layout", "blocks", 5, "blocks"),
        ("layout", "cls_index", "0", "cls_index"),
        ("layout", "block", [1], "block"),
    ],
)
def test_config_field_of_a_wrong_type_names_the_file_and_the_field(saved, entry, field, value, message):
    folder, _ = saved
    config = json.loads((folder / CONFIG_NAME).read_text())
    if value is None:
        del config[entry][field]
    else:
        config[entry][field] = value
    _rewrite(folder, config)
    backbone = _backbone()
    before = _snapshot(backbone)
    kind = "DAPTConfig" if entry == "config" else "BackboneLayout"
    with pytest.raises(
        ValueError, match=rf"adapter_config\.json: the '{entry}' entry is not a valid {kind}: .*{message}"
    ):
        pointpeft.load_adapter(backbone, folder)
    _assert_unchanged(backbone, before)


def test_config_that_disagrees_with_the_weights_loses_with_a_warning(saved):
    folder, expected = saved
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["config"]["rank"] = 4  # a hand edit, or a save killed between the two renames
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.warns(
        UserWarning,
        match=r"adapter_config\.json disagrees with the config stored in .*adapter_model\.safetensors",
    ):
        model = pointpeft.load_adapter(_backbone(), folder)
    assert model.config.rank == 8 and torch.equal(_logits(model), expected)
    os.remove(folder / CONFIG_NAME)
    with pytest.warns(UserWarning, match=r"adapter_config\.json is missing; using the config stored in"):
        assert torch.equal(_logits(pointpeft.load_adapter(_backbone(), folder)), expected)
    os.remove(folder / WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        pointpeft.load_adapter(_backbone(), folder)


def test_load_rejects_bad_arguments(saved):
    folder, _ = saved
    with pytest.raises(TypeError, match="directory must be a str or os.PathLike"):
        pointpeft.load_adapter(_backbone(), None)
    with pytest.raises(TypeError, match="backbone must be a torch.nn.Module"):
        pointpeft.load_adapter("PointMAE", folder)
    with pytest.raises(ValueError, match="adapter_name must be a non-empty string"):
        pointpeft.load_adapter(_backbone(), folder, adapter_name="../x")
    model = pointpeft.load_adapter(_backbone(), folder)
    for wrapped in (model, model.base_model):
        with pytest.raises(ValueError, match=r"already has DAPT inserted.*unload\(\) gives it back"):
            pointpeft.load_adapter(wrapped, folder)


# ------------------------------------------------------------------------------------------- saving
def test_save_rejects_bad_arguments_and_writes_nothing(saved, tmp_path):
    folder, _ = saved
    model = _trained()
    with pytest.raises(TypeError, match=r"adapter_names must be a list .* pass \['default'\]"):
        model.save_adapter(str(tmp_path / "a"), adapter_names="default")
    with pytest.raises(ValueError, match="adapter_names: no adapter named 'nope'"):
        model.save_adapter(str(tmp_path / "a"), adapter_names=["nope"])
    with pytest.raises(ValueError, match="adapter_names must name at least one adapter"):
        model.save_adapter(str(tmp_path / "a"), adapter_names=[])
    with pytest.raises(TypeError, match="directory must be a str or os.PathLike"):
        pointpeft.save_adapter(model, 3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="directory: .*file' exists and is not a folder"):
        model.save_adapter(str(tmp_path / "file"))
    assert not (tmp_path / "a").exists()
    files = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    with torch.no_grad():
        model.heads["default"].mlp[0].weight[0, 0] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"adapter 'default' not saved \(nothing was written\): tensor 'head\.mlp\.0\.weight' holds 1 NaN",
    ):
        model.save_adapter(str(folder))
    assert {n: (folder / n).read_bytes() for n in os.listdir(folder)} == files
    with pytest.raises(ValueError, match="adapter_name must be a non-empty string without"):
        model.add_adapter("/etc", DAPTConfig(num_classes=2))
