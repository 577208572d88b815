"""VPT-Deep (Jia et al., ECCV 2022) as the point-cloud PEFT papers run it: fresh learnable prompt tokens join
the input of every block and leave its output (the point-cloud VPT baseline released in the IDPT code)."""

from pointpeft.methods.vpt.config import VPTConfig
from pointpeft.methods.vpt.layers import DeepPrompts

__all__ = ["DeepPrompts", "VPTConfig"]
