"""IDPT's prompt generator (a DGCNN over the patch tokens in feature space) and the prompt it places."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: The negative slope of the generator's LeakyReLUs (DGCNN's, as in IDPT's released code).
LEAKY_SLOPE = 0.2


def feature_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` nearest tokens of each token by squared Euclidean distance in feature space, itself included.

    Distances are ``|x_i|² − 2 x_i·x_j + |x_j|²``, computed in float32 at least (with autocast off: half
    precision would reorder near neighbours); each token's own distance is set to −inf before the
    selection, so every token is its own first neighbour (its true distance is 0, which rounding of the
    expanded form could otherwise push above a twin's). Ties at the ``k``-th distance are broken as
    ``torch.topk`` breaks them (unspecified); tokens with equal features give equal edge features, so a tie
    between them does not change what the generator computes.

    Args:
        x: ``(B, C, G)`` features of ``G`` tokens.
        k: neighbours per token, in [1, G].

    Returns:
        ``(B, G, k)`` indices into the ``G`` tokens, nearest first.

    Raises:
        ValueError: if ``k`` is not in [1, G].
    """
    tokens = x.shape[-1]
    if not 1 <= k <= tokens:
        raise ValueError(
            f"IDPTConfig.k must be in [1, G] for the G = {tokens} patch tokens the prompt generator gets, "
            f"got k = {k}; set IDPTConfig(k=...) at most G (the number of patches, num_group)"
        )
    with torch.autocast(x.device.type, enabled=False):
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        squares = x.pow(2).sum(dim=1)  # (B, G)
        inner = torch.bmm(x.transpose(1, 2), x)  # (B, G, G)
        distance = squares[:, :, None] - 2 * inner + squares[:, None, :]
    eye = torch.eye(tokens, dtype=torch.bool, device=x.device)
    distance = distance.masked_fill(eye, float("-inf"))
    return distance.topk(k, dim=-1, largest=False).indices


class EdgeConv(nn.Module):
    """One EdgeConv of a dynamic graph: for each token ``i`` and each of its ``k`` nearest tokens ``j`` in the
    current feature space (:func:`feature_knn`), the edge feature ``[F_j − F_i ; F_i]`` (2C channels) →
    1×1 ``Conv2d`` 2C → C (no bias) → ``BatchNorm2d`` → LeakyReLU(0.2) → max over the ``k`` neighbours.

    Args:
        dim: C, the channels in and out.
        k: the neighbours of each token.

    Shapes:
        forward: ``x (B, C, G)`` → ``(B, C, G)``.
    """

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(2 * dim, dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, tokens = x.shape
        index = feature_knn(x, self.k)  # (B, G, k)
        offset = torch.arange(batch, device=x.device).view(batch, 1, 1) * tokens
        points = x.transpose(1, 2).reshape(batch * tokens, channels)  # (B·G, C)
        neighbours = points[(index + offset).reshape(-1)].view(batch, tokens, self.k, channels)
        centre = x.transpose(1, 2).unsqueeze(2).expand(-1, -1, self.k, -1)  # (B, G, k, C)
        edges = torch.cat((neighbours - centre, centre), dim=-1).permute(0, 3, 1, 2)  # (B, 2C, G, k)
        out = F.leaky_relu(self.bn(self.conv(edges)), LEAKY_SLOPE)
        return out.amax(dim=-1)

    def extra_repr(self) -> str:
        return f"k={self.k}"


class DGCNNPromptGenerator(nn.Module):
    """IDPT's prompt generator: three :class:`EdgeConv` in sequence (the kNN graph recomputed on each one's
    input), their outputs concatenated (3C) → 1×1 ``Conv1d`` 3C → C (no bias) → ``BatchNorm1d`` →
    LeakyReLU(0.2) → max over the tokens.

    ``x1 = E1(T)``, ``x2 = E2(x1)``, ``x3 = E3(x2)``, ``z = LeakyReLU(BN(W [x1; x2; x3]))``,
    ``q = max over the G tokens of z``. PyTorch's default initialisation of the convolutions and BatchNorms.
    Parameters: ``3 · (2C·C + 2C) + (3C·C + 2C)`` (1,330,176 for C = 384).

    Args:
        dim: C, the token width.
        k: the neighbours of each token in the kNN graphs (itself included).

    Shapes:
        forward: ``patches (B, G, C)`` → prompt ``(B, 1, C)``.
    """

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.edge1 = EdgeConv(dim, k)
        self.edge2 = EdgeConv(dim, k)
        self.edge3 = EdgeConv(dim, k)
        self.fuse = nn.Conv1d(3 * dim, dim, kernel_size=1, bias=False)
        self.fuse_bn = nn.BatchNorm1d(dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.transpose(1, 2)  # (B, C, G)
        x1 = self.edge1(x)
        x2 = self.edge2(x1)
        x3 = self.edge3(x2)
        z = F.leaky_relu(self.fuse_bn(self.fuse(torch.cat((x1, x2, x3), dim=1))), LEAKY_SLOPE)  # (B, C, G)
        return z.amax(dim=-1).unsqueeze(1)


class InstancePrompt(nn.Module):
    """IDPT at its block: the generator and the prompt's position.

    Args:
        dim: C, the token width.
        k: the neighbours in the generator's kNN graphs.
        train_prompt_pos: the position is a trained parameter; otherwise a buffer (the released code's
            behaviour: it stays at its init).
        every_block: the position is added to the prompt at the input of every block from this one on (a
            backbone that re-adds positions before every block); False: once, when the prompt joins.

    Attributes:
        generator: the :class:`DGCNNPromptGenerator`.
        prompt_pos: ``(1, 1, C)``, truncated normal with std 0.02.

    Shapes:
        forward: ``patches (B, G, C)`` → prompt ``(B, 1, C)``, without its position.
    """

    prompt_pos: torch.Tensor

    def __init__(self, dim: int, k: int, train_prompt_pos: bool, every_block: bool) -> None:
        super().__init__()
        self.generator = DGCNNPromptGenerator(dim, k)
        position = nn.init.trunc_normal_(torch.empty(1, 1, dim), std=0.02)
        if train_prompt_pos:
            self.prompt_pos = nn.Parameter(position)
        else:
            self.register_buffer("prompt_pos", position)
        self.every_block = every_block

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        prompt: torch.Tensor = self.generator(patches)
        return prompt

    def extra_repr(self) -> str:
        trained = isinstance(self.prompt_pos, nn.Parameter)
        return f"train_prompt_pos={trained}, every_block={self.every_block}"


def positions_every_block(mode: str, backbone: nn.Module) -> bool:
    """Whether the prompt's position is added at every block (True) or once (False), for
    :attr:`IDPTConfig.prompt_pos_mode <pointpeft.IDPTConfig>` ``mode`` on ``backbone``: ``"every_block"``
    and ``"once"`` say it; ``"auto"`` reads the ``pos_mode`` setting (a str attribute ``"every_block"`` or
    ``"once"``) of the first module of ``backbone`` that has one, and is ``"every_block"`` where none has."""
    if mode != "auto":
        return mode == "every_block"
    for module in backbone.modules():
        setting = module.__dict__.get("pos_mode")
        if setting in ("every_block", "once"):
            return bool(setting == "every_block")
    return True
