"""The methods besides DAPT under ``pointpeft.get_peft_model``: SSF and linear probing. For each: its trainable
set, its count formula, identity at init, gradients only where they belong, the adapter round trip; adapters of
different methods on one backbone; config checks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import pointpeft
from conftest import SMALL, randomize_dapt
from pointpeft import DAPTConfig, LinearProbeConfig, LoRAConfig, SSFConfig, VPTConfig
from pointpeft.backbones import PointMAE
from pointpeft.dapt import TFTS, DynamicAdapter
from pointpeft.methods.lora import LoRA
from pointpeft.methods.vpt import DeepPrompts

C, DEPTH = SMALL["trans_dim"], SMALL["depth"]


def _backbone(seed: int = 0) -> PointMAE:
    torch.manual_seed(seed)
    return PointMAE(**SMALL)


def _points(seed: int = 1) -> torch.Tensor:
    return torch.rand(4, 96, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _head_size(model: pointpeft.DAPTModel) -> int:
    return sum(p.numel() for p in model.head.parameters())


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _final_tokens(backbone: PointMAE, points: torch.Tensor) -> torch.Tensor:
    """The frozen backbone's own final-norm output (B, T, C), read by a hook."""
    kept = []
    handle = backbone.norm.register_forward_hook(lambda module, args, out: kept.append(out))
    try:
        backbone(points)
    finally:
        handle.remove()
    return kept[0]


# ---------------------------------------------------------------------------------------- trainable sets
def test_ssf_trains_its_scale_and_shift_the_head_and_the_cls_token_only():
    model = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    names = _trainable(model)
    assert names, "nothing trains"
    for name in names:
        assert name.endswith((".gamma", ".beta")) or name.startswith("heads.") or "cls_" in name, name
    assert not any(isinstance(m, DynamicAdapter) for m in model.modules())
    # 11 scale-and-shift sites of widths C, 3C, C, C, 4C, C per block (after norm1, qkv, proj, norm2, fc1,
    # fc2), one after the patch encoder and one after the final norm, 2 parameters per channel; the CLS
    # token and its position (C each); the head.
    expected = 2 * (11 * C * DEPTH + 2 * C) + 2 * C + _head_size(model)
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == expected, (trained, expected)


@pytest.mark.parametrize("train_cls", [True, False])
def test_linear_probing_trains_the_head_and_optionally_the_cls_token(train_cls):
    model = pointpeft.get_peft_model(_backbone(), LinearProbeConfig(num_classes=5, train_cls=train_cls))
    names = _trainable(model)
    cls = {n for n in names if "cls_" in n}
    assert names - cls == {n for n, _ in model.head.named_parameters(prefix="heads.default")}
    assert len(cls) == (2 if train_cls else 0)
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == _head_size(model) + (2 * C if train_cls else 0)
    assert not any(isinstance(m, (TFTS, DynamicAdapter)) for m in model.modules())


@pytest.mark.parametrize("config", [SSFConfig(num_classes=5), LinearProbeConfig(num_classes=5)])
def test_gradients_reach_the_trainable_set_and_nothing_else(config):
    model = pointpeft.get_peft_model(_backbone(), config).train()
    torch.nn.functional.cross_entropy(model(_points()), torch.arange(4) % 5).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == _trainable(model)
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in with_grad and "heads" in n)


# ------------------------------------------------------------------------------------- what they compute
def test_at_identity_ssf_and_linear_probing_leave_the_backbone_features_as_they_are():
    points = _points()
    reference = _backbone().eval()
    expected = _final_tokens(reference, points)
    for config in (SSFConfig(num_classes=5), LinearProbeConfig(num_classes=5)):
        model = pointpeft.get_peft_model(_backbone(), config).eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, TFTS):
                    module.gamma.fill_(1.0)
                    module.beta.zero_()
            tokens = model.forward_features(points).tokens
        torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5, msg=type(config).__name__)


