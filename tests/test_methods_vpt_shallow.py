"""VPT-Shallow (``pointpeft.VPTConfig(deep=False)``): n prompts without positions join once, after the CLS token
at the first block's input, and go through every block (the original VPT code's shallow variant). The forward
written out in plain torch on the frozen backbone's modules, for positions added once and before every block;
its trainable set and count (272,143 on Point-MAE for 15 classes, n = 10); gradients; a sequence-first
backbone without a patch encoder; an adapter of another method beside it; the round trip; compile; the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pointpeft
from conftest import SMALL
from pointpeft import DAPTConfig, VPTConfig
from pointpeft.backbones import PointMAE
from pointpeft.methods.vpt import ShallowPrompts

C = SMALL["trans_dim"]


def _backbone(seed: int = 0, **kwargs) -> PointMAE:
    torch.manual_seed(seed)
    return PointMAE(**{**SMALL, **kwargs})


def _points(seed: int = 1, batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 96, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _shallow_twin(backbone: PointMAE, prompts: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """VPT-Shallow written out on the plain backbone: the prompts ``(1, n, C)`` inserted after CLS once, after
    the positions, with no position of their own (zero where positions are re-added before a block); the
    final norm's tokens without the prompts ``(B, 1 + G, C)``."""
    neighborhood, centers = backbone.group_divider(points)
    tokens = backbone.encoder(neighborhood)
    batch, n = tokens.shape[0], prompts.shape[1]
    x = torch.cat((backbone.cls_token.expand(batch, -1, -1), tokens), dim=1)
    pos = torch.cat((backbone.cls_pos.expand(batch, -1, -1), backbone.pos_embed(centers)), dim=1)
    x = x + pos
    x = torch.cat((x[:, :1], prompts.expand(batch, -1, -1), x[:, 1:]), dim=1)
    pos = torch.cat((pos[:, :1], torch.zeros(batch, n, pos.shape[-1]), pos[:, 1:]), dim=1)
    for i, block in enumerate(backbone.blocks.blocks):
        x = block(x if i == 0 or backbone.pos_mode == "once" else x + pos)
    x = torch.cat((x[:, :1], x[:, 1 + n :]), dim=1)
    return backbone.norm(x)


def _shallow(model: torch.nn.Module) -> list[ShallowPrompts]:
    return [m for m in model.modules() if isinstance(m, ShallowPrompts)]


@pytest.mark.parametrize("pos_mode", ["once", "every_block"])
@given(n=st.integers(1, 5), seed=st.integers(0, 2**16))
@settings(max_examples=6, deadline=None)
def test_shallow_prompts_join_once_after_cls_without_positions(pos_mode, n, seed):
    points = _points(seed)
    model = pointpeft.get_peft_model(
        _backbone(pos_mode=pos_mode), VPTConfig(num_classes=5, num_prompts=n, deep=False)
    ).eval()
    (module,) = _shallow(model)
    with torch.no_grad():
        module.prompts.normal_(generator=torch.Generator().manual_seed(seed))
        got = model.forward_features(points).tokens
        expected = _shallow_twin(_backbone(pos_mode=pos_mode).eval(), module.prompts, points)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_shallow_prompts_act_and_differ_from_deep():
    points = _points()
    shallow = pointpeft.get_peft_model(
        _backbone(), VPTConfig(num_classes=5, num_prompts=3, deep=False)
    ).eval()
    with torch.no_grad():
        plain = _backbone().eval()
        kept = []
        handle = plain.norm.register_forward_hook(lambda module, args, out: kept.append(out))
        plain(points)
        handle.remove()
        assert not torch.allclose(shallow.forward_features(points).tokens, kept[0], atol=1e-4)


