"""Checkpoint files laid out as the upstream training scripts save them, and the upstream fine-tuning loaders.

Written by us from the upstream training scripts and loaders (see each function). ``*_checkpoint`` turns a
state dict of one of our doubles (the fine-tuning model) into the dict the upstream script would
``torch.save`` after pre-training; the tensors that only the pre-training model has (decoders, MoCo key
encoder, dVAE, queues, ...) are filled with small random tensors under their upstream names.
``load_like_*`` does what the upstream's own fine-tuning loader does with such a dict: the same renames,
deletions and ``load_state_dict(strict=False)``, and returns the ``(missing_keys, unexpected_keys)`` it would
log.

Point-MAE-family layout (Point-MAE, ReCon, PointGPT, Point-BERT, ACT ``tools/builder.py``)::

    {'base_model': state_dict, 'optimizer': ..., 'epoch': int, 'metrics': dict, 'best_metrics': dict}

where a single-process run (``nn.DataParallel``) prefixes every key with ``module.`` and a DDP run does not
(``data_parallel`` argument). openpoints (``utils/ckpt_util.py`` ``save_checkpoint``)::

    {'model': BaseCls.state_dict() ('encoder.…', 'prediction.…'), 'optimizer', 'scheduler', 'epoch', 'best_val'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]
LoadResult = tuple[list[str], list[str]]


def _extras(names: Iterable[str]) -> StateDict:
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(2, 3, generator=generator) for name in names}


def _wrap(state: StateDict, data_parallel: bool) -> dict[str, Any]:
    prefix = "module." if data_parallel else ""
    return {
        "base_model": {prefix + key: value for key, value in state.items()},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 300,
        "metrics": {"acc": 0.0},
        "best_metrics": {"acc": 0.0},
    }


def _backbone(state: Mapping[str, torch.Tensor], head_markers: tuple[str, ...]) -> StateDict:
    return {k: v.clone() for k, v in state.items() if not any(marker in k for marker in head_markers)}


def point_mae_checkpoint(state: Mapping[str, torch.Tensor], *, data_parallel: bool = True) -> dict[str, Any]:
    """A Point-MAE pre-training file (``Point_MAE``): ``MAE_encoder.{encoder,pos_embed,blocks,norm}.…`` (no
    CLS token: the pre-training encoder has none), ``mask_token``, ``decoder_pos_embed``, ``MAE_decoder``,
    ``increase_dim``. ``state``: a Point-MAE (or ACT-width) fine-tuning state dict."""
    body = {
        "MAE_encoder." + k: v.clone()
        for k, v in state.items()
        if k.split(".")[0] in ("encoder", "pos_embed", "blocks", "norm")
    }
    body.update(
        _extras(
            [
                "mask_token",
                "decoder_pos_embed.0.weight",
                "MAE_decoder.blocks.0.norm1.weight",
                "MAE_decoder.norm.weight",
            ]
            + ["increase_dim.0.weight"]
        )
    )
    return _wrap(body, data_parallel)


def recon_checkpoint(
    state: Mapping[str, torch.Tensor], *, data_parallel: bool = True, with_frozen_encoders: bool = False
) -> dict[str, Any]:
    """A ReCon pre-training file: ``MAE_encoder.`` + every fine-tuning tensor except the head (tokens, their
    positions, contrast blocks, ``norm``), plus the decoder, ``img_proj``/``text_proj``; with
    ``with_frozen_encoders`` (``ckpt-last``/``ckpt-best``, ``save_checkpoint``) also ``img_encoder.…`` and
    ``text_encoder.…``, which ``save_pretrain_model`` (``ckpt-epoch-XXX``) leaves out."""
    body = {"MAE_encoder." + k: v for k, v in _backbone(state, ("cls_head_finetune",)).items()}
    extra = [
        "mask_token",
        "decoder_pos_embed.0.weight",
        "MAE_decoder.blocks.0.norm1.weight",
        "increase_dim.0.weight",
    ]
    extra += ["img_proj.weight", "text_proj.weight"]
    if with_frozen_encoders:
        extra += ["img_encoder.blocks.0.weight", "text_encoder.transformer.0.weight"]
    body.update(_extras(extra))
    return _wrap(body, data_parallel)


def pointgpt_checkpoint(state: Mapping[str, torch.Tensor], *, data_parallel: bool = True) -> dict[str, Any]:
    """A PointGPT pre-training file (``PointGPT``): ``GPT_Transformer.{encoder,blocks,generator_blocks,sos_pos,
    norm}.…`` where ``blocks`` has no ``cls_head_finetune``/``cls_norm`` (built with ``pretrained=True``) and
    there is no ``cls_token``/``cls_pos``."""
    body = {
        "GPT_Transformer." + k: v
        for k, v in _backbone(state, ("cls_head_finetune", "cls_norm")).items()
        if k.split(".")[0] in ("encoder", "blocks", "generator_blocks", "sos_pos", "norm")
    }
    return _wrap(body, data_parallel)


def point_bert_checkpoint(state: Mapping[str, torch.Tensor], *, data_parallel: bool = True) -> dict[str, Any]:
    """A Point-BERT pre-training file (``Point_BERT``, MoCo): ``transformer_q.…`` and ``transformer_k.…``
    (each a MaskTransformer: the fine-tuning backbone tensors plus ``mask_token``, ``lm_head``,
    ``cls_head.{0,2}``), ``dvae.…``, ``queue`` and ``queue_ptr``. The key encoder gets different values."""
    encoder = _backbone(state, ("cls_head_finetune",))
    encoder.update(_extras(["mask_token", "lm_head.weight", "cls_head.0.weight", "cls_head.2.weight"]))
    body = {"transformer_q." + k: v for k, v in encoder.items()}
    body.update({"transformer_k." + k: v + 1.0 if v.is_floating_point() else v for k, v in encoder.items()})
    body.update(_extras(["dvae.encoder.first_conv.0.weight", "dvae.dgcnn_1.input_trans.weight", "queue"]))
    body["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return _wrap(body, data_parallel)


def act_checkpoint(state: Mapping[str, torch.Tensor], *, data_parallel: bool = True) -> dict[str, Any]:
    """An ACT pre-training file (``ACT_PointDistillation``): ``ACT_encoder.`` + the fine-tuning backbone tensors
    (with the CLS token and position) plus ``lm_head``/``cls_head``, and ``dvae_tokenizer``, ``proj_head``,
    ``mask_token``, ``decoder_pos_embed``, ``ACT_decoder``."""
    encoder = _backbone(state, ("cls_head_finetune",))
    encoder.update(_extras(["lm_head.weight", "cls_head.0.weight", "cls_head.2.weight"]))
    body = {"ACT_encoder." + k: v for k, v in encoder.items()}
    body.update(
        _extras(
            ["dvae_tokenizer.encoder.weight", "proj_head.weight", "mask_token", "ACT_decoder.norm.weight"]
        )
    )
    return _wrap(body, data_parallel)


def openpoints_checkpoint(state: Mapping[str, torch.Tensor], *, epoch: int = 299) -> dict[str, Any]:
    """An openpoints training file: ``{'model': state ('encoder.…', 'prediction.…'), 'optimizer', 'scheduler',
    'epoch', 'best_val'}`` (``state`` of a :class:`BaseCls`; a DDP model is saved through ``.module``)."""
    return {
        "model": {k: v.clone() for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {"last_epoch": epoch},
        "epoch": epoch,
        "best_val": 0.0,
    }


def _strip_module(ckpt: Mapping[str, Any]) -> StateDict:
    return {k.replace("module.", ""): v for k, v in ckpt["base_model"].items()}


def _load(model: nn.Module, state: StateDict) -> LoadResult:
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def _rename_prefixes(state: StateDict, prefix: str) -> StateDict:
    for key in list(state):
        if key.startswith(prefix):
            state[key[len(prefix) + 1 :]] = state.pop(key)
        elif key.startswith("base_model"):
            state[key[len("base_model.") :]] = state.pop(key)
    return state


def load_like_point_mae(model: nn.Module, ckpt: Mapping[str, Any]) -> LoadResult:
    """Point-MAE's ``load_model_from_ckpt``: drop every "module.", strip ``MAE_encoder.``/``base_model.``."""
    return _load(model, _rename_prefixes(_strip_module(ckpt), "MAE_encoder"))