def test_ssf_computes_dapt_without_adapter_output_and_prompts():
    """With the same scale-and-shift values, SSF equals DAPT whose adapters output zero and which has no
    prompts: the TFTS of the two are one formula at the same places (DAPT's own tests hold it to the
    reference)."""
    points = _points()
    ssf = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5, head_dropout=0.0)).eval()
    randomize_dapt(ssf, seed=3)
    dapt = pointpeft.wrap_with_dapt(
        _backbone(), DAPTConfig(num_classes=5, prompts=False, pool=("cls", "patch"), head_dropout=0.0)
    ).eval()
    ssf_tensors = {n: p for n, p in ssf.named_parameters() if n.endswith((".gamma", ".beta"))}
    with torch.no_grad():
        for name, p in dapt.named_parameters():
            if name in ssf_tensors:
                p.copy_(ssf_tensors[name])
            elif ".adapter." in name and ".up." in name:
                p.zero_()
        dapt.head.load_state_dict(ssf.head.state_dict())
    assert {n for n, _ in dapt.named_parameters() if n.endswith((".gamma", ".beta"))} == set(ssf_tensors)
    with torch.no_grad():
        torch.testing.assert_close(ssf(points), dapt(points), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize(
    ("config", "peft_type"),
    [
        (SSFConfig(num_classes=5, tfts_init_std=0.3), "SSF"),
        (LinearProbeConfig(num_classes=5), "LINEAR_PROBE"),
    ],
)
def test_adapter_round_trip(tmp_path, config, peft_type):
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), config).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_adapter(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())  # the "default" adapter: at the top
    assert saved["peft_type"] == peft_type and saved["config"] == config.to_dict()
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    assert type(loaded.config) is type(config) and loaded.config == config
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)


def test_adapters_of_different_methods_live_on_one_backbone(tmp_path):
    """DAPT, SSF and linear probing as three adapters of one model: each computes what it computes alone,
    trains only its own tensors, and loads back into a model of another method."""
    points = _points()
    configs = {
        "dapt": DAPTConfig(num_classes=5, rank=8, head_dropout=0.0),
        "ssf": SSFConfig(num_classes=5, head_dropout=0.0),
        "probe": LinearProbeConfig(num_classes=3, head_dropout=0.0),
    }
    alone = {}
    for name, config in configs.items():
        torch.manual_seed(7)
        single = pointpeft.get_peft_model(_backbone(), config, adapter_name=name).eval()
        randomize_dapt(single, seed=4)
        alone[name] = single
    shared = pointpeft.get_peft_model(_backbone(), configs["dapt"], adapter_name="dapt").eval()
    for name in ("ssf", "probe"):
        shared.add_adapter(name, configs[name])
    for name, single in alone.items():
        shared.set_adapter(name)
        state = {k: v for k, v in single.state_dict().items() if k.startswith("heads.") or "adapter" in k}
        own = {k: v for k, v in single.named_parameters() if v.requires_grad}
        with torch.no_grad():
            for key, value in shared.named_parameters():
                if key in own:
                    value.copy_(own[key])
            shared.heads[name].load_state_dict(single.heads[name].state_dict())
        assert state  # the head at least
        with torch.no_grad():
            torch.testing.assert_close(shared(points), single(points), rtol=1e-6, atol=1e-6, msg=name)
        assert _trainable(shared) == _trainable(single), name
    shared.set_adapter("probe")
    shared.save_adapter(str(tmp_path), ["probe"])
    other = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    other.load_adapter(str(tmp_path / "probe"), "probe")
    other.set_adapter("probe")
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(points), shared(points), rtol=0, atol=0)


def test_deep_copies_and_unload_give_back_the_backbone():
    backbone = _backbone()
    before = copy.deepcopy(backbone.state_dict())
    model = pointpeft.get_peft_model(backbone, SSFConfig(num_classes=5))
    randomize_dapt(model, seed=2)
    plain = model.unload()
    assert plain.state_dict().keys() == before.keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())


