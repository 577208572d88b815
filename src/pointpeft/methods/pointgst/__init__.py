"""PointGST, Point cloud Graph Spectral Tuning (Liang et al., arXiv 2410.08114, TPAMI 2025), as its released
code computes it on a Point-MAE backbone.

Once per forward, graph bases are computed from the ``G`` patch centres (no gradient) and shared by every
block: a global one, the eigenvectors of the normalised Laplacian of a fully connected graph of all the
centres, and local ones, of chunks of ``local_size`` centres along a z-order curve. In each block a Point
Cloud Spectral Adapter (:class:`PCSA`) reads the residual stream after the attention residual, projects it
down to ``rank`` channels, transforms the patch rows into both spectral domains, applies one shared
zero-initialised linear layer there, transforms back, and projects up; its output is added to the block's
output outside the FFN's DropPath (AdaptFormer's place):
``X₁ = X + DropPath(Attn(LN₁ X))``, ``X_out = X₁ + DropPath(MLP(LN₂ X₁)) + PCSA(X₁)``.
"""

from pointpeft.methods.pointgst.config import PointGSTConfig
from pointpeft.methods.pointgst.layers import (
    PCSA,
    GraphBases,
    GraphBasesMaker,
    graph_bases,
    morton_keys,
    normalized_laplacian,
    spectral_basis,
)

__all__ = [
    "PCSA",
    "GraphBases",
    "GraphBasesMaker",
    "PointGSTConfig",
    "graph_bases",
    "morton_keys",
    "normalized_laplacian",
    "spectral_basis",
]
