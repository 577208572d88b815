"""pointpeft: parameter-efficient transfer learning (DAPT) for pre-trained point-cloud transformers.

Quick start::

    import pointpeft
    backbone = pointpeft.backbones.PointMAE()          # or your own point transformer
    model = pointpeft.wrap_with_dapt(backbone, pointpeft.DAPTConfig(num_classes=15))
    pointpeft.print_trainable_parameters(model)
    logits = model(points)                             # points (B, N, 3) -> logits (B, 15)
"""

from pointpeft import backbones, ops
from pointpeft.adapter_io import load_adapter, save_adapter
from pointpeft.checkpoints import PretrainedLoadResult, load_pretrained, load_reference_dapt
from pointpeft.config import DAPTConfig
from pointpeft.counting import count_parameters, format_trainable_parameters, print_trainable_parameters
from pointpeft.dapt import (
    PRESETS,
    BackboneLayout,
    BlockExecution,
    BlockLayout,
    DAPTFeatures,
    DAPTModel,
    add_auxiliary_loss,
    detect_layout,
    get_peft_model,
    preset_layout,
    wrap_with_dapt,
)
from pointpeft.full import FullFinetuneModel, full_finetune
from pointpeft.graph_step import CUDAGraphStep
from pointpeft.methods.adapter import AdapterConfig
from pointpeft.methods.bitfit import BitFitConfig
from pointpeft.methods.full_finetune import FullFinetuneConfig
from pointpeft.methods.idpt import IDPTConfig
from pointpeft.methods.linear_probe import LinearProbeConfig
from pointpeft.methods.lora import LoRAConfig
from pointpeft.methods.pointgst import PointGSTConfig
from pointpeft.methods.pointlora import PointLoRAConfig
from pointpeft.methods.ssf import SSFConfig
from pointpeft.methods.vpt import VPTConfig
from pointpeft.version import __version__ as __version__

__all__ = [
    "AdapterConfig",
    "BackboneLayout",
    "BitFitConfig",
    "BlockExecution",
    "BlockLayout",
    "CUDAGraphStep",
    "DAPTConfig",
    "DAPTFeatures",
    "DAPTModel",
    "FullFinetuneConfig",
    "FullFinetuneModel",
    "IDPTConfig",
    "LinearProbeConfig",
    "LoRAConfig",
    "PRESETS",
    "PointGSTConfig",
    "PointLoRAConfig",
    "PretrainedLoadResult",
    "SSFConfig",
    "VPTConfig",
    "__version__",
    "add_auxiliary_loss",
    "backbones",
    "count_parameters",
    "detect_layout",
    "format_trainable_parameters",
    "full_finetune",
    "get_peft_model",
    "load_adapter",
    "load_pretrained",
    "load_reference_dapt",
    "ops",
    "preset_layout",
    "print_trainable_parameters",
    "save_adapter",
    "wrap_with_dapt",
]


def __getattr__(name: str) -> object:
    """``pointpeft.train`` and ``pointpeft.data`` on first use: ``import pointpeft`` stays light (no YAML,
    progress bars or dataset readers until they are needed)."""
    if name in ("train", "data"):
        import importlib

        return importlib.import_module(f"pointpeft.{name}")
    raise AttributeError(f"module 'pointpeft' has no attribute {name!r}")