# --------------------------------------------------------------------------------------------- checks
def test_get_peft_model_refuses_other_configs_naming_the_accepted_ones():
    with pytest.raises(
        TypeError, match=r"config must be one of pointpeft\.DAPTConfig, pointpeft\.FullFinetuneConfig"
    ):
        pointpeft.get_peft_model(_backbone(), {"num_classes": 5})
    with pytest.raises(TypeError, match=r"config must be a pointpeft\.DAPTConfig, got SSFConfig"):
        pointpeft.wrap_with_dapt(_backbone(), SSFConfig(num_classes=5))  # the DAPT shortcut stays DAPT's
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        pointpeft.get_peft_model("model", SSFConfig(num_classes=5))


@pytest.mark.parametrize("cls", [SSFConfig, LinearProbeConfig])
def test_method_configs_check_their_fields(cls):
    with pytest.raises(ValueError, match=r"pool must not contain 'prompt': this method makes no prompts"):
        cls(num_classes=5, pool=("cls", "prompt"))
    with pytest.raises(ValueError, match=r"num_classes must be >= 1, got 0"):
        cls(num_classes=0)
    config = cls(num_classes=5)
    with pytest.raises(TypeError, match=r"train_cls must be a bool"):
        config.train_cls = 1
    with pytest.raises(ValueError, match=r"head_dropout"):
        config.head_dropout = 1.0
    assert config.pool == ("cls", "patch")
    with pytest.raises(
        ValueError, match=rf"{cls.__name__}\.from_dict: the key\(s\) \['num_classes'\] are missing"
    ):
        cls.from_dict({"pool": ["cls"]})


@settings(max_examples=30, deadline=None)
@given(
    num_classes=st.integers(1, 50),
    pool=st.sampled_from([("cls",), ("patch",), ("cls", "patch")]),
    dropout=st.floats(0.0, 0.99),
    train_cls=st.booleans(),
)
def test_method_configs_round_trip_through_json(num_classes, pool, dropout, train_cls):
    for config in (
        SSFConfig(num_classes=num_classes, pool=pool, head_dropout=dropout, train_cls=train_cls),
        LinearProbeConfig(num_classes=num_classes, pool=pool, head_dropout=dropout, train_cls=train_cls),
    ):
        text = json.dumps(config.to_dict())
        assert type(config).from_dict(json.loads(text)) == config


def test_a_saved_config_of_one_method_is_checked_as_that_method(tmp_path):
    model = pointpeft.get_peft_model(_backbone(), SSFConfig(num_classes=5))
    model.save_adapter(str(tmp_path))
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    saved["config"]["pool"] = ["cls", "prompt"]
    path.write_text(json.dumps(saved))
    weights = tmp_path / "adapter_model.safetensors"  # its copy of the config says the same
    with safe_open(str(weights), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata())
    key = next(k for k, v in metadata.items() if v.lstrip().startswith("{"))
    inner = json.loads(metadata[key])
    inner["config"]["pool"] = ["cls", "prompt"]
    metadata[key] = json.dumps(inner)
    save_file(tensors, str(weights), metadata=metadata)
    with pytest.raises(
        ValueError, match=r"the 'config' entry is not a valid SSFConfig: .*must not contain 'prompt'"
    ):
        pointpeft.load_adapter(_backbone(), str(tmp_path))


