"""PointLoRA (Wang et al., CVPR 2025, "PointLoRA: Low-Rank Adaptation with Token Selection for Point Cloud
Learning"), as its released code computes it on a Point-MAE backbone.

LoRA updates beside every block's ``attn.qkv`` and ``attn.proj``, each with a prompt-MLP term shared by all
the blocks; multi-scale token selection once before the blocks (extra FPS + kNN groupings through the
backbone's patch encoder and position MLP, a mask predictor, hard top-K tokens appended after the patches);
shared MLPs added to the patch and selected tokens at every block; the patch encoder's first conv stage and
the position MLP trained; an auxiliary mask loss that the training loop adds.
"""

from pointpeft.methods.pointlora.config import POINTLORA_SCALES, PointLoRAConfig, selected_count
from pointpeft.methods.pointlora.layers import (
    MASK_LOSS_EPS,
    MaskPredictor,
    PointLoRAShared,
    PointLoRAUpdate,
    mask_loss,
    prompt_mlp,
)

__all__ = [
    "MASK_LOSS_EPS",
    "POINTLORA_SCALES",
    "MaskPredictor",
    "PointLoRAConfig",
    "PointLoRAShared",
    "PointLoRAUpdate",
    "mask_loss",
    "prompt_mlp",
    "selected_count",
]
