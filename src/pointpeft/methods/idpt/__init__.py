"""IDPT, Instance-aware Dynamic Prompt Tuning (Zha et al., ICCV 2023), as its released code computes it on a
Point-MAE backbone.

At one block ``p`` (``prompt_layer``) a DGCNN-style generator turns the ``G`` patch tokens that block ``p``
receives (the output of block ``p − 1``, CLS left out, without positions) into one prompt token; the prompt
joins the sequence right after the CLS token, with its own position, and blocks ``p … L−1`` run on
``[CLS, prompt, patches]``. The head pools the CLS token, the prompt and the max over the patches (or the
prompt alone).
"""

from pointpeft.methods.idpt.config import PROMPT_POS_MODES, IDPTConfig
from pointpeft.methods.idpt.layers import (
    DGCNNPromptGenerator,
    EdgeConv,
    InstancePrompt,
    feature_knn,
    positions_every_block,
)

__all__ = [
    "PROMPT_POS_MODES",
    "DGCNNPromptGenerator",
    "EdgeConv",
    "IDPTConfig",
    "InstancePrompt",
    "feature_knn",
    "positions_every_block",
]