# ------------------------------------------------------------------------------------------------ CLI
CONFIGS = __import__("pathlib").Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize(
    ("method", "peft_type"),
    [
        ("ssf", "SSF"),
        ("linear_probe", "LINEAR_PROBE"),
        ("lora", "LORA"),
        ("vpt", "VPT"),
        ("bitfit", "BITFIT"),
        ("full_finetune", "FULL_FINETUNE"),
        ("adapter", "ADAPTER"),
    ],
)
def test_pointpeft_train_and_eval_run_a_method(tmp_path, capsys, method, peft_type):
    from pointpeft.cli import main
    from tiny_run import TINY

    args = [
        *TINY,
        "run.device=cpu",
        f"run.output_dir={tmp_path}",
        f"method={method}",
        "dapt.pool=[cls,patch]",
    ]
    assert main(["train", *args, "optim.epochs=1"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert saved["peft_type"] == peft_type
    best = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["best_accuracy"]
    assert "trainable params:" in out
    assert main(["eval", "--adapter", str(tmp_path / "best"), *args]) == 0
    assert f"test accuracy {best:.2f}%" in capsys.readouterr().out  # the saved adapter scores the same


def test_pointpeft_params_counts_each_method_on_point_mae(capsys):
    """ScanObjectNN OBJ_BG's Point-MAE (15 classes, width 384, 12 blocks): the counts of the methods, head
    on CLS + max of the patches (267,535 parameters)."""
    from pointpeft.cli import main

    base = ["params", "--config", str(CONFIGS / "scanobjectnn_objbg.yaml"), "dapt.pool=[cls,patch]"]
    head, cls_tokens = 267_535, 2 * 384
    tfts = 2 * (11 * 384 * 12 + 2 * 384)  # 101,376 in the blocks + 1,536 after the encoder and final norm
    lora = 12 * 8 * ((384 + 3 * 384) + (384 + 384) + (384 + 1536) + (1536 + 384))  # rank 8 on all four
    counts = (
        ("linear_probe", head + cls_tokens),
        ("ssf", head + cls_tokens + tfts),
        ("lora", head + cls_tokens + lora),
    )
    for method, expected in counts:
        assert main([*base, f"method={method}"]) == 0
        assert f"trainable params: {expected:,d} ||" in capsys.readouterr().out, method


def test_a_method_without_prompts_refuses_a_pool_with_prompts_naming_both_keys(capsys):
    from pointpeft.cli import main

    with pytest.raises(SystemExit):
        main(["params", "--config", str(CONFIGS / "scanobjectnn_objbg.yaml"), "method=ssf"])
    err = capsys.readouterr().err
    assert "dapt.pool = ['cls', 'prompt', 'patch'] names 'prompt', but model.method = ssf" in err


def test_the_method_shorthand_and_its_choices():
    from pointpeft.train import load_config

    assert load_config(None, ["method=ssf"])["model"]["method"] == "ssf"
    assert load_config(None, [])["model"]["method"] == "dapt"
    with pytest.raises(
        ValueError,
        match=r"model\.method must be one of \('dapt', 'full_finetune', 'linear_probe', 'bitfit', 'ssf', 'lora', "
        r"'vpt', 'adapter', 'idpt', 'pointgst', 'pointlora'\), got 'not_a_method'",
    ):
        load_config(None, ["method=not_a_method"])


# ----------------------------------------------------------------------------------------------- LoRA
def _randomize_lora(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRA):
                module.lora_B.copy_(0.2 * torch.randn(module.lora_B.shape, generator=gen))


def test_lora_trains_its_updates_the_head_and_the_cls_token_with_the_count_of_its_formula():
    config = LoRAConfig(num_classes=5, rank=4, targets=("qkv", "fc2"))
    model = pointpeft.get_peft_model(_backbone(), config)
    names = _trainable(model)
    updates = {n for n in names if ".beside." in n}
    assert names - updates == {n for n, _ in model.head.named_parameters(prefix="heads.default")} | {
        n for n in names if "cls_" in n
    }
    assert {n.split(".beside.")[0].rsplit(".", 1)[-1] for n in updates} == {"qkv", "fc2"}
    # qkv: A (r, C) + B (3C, r); fc2: A (r, 4C) + B (C, r)
    per_block = 4 * (C + 3 * C) + 4 * (4 * C + C)
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == DEPTH * per_block + 2 * C + _head_size(model)


def test_lora_at_init_leaves_the_backbone_as_it_is_and_then_equals_the_merged_weights():
    """B = 0 at init: the backbone's own features. With random B, the model computes the frozen backbone whose
    targeted weights are W + (alpha / rank) B A (the merged twin, built without pointpeft)."""
    points = _points()
    config = LoRAConfig(num_classes=5, rank=4, alpha=6.0)
    model = pointpeft.get_peft_model(_backbone(), config).eval()
    reference = _backbone().eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(points).tokens, _final_tokens(reference, points))
    _randomize_lora(model, seed=5)
    merged = _backbone().eval()
    layers = dict(merged.named_modules())
    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoRA):
                site = name.rsplit(".beside.", 1)[0]  # base_model.<path>.<role>
                path = site.removeprefix("base_model.").replace(".base_layer", "")
                layer = layers[path]
                layer.weight.add_(module.scaling * module.lora_B @ module.lora_A)
                count += 1
        assert count == 4 * DEPTH
        torch.testing.assert_close(
            model.forward_features(points).tokens, _final_tokens(merged, points), rtol=1e-5, atol=1e-5
        )