def load_like_recon(model: nn.Module, ckpt: Mapping[str, Any]) -> LoadResult:
    """ReCon's ``load_model_from_ckpt`` (models/transformer.py): the same rules as Point-MAE's."""
    return _load(model, _rename_prefixes(_strip_module(ckpt), "MAE_encoder"))


def load_like_act(model: nn.Module, ckpt: Mapping[str, Any]) -> LoadResult:
    """ACT's ``load_model_from_ckpt`` (non-custom): drop "module.", strip ``ACT_encoder.``/``base_model.``."""
    return _load(model, _rename_prefixes(_strip_module(ckpt), "ACT_encoder"))


def load_like_pointgpt(model: nn.Module, ckpt: Mapping[str, Any]) -> LoadResult:
    """PointGPT's ``load_model_from_ckpt``: drop "module.", strip ``GPT_Transformer.``/``base_model.``, then
    delete keys containing ``cls_head_finetune`` (a ``GPT_Transformer.`` key with it raises ``KeyError``, as
    upstream deletes it twice)."""
    state = _strip_module(ckpt)
    for key in list(state):
        if key.startswith("GPT_Transformer"):
            state[key[len("GPT_Transformer.") :]] = state.pop(key)
        elif key.startswith("base_model"):
            state[key[len("base_model.") :]] = state.pop(key)
        if "cls_head_finetune" in key:
            del state[key]
    return _load(model, state)


def load_like_point_bert(model: nn.Module, ckpt: Mapping[str, Any]) -> LoadResult:
    """Point-BERT's ``load_model_from_ckpt``: drop "module."; keep ``transformer_q.…`` (not its ``cls_head``)
    and ``base_model.…`` without the prefix; delete every original key (so ``transformer_k``, ``dvae``, the
    queue are dropped silently)."""
    state = _strip_module(ckpt)
    for key in list(state):
        if key.startswith("transformer_q") and not key.startswith("transformer_q.cls_head"):
            state[key[len("transformer_q.") :]] = state[key]
        elif key.startswith("base_model"):
            state[key[len("base_model.") :]] = state[key]
        del state[key]
    return _load(model, state)


def load_like_openpoints(model: nn.Module, ckpt: Mapping[str, Any], module: str | None = None) -> LoadResult:
    """openpoints' ``load_checkpoint``: descend into 'model'/'net'/'network'/'state_dict'/'base_model', drop
    "module.", keep keys containing ``module`` if given, ``load_state_dict(strict=False)``. PointNeXt's
    ``finetune`` mode passes the whole ``BaseCls``; ``finetune_encoder`` passes ``model.encoder`` (then a
    ``BaseCls`` file's ``encoder.`` keys match nothing)."""
    state: Any = ckpt
    for key in ckpt:
        if key in ("model", "net", "network", "state_dict", "base_model"):
            state = state[key]
    stripped = {k.replace("module.", ""): v for k, v in state.items()}
    if module is not None:
        stripped = {k: v for k, v in stripped.items() if module in k}
    return _load(model, stripped)
