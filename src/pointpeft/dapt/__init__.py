"""DAPT: Dynamic Adapter, Internal Prompts, TFTS and the pooled head, and the walker that inserts them."""

from pointpeft.dapt.adapter import (
    AdapterInput,
    AdapterOutput,
    DynamicAdapter,
    ParallelAdapter,
    StreamAdapterSite,
)
from pointpeft.dapt.head import PooledHead
from pointpeft.dapt.layout import BackboneLayout, BlockLayout, detect_layout, find_blocks
from pointpeft.dapt.model import (
    BlockExecution,
    DAPTFeatures,
    DAPTModel,
    add_auxiliary_loss,
    get_peft_model,
    wrap_with_dapt,
)
from pointpeft.dapt.presets import PRESETS, preset_layout
from pointpeft.dapt.prompt import DAPTBlock, FinalNorm, InternalPrompt
from pointpeft.dapt.tfts import (
    TFTS,
    AdapterModules,
    GroupingSite,
    PackedQKVScaleShift,
    PatchEncoderSite,
    ScaleShiftAfter,
)

__all__ = [
    "PRESETS",
    "TFTS",
    "AdapterInput",
    "AdapterModules",
    "AdapterOutput",
    "BackboneLayout",
    "BlockExecution",
    "BlockLayout",
    "DAPTBlock",
    "DAPTFeatures",
    "DAPTModel",
    "DynamicAdapter",
    "FinalNorm",
    "GroupingSite",
    "InternalPrompt",
    "PackedQKVScaleShift",
    "ParallelAdapter",
    "PatchEncoderSite",
    "PooledHead",
    "ScaleShiftAfter",
    "StreamAdapterSite",
    "add_auxiliary_loss",
    "detect_layout",
    "find_blocks",
    "get_peft_model",
    "preset_layout",
    "wrap_with_dapt",
]