def test_lora_gradients_and_round_trip(tmp_path):
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), LoRAConfig(num_classes=5, dropout=0.1)).train()
    torch.nn.functional.cross_entropy(model(points), torch.arange(4) % 5).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == _trainable(model)
    _randomize_lora(model, seed=6)
    model.eval().save_adapter(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["config"]["targets"] == ["qkv", "proj", "fc1", "fc2"]
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)


def test_lora_warns_of_a_targeted_layer_that_is_not_a_linear_projection():
    """With the layout's qkv left out, the proj site is the bare nn.MultiheadAttention (no packed-projection
    wrapper holds its out_proj): LoRA leaves it and says so; the FFN's layers still get their updates."""
    import dataclasses

    from standins import TorchEncoderModel

    torch.manual_seed(0)
    layout = pointpeft.preset_layout("torch_transformer_encoder", TorchEncoderModel())
    layout = dataclasses.replace(layout, block=dataclasses.replace(layout.block, qkv=None))
    with pytest.warns(
        UserWarning, match=r"not nn\.Linear here, left without an update: \['proj \(MultiheadAttention\)'\]"
    ):
        model = pointpeft.get_peft_model(
            TorchEncoderModel(), LoRAConfig(num_classes=5, rank=4), layout=layout
        )
    roles = {
        n.split(".beside.")[0].replace(".base_layer", "").rsplit(".", 1)[-1]
        for n in _trainable(model)
        if ".beside." in n
    }
    assert roles == {"linear1", "linear2"}, roles
    assert model(_points()).shape == (4, 5)


def test_lora_config_checks_its_fields():
    with pytest.raises(
        ValueError, match=r"targets names must be distinct and among \('qkv', 'proj', 'fc1', 'fc2'\)"
    ):
        LoRAConfig(num_classes=5, targets=("qkv", "mlp"))
    with pytest.raises(ValueError, match=r"alpha must be > 0"):
        LoRAConfig(num_classes=5, alpha=0.0)
    with pytest.raises(ValueError, match=r"rank must be >= 1"):
        LoRAConfig(num_classes=5, rank=0)
    assert LoRAConfig(num_classes=5, targets=["fc2", "qkv"]).targets == ("qkv", "fc2")
    config = LoRAConfig(num_classes=5)
    assert LoRAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ------------------------------------------------------------------------------------------------ VPT
def _vpt_twin(backbone: PointMAE, prompts: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """VPT-Deep written out on the plain backbone, as the point-cloud VPT code runs it: each block's prompts
    (prompt + position) appended at the END of its input, after the positions are added, and dropped from its
    output; the final norm's tokens (B, 1 + G, C)."""
    neighborhood, centers = backbone.group_divider(points)
    tokens = backbone.encoder(neighborhood)
    batch = tokens.shape[0]
    x = torch.cat((backbone.cls_token.expand(batch, -1, -1), tokens), dim=1)
    pos = torch.cat((backbone.cls_pos.expand(batch, -1, -1), backbone.pos_embed(centers)), dim=1)
    length = x.shape[1]
    for block, prompt in zip(backbone.blocks.blocks, prompts, strict=True):
        x = block(torch.cat((x + pos, prompt.expand(batch, -1, -1)), dim=1))[:, :length]
    return backbone.norm(x)


def test_vpt_deep_computes_the_point_cloud_vpt_code_and_trains_its_prompts_only():
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), VPTConfig(num_classes=5, num_prompts=3)).eval()
    prompts = [m.prompts + m.positions for m in model.modules() if isinstance(m, DeepPrompts)]
    assert len(prompts) == DEPTH
    with torch.no_grad():
        got = model.forward_features(points).tokens
        expected = _vpt_twin(_backbone().eval(), prompts, points)  # the same frozen weights (seed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, _final_tokens(_backbone().eval(), points), atol=1e-4)  # the prompts act
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == DEPTH * 3 * C * 2 + 2 * C + _head_size(model)  # prompts and their positions
    model.train()
    torch.nn.functional.cross_entropy(model(points), torch.arange(4) % 5).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == _trainable(model)
    assert all(m.prompts.grad.abs().sum() > 0 for m in model.modules() if isinstance(m, DeepPrompts))


