"""DAPT: Dynamic Adapter, Internal Prompts, TFTS and the pooled head, and the walker that inserts them."""

from pointpeft.dapt.adapter import DynamicAdapter, ParallelAdapter
from pointpeft.dapt.head import PooledHead
from pointpeft.dapt.layout import BackboneLayout, BlockLayout, detect_layout, find_blocks
from pointpeft.dapt.model import DAPTFeatures, DAPTModel, wrap_with_dapt
from pointpeft.dapt.prompt import DAPTBlock, FinalNorm, InternalPrompt
from pointpeft.dapt.tfts import TFTS, ScaleShiftAfter

__all__ = [
    "TFTS",
    "BackboneLayout",
    "BlockLayout",
    "DAPTBlock",
    "DAPTFeatures",
    "DAPTModel",
    "DynamicAdapter",
    "FinalNorm",
    "InternalPrompt",
    "ParallelAdapter",
    "PooledHead",
    "ScaleShiftAfter",
    "detect_layout",
    "find_blocks",
    "wrap_with_dapt",
]
