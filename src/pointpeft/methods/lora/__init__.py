"""LoRA (Hu et al., ICLR 2022): a trained low-rank update beside the frozen linear layers of every block.

On a point-cloud transformer the updates sit beside the block's ``qkv``, ``proj``, ``fc1`` and ``fc2``
(``LoRAConfig.targets``); a packed qkv projection gets one update of all its outputs, as PointLoRA's released
code does.
"""

from pointpeft.methods.lora.config import LORA_TARGETS, LoRAConfig
from pointpeft.methods.lora.layers import LoRA

__all__ = ["LORA_TARGETS", "LoRA", "LoRAConfig"]
