"""VPT (Jia et al., ECCV 2022) on point-cloud transformers. VPT-Deep as the point-cloud PEFT papers run it:
fresh learnable prompt tokens join the input of every block and leave its output (the point-cloud VPT baseline
released in the IDPT code). VPT-Shallow as the original VPT code does it: prompt tokens without positions join
once, after the CLS token, and go through every block."""

from pointpeft.methods.vpt.config import VPTConfig
from pointpeft.methods.vpt.layers import DeepPrompts, ShallowPrompts

__all__ = ["DeepPrompts", "ShallowPrompts", "VPTConfig"]