def test_vpt_round_trip_and_beside_dapt(tmp_path):
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), VPTConfig(num_classes=5, num_prompts=2)).eval()
    model.add_adapter("dapt", DAPTConfig(num_classes=5, rank=4))
    model.save_adapter(str(tmp_path))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "VPT"
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)
        model.set_adapter("dapt")  # DAPT's internal prompts run; VPT's tokens do not
        alone = pointpeft.wrap_with_dapt(_backbone(), DAPTConfig(num_classes=5, rank=4), adapter_name="dapt")
        alone.load_state_dict({k: v for k, v in model.state_dict().items() if k in alone.state_dict()})
        torch.testing.assert_close(model(points), alone.eval()(points), rtol=0, atol=0)


@pytest.mark.parametrize(
    "config",
    [
        SSFConfig(num_classes=4, head_dropout=0.0),
        LoRAConfig(num_classes=4, rank=4, head_dropout=0.0),
        VPTConfig(num_classes=4, num_prompts=2, head_dropout=0.0),
    ],
    ids=["ssf", "lora", "vpt"],
)
def test_each_method_compiles_whole_and_gives_the_eager_step(config):
    """torch.compile(fullgraph=True) takes each method's model (no graph break; the fused path selectively
    checkpointed), and its logits and gradients equal eager's."""
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=8, encoder_dims=32)
    model = pointpeft.get_peft_model(backbone, config).train()
    _randomize_lora(model, seed=1)
    points = torch.rand(4, 32, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    labels = torch.arange(4) % 4

    def step(runner):
        model.zero_grad(set_to_none=True)
        logits = runner(points)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = step(model)
    torch._dynamo.reset()
    compiled = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    assert compiled[1].keys() == eager[1].keys()
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_vpt_on_a_sequence_first_backbone_equals_the_batch_first_one():
    """The prompts join a (T, B, C) sequence as they join a (B, T, C) one (nn.TransformerEncoder with
    batch_first False and True, the same weights)."""
    from standins import TorchEncoderModel

    points, logits = _points(), []
    for batch_first in (True, False):
        torch.manual_seed(0)
        backbone = TorchEncoderModel(batch_first=batch_first)
        torch.manual_seed(1)
        model = pointpeft.get_peft_model(
            backbone, VPTConfig(num_classes=5, num_prompts=3), layout="torch_transformer_encoder"
        ).eval()
        with torch.no_grad():
            logits.append(model(points))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-6)


def test_pointpeft_params_names_each_kind_of_trainable_tensor(capsys):
    """The table of ``pointpeft params`` counts LoRA's updates and VPT's prompts as such, not as tokens."""
    from pointpeft.cli import main

    base = ["params", "--config", str(CONFIGS / "scanobjectnn_objbg.yaml"), "dapt.pool=[cls,patch]"]
    expected = {
        "lora": {"head": 267_535, "LoRA": 589_824, "tokens": 768},
        "vpt": {"head": 267_535, "VPT prompts": 92_160, "tokens": 768},
        "ssf": {"head": 267_535, "TFTS": 102_912, "tokens": 768},
    }
    for method, kinds in expected.items():
        assert main([*base, f"method={method}"]) == 0
        lines = capsys.readouterr().out.splitlines()[:-1]
        table = {
            line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1].replace(",", "")) for line in lines
        }
        assert table == kinds, (method, table)