def test_shallow_trainable_set_count_and_gradients():
    model = pointpeft.get_peft_model(PointMAE(), VPTConfig(num_classes=15, deep=False))
    trained, _ = model.get_nb_trainable_parameters()
    assert trained == 10 * 384 + 268_303  # the prompts, the head on [CLS, max] and the CLS token and position
    small = pointpeft.get_peft_model(_backbone(), VPTConfig(num_classes=5, num_prompts=2, deep=False)).train()
    trainable = {name for name, p in small.named_parameters() if p.requires_grad}
    assert {name for name in trainable if "instance_prompt" in name} == {
        "base_model.blocks.blocks.0.instance_prompt.default.prompts"
    }
    torch.nn.functional.cross_entropy(small(_points()), torch.arange(4) % 5).backward()
    assert {n for n, p in small.named_parameters() if p.grad is not None} == trainable
    assert _shallow(small)[0].prompts.grad.abs().sum() > 0


def test_shallow_on_a_sequence_first_backbone_without_a_patch_encoder():
    """nn.TransformerEncoder (batch_first False and True, the same weights): the prompts join at the first
    block though the layout names no patch encoder, and the two layouts agree."""
    from standins import TorchEncoderModel

    points, logits = _points(), []
    for batch_first in (True, False):
        torch.manual_seed(0)
        backbone = TorchEncoderModel(batch_first=batch_first)
        torch.manual_seed(1)
        model = pointpeft.get_peft_model(
            backbone, VPTConfig(num_classes=5, num_prompts=3, deep=False), layout="torch_transformer_encoder"
        ).eval()
        with torch.no_grad():
            logits.append(model(points))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-6)


def test_shallow_round_trip_and_beside_dapt(tmp_path):
    points = _points()
    model = pointpeft.get_peft_model(_backbone(), VPTConfig(num_classes=5, num_prompts=2, deep=False)).eval()
    with torch.no_grad():
        _shallow(model)[0].prompts.normal_()
    model.add_adapter("dapt", DAPTConfig(num_classes=5, rank=4))
    model.save_adapter(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["config"]["deep"]) == ("VPT", False)
    loaded = pointpeft.load_adapter(_backbone(), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), model(points), rtol=0, atol=0)
        model.set_adapter("dapt")  # DAPT alone: the shallow prompts do not join
        alone = pointpeft.wrap_with_dapt(_backbone(), DAPTConfig(num_classes=5, rank=4), adapter_name="dapt")
        alone.load_state_dict({k: v for k, v in model.state_dict().items() if k in alone.state_dict()})
        torch.testing.assert_close(model(points), alone.eval()(points), rtol=0, atol=0)


def test_shallow_compiles_whole_and_gives_the_eager_step():
    torch.manual_seed(0)
    backbone = PointMAE(trans_dim=32, depth=2, num_heads=4, num_group=8, group_size=8, encoder_dims=32)
    model = pointpeft.get_peft_model(
        backbone, VPTConfig(num_classes=4, num_prompts=2, deep=False, head_dropout=0.0)
    )
    points = torch.rand(4, 32, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1

    def step(runner):
        model.zero_grad(set_to_none=True)
        logits = runner(points)
        torch.nn.functional.cross_entropy(logits, torch.arange(4) % 4).backward()
        return logits.detach(), _shallow(model)[0].prompts.grad.clone()

    eager = step(model.train())
    torch._dynamo.reset()
    compiled = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-6)


def test_vpt_deep_must_be_a_bool():
    with pytest.raises(TypeError, match=r"deep must be a bool \(True or False\), got int 1"):
        VPTConfig(num_classes=5, deep=1)


def test_pointpeft_params_and_train_run_vpt_shallow(tmp_path, capsys):
    from pathlib import Path

    from pointpeft.cli import main
    from tiny_run import TINY

    config = str(Path(__file__).parents[1] / "configs" / "scanobjectnn_objbg.yaml")
    assert main(["params", "--config", config, "method=vpt", "vpt.deep=false", "dapt.pool=[cls,patch]"]) == 0
    out = capsys.readouterr().out
    assert "trainable params: 272,143 ||" in out and "VPT prompts" in out and "IDPT" not in out
    args = [*TINY, "run.device=cpu", f"run.output_dir={tmp_path}", "method=vpt", "vpt.deep=false"]
    assert main(["train", *args, "dapt.pool=[cls,patch]", "optim.epochs=1"]) == 0
    saved = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["config"]["deep"]) == ("VPT", False)
