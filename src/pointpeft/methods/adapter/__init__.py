"""The AdaptFormer-style adapter (Chen et al., NeurIPS 2022): a bottleneck beside every block's FFN branch,
with a fixed output scale.

Its input is the residual stream after the attention residual (the input of the block's norm before the FFN,
not normalised), and its output is added to the block's output, outside the FFN's DropPath:
``X₁ = X + DropPath(Attn(LN₁ X))``, ``X_out = X₁ + DropPath(MLP(LN₂ X₁)) + A(X₁)``. DAPT's Dynamic Adapter,
by contrast, reads ``LN₂ X₁`` and sits inside the FFN's DropPath.
"""

from pointpeft.methods.adapter.config import AdapterConfig
from pointpeft.methods.adapter.layers import AdaptFormerAdapter

__all__ = ["AdaptFormerAdapter", "AdapterConfig"]
