"""PointGST's graph bases of the patch centres and its Point Cloud Spectral Adapter (PCSA)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

#: Bits of each integer coordinate that the z-order key interleaves (the released code's ``depth``).
MORTON_DEPTH = 16

#: The factor the centres are multiplied by before their integer parts make the z-order key.
MORTON_SCALE = 100.0

#: Added to every degree before its inverse square root (the released code's epsilon).
DEGREE_EPS = 1e-6


class GraphBases(NamedTuple):
    """The graph bases of one forward, shared by every block's :class:`PCSA` (none of them needs a gradient).

    Attributes:
        global_basis: ``U (B, G, G)``, the eigenvectors (columns, eigenvalues ascending) of the normalised
            Laplacian of all the centres of each cloud.
        local_basis: ``U_loc (B, n, s, s)``, those of each of the ``n = G / s`` chunks of ``s`` consecutive
            centres in z-order.
        order: ``(B, G)`` int64, the patch indices in z-order (``sorted = patches[order]``).
        inverse: ``(B, G)`` int64, the inverse permutation (``patches = sorted[inverse]``).
    """

    global_basis: torch.Tensor
    local_basis: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor


def morton_keys(centers: torch.Tensor) -> torch.Tensor:
    """The z-order (Morton) key of each centre, as the released code computes it.

    The integer coordinates are ``k = trunc(100 · c)`` (int64, toward zero). The key interleaves the low 16
    bits (two's complement, so negative coordinates wrap) of ``k_y``, ``k_x`` and ``k_z``, in that order:
    bit ``i`` of ``k_y`` goes to key bit ``3i + 2``, of ``k_x`` to ``3i + 1``, of ``k_z`` to ``3i``.

    Shapes:
        ``centers (..., 3)`` floating → ``(...)`` int64 keys in ``[0, 2**48)``.
    """
    coords = torch.trunc(centers * MORTON_SCALE).to(torch.int64)
    first, second, third = coords[..., 1], coords[..., 0], coords[..., 2]
    key = torch.zeros_like(first)
    for bit in range(MORTON_DEPTH):
        key = (
            key
            | (((first >> bit) & 1) << (3 * bit + 2))
            | (((second >> bit) & 1) << (3 * bit + 1))
            | (((third >> bit) & 1) << (3 * bit))
        )
    return key


def normalized_laplacian(centers: torch.Tensor) -> torch.Tensor:
    """The normalised Laplacian of the fully connected graph of each set of centres.

    ``D_ij = ‖c_i − c_j‖`` (computed from the differences, so ``D_ii = 0`` exactly), ``d_min`` the smallest
    positive distance over the whole tensor (one number for the batch, as the released code; 1 where no
    distance is positive), ``A_ij = 1 / max(D_ij / d_min + δ_ij, 1)`` (so ``A_ii = 1``),
    ``Δ = diag(Σ_j A_ij + 1e-6)`` and ``L = I − Δ^{-1/2} A Δ^{-1/2}``. The ``max`` changes nothing where the
    released code is defined (every positive ``D_ij`` is at least ``d_min``); it gives two distinct but
    coincident centres (``D_ij = 0``, ``i ≠ j``) the weight 1 instead of the released code's infinite one,
    on which ``torch.linalg.eigh`` fails.

    Shapes:
        ``centers (B, n, 3)`` floating → ``L (B, n, n)``, symmetric, of the same dtype.
    """
    dist = (centers[:, :, None, :] - centers[:, None, :, :]).norm(dim=-1)  # (B, n, n)
    positive = torch.where(dist > 0, dist, torch.full_like(dist, float("inf")))
    d_min = positive.amin()
    d_min = torch.where(torch.isfinite(d_min), d_min, torch.ones_like(d_min))
    eye = torch.eye(dist.shape[-1], dtype=dist.dtype, device=dist.device)
    adjacency = 1.0 / (dist / d_min + eye).clamp_min(1.0)  # 1 for coincident centres, else as released
    inv_sqrt = torch.rsqrt(adjacency.sum(dim=-1) + DEGREE_EPS)  # (B, n)
    laplacian: torch.Tensor = eye - inv_sqrt[:, :, None] * adjacency * inv_sqrt[:, None, :]
    return laplacian


def spectral_basis(centers: torch.Tensor) -> torch.Tensor:
    """``U``, the eigenvectors of :func:`normalized_laplacian` (``torch.linalg.eigh``: columns, eigenvalues
    ascending). Shapes: ``centers (B, n, 3)`` → ``U (B, n, n)``, orthogonal."""
    basis: torch.Tensor = torch.linalg.eigh(normalized_laplacian(centers)).eigenvectors
    return basis


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, i]]`` for every ``b, i``. Shapes: ``values (B, G, D)``, ``index (B, G)`` →
    ``(B, G, D)``."""
    return torch.gather(values, 1, index[:, :, None].expand(-1, -1, values.shape[-1]))


def graph_bases(centers: torch.Tensor, local_size: int) -> GraphBases:
    """The global and local graph bases of the patch centres (see :class:`GraphBases`).

    Computed without gradient, with autocast off, in float32 at least (float64 centres stay float64): under
    bf16 autocast ``torch.linalg.eigh`` would otherwise be handed, or run on, low-precision matrices. The
    z-order is ``argsort`` of :func:`morton_keys` (stable: equal keys keep their patch order); the sorted
    centres are cut into ``n = G / local_size`` chunks, each with its own :func:`spectral_basis` (``d_min``
    taken over all the ``B · n`` chunks).

    Args:
        centers: ``(B, G, 3)`` patch centres, in the patch tokens' order.
        local_size: s, the centres per local graph; it must divide G.

    Raises:
        ValueError: if ``centers`` is not ``(B, G, 3)`` floating, or ``local_size`` does not divide G (naming
            both).

    Shapes:
        ``centers (B, G, 3)`` → ``U (B, G, G)``, ``U_loc (B, G/s, s, s)``, ``order (B, G)``, ``inverse (B, G)``.
    """
    if centers.dim() != 3 or centers.shape[-1] != 3 or not centers.is_floating_point():
        raise ValueError(
            f"the patch centres must be a floating (B, G, 3) tensor, got {centers.dtype} of shape "
            f"{tuple(centers.shape)}"
        )
    b, g, _ = centers.shape
    if g % local_size:
        raise ValueError(
            f"PointGSTConfig.local_size must divide the number of patches G, got local_size = {local_size} "
            f"and G = {g}; choose a local_size that divides G (the released code: 32 for G = 128 and G = 64)"
        )
    dtype = torch.promote_types(centers.dtype, torch.float32)
    with torch.no_grad(), torch.autocast(device_type=centers.device.type, enabled=False):
        points = centers.detach().to(dtype)
        global_basis = spectral_basis(points)
        order = torch.argsort(morton_keys(points), dim=1, stable=True)
        inverse = torch.argsort(order, dim=1)
        chunks = _gather_rows(points, order).reshape(b * (g // local_size), local_size, 3)
        local_basis = spectral_basis(chunks).reshape(b, g // local_size, local_size, local_size)
    return GraphBases(global_basis, local_basis, order, inverse)


class GraphBasesMaker(nn.Module):
    """Makes the :class:`GraphBases` of one forward from the patch centres (no parameters): held, per adapter,
    by the site of the backbone's grouping module, which leaves its output in the call context.

    Args:
        local_size: s, the centres per local graph.

    Shapes:
        forward: ``centers (B, G, 3)`` → the tuple of :func:`graph_bases`.
    """

    def __init__(self, local_size: int) -> None:
        super().__init__()
        self.local_size = local_size

    def forward(self, centers: torch.Tensor) -> GraphBases:
        return graph_bases(centers, self.local_size)

    def extra_repr(self) -> str:
        return f"local_size={self.local_size}"


class PCSA(nn.Module):
    """The Point Cloud Spectral Adapter of one block, as the released code computes it.

    With input ``Z (B, L, C)`` whose last G rows are the patch tokens, and the forward's bases
    ``U (B, G, G)``, ``U_loc (B, n, s, s)`` (the code applies ``U`` forward and ``Uᵀ`` back):

    1. ``H = Z W_d + b_d`` ``(B, L, r)``; ``S = H[:, −G:]`` (before the activation); ``H ← SiLU(H)``.
    2. Global: ``F = U S``; ``F ← F + SiLU(W_a LN_g(F) + b_a)``; ``S_g = Uᵀ F``.
    3. Local: ``S_z`` = the rows of ``S`` in z-order, as ``(B, n, s, r)``; ``F_l = U_loc S_z``;
       ``F_l ← F_l + SiLU(W_a LN_l(F_l) + b_a)`` (the same ``W_a, b_a``); ``S_l = U_locᵀ F_l``, back to
       ``(B, G, r)`` and to the patch order.
    4. ``H[:, −G:] ← S_g + S_l + H[:, −G:]`` (the other rows keep ``SiLU(H)``).
    5. Output ``scale · (H W_u + b_u)`` ``(B, L, C)``.

    Initialised as the released code: ``W_d`` Xavier-uniform, ``b_d`` as ``nn.Linear``; ``W_u, b_u`` and
    the shared ``W_a, b_a`` zeros; the LayerNorms at ones and zeros. A fresh adapter outputs exactly zero.

    Args:
        dim: C, the token width.
        rank: r, the bottleneck width.
        scale: the constant the output is multiplied by (not learned).

    Shapes:
        forward: ``x (B, L, C)`` with ``L >= G`` and the :class:`GraphBases` of its batch → ``(B, L, C)``.
    """

    #: The residual-stream site hands this module the forward's graph bases as a second argument.
    reads_graph_bases = True

    def __init__(self, dim: int, rank: int, scale: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.adapt1 = nn.Linear(rank, rank)
        self.norm_global = nn.LayerNorm(rank)
        self.norm_local = nn.LayerNorm(rank)
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The released code's init: Xavier-uniform ``W_d``; ``W_u``, ``b_u``, ``W_a``, ``b_a`` zeros."""
        with torch.no_grad():
            self.down.reset_parameters()
            nn.init.xavier_uniform_(self.down.weight)
            for layer in (self.up, self.adapt1):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            self.norm_global.reset_parameters()
            self.norm_local.reset_parameters()

    def _spectral(self, coeffs: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """``F + SiLU(adapt1(norm(F)))`` on spectral coefficients ``F (..., r)``."""
        out: torch.Tensor = coeffs + F.silu(self.adapt1(norm(coeffs)))
        return out

    def forward(self, x: torch.Tensor, bases: GraphBases | tuple[torch.Tensor, ...]) -> torch.Tensor:
        basis, local_basis, order, inverse = bases
        batch, chunks, size, _ = local_basis.shape
        g = chunks * size
        if x.dim() != 3 or x.shape[0] != batch or x.shape[1] < g:
            raise RuntimeError(
                f"PCSA reads the residual stream (B, L, C) with its last G = {g} rows the patch tokens of the "
                f"{batch} clouds whose centres made the graph bases, got shape {tuple(x.shape)}"
            )
        h = self.down(x)  # (B, L, r)
        patches = h[:, -g:]  # (B, G, r), before the activation
        h = F.silu(h)
        basis = basis.to(patches.dtype)
        local_basis = local_basis.to(patches.dtype)
        global_part = basis.transpose(-2, -1) @ self._spectral(basis @ patches, self.norm_global)
        in_order = _gather_rows(patches, order).reshape(batch, chunks, size, -1)  # (B, n, s, r)
        local = local_basis.transpose(-2, -1) @ self._spectral(local_basis @ in_order, self.norm_local)
        local_part = _gather_rows(local.reshape(batch, g, -1), inverse)  # (B, G, r), patch order
        h = torch.cat((h[:, : h.shape[1] - g], global_part + local_part + h[:, -g:]), dim=1)
        out: torch.Tensor = self.up(h) * self.scale
        return out

    def extra_repr(self) -> str:
        return f"rank={self.down.out_features}, scale={self.scale:g}"
