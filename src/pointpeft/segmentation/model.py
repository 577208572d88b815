"""Point-MAE's part-segmentation model on a :class:`~pointpeft.backbones.PointMAE` encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pointpeft.backbones import PointMAE
from pointpeft.checks import check_int, check_type
from pointpeft.ops import check_cloud, inverse_distance_weights, knn, three_interpolate


def _conv_bn(inputs: int, outputs: int, activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(inputs, outputs, 1), nn.BatchNorm1d(outputs), activation)


class FeaturePropagation(nn.Module):
    """Features of the patch centres carried to every point (three nearest centres, inverse squared
    distance weights), the points' xyz concatenated, then 1×1 convolutions with BatchNorm and ReLU
    (PointNet++'s ``PointNetFeaturePropagation`` as Point-MAE's segmentation model builds it).

    Shapes: ``forward(points (B, N, 3), centers (B, G, 3), features (B, G, C)) -> (B, widths[-1], N)``.
    """

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers.append(_conv_bn(in_channels, width, nn.ReLU()))
            in_channels = width
        self.mlp = nn.Sequential(*layers)

    def forward(self, points: torch.Tensor, centers: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if centers.shape[1] == 1:
            carried = features.expand(-1, points.shape[1], -1)
        else:
            nearest = knn(points, centers, min(3, centers.shape[1]))
            carried = three_interpolate(features, nearest.idx, inverse_distance_weights(nearest.sq_dist))
        out: torch.Tensor = self.mlp(torch.cat((points, carried), dim=2).transpose(1, 2))
        return out


class PointMAESegmentation(nn.Module):
    """Per-point part logits as Point-MAE's ``segmentation/models/pt.py`` computes them.

    The encoder's tokens (no CLS token; the positional embedding added before every block) are taken after
    the blocks ``fetch`` (0-based; default the 4th, 8th and 12th), each through the encoder's final
    LayerNorm, and concatenated (``3C`` channels); their max and mean over the patches, and the shape's
    category one-hot through a 1×1 convolution (64 channels, BatchNorm, LeakyReLU 0.2), are repeated at every
    point; :class:`FeaturePropagation` carries the concatenated tokens to every point (widths ``4C`` and
    1024); a per-point head (512, 256 with BatchNorm, ReLU and dropout 0.5 after the first) gives the logits.
    Train with cross-entropy on the logits (the reference's log-softmax and NLL loss).

    Args:
        backbone: the encoder (its ``cls_token``, ``cls_pos`` and ``pos_mode`` are not used).
        num_parts: part labels (ShapeNetPart: 50).
        num_categories: shape categories (ShapeNetPart: 16).
        fetch: the blocks whose outputs are used, 0-based, in ``[0, depth)``.

    Shapes:
        ``forward(points (B, N, 3), category (B,) int) -> logits (B, N, num_parts)``.
    """

    def __init__(
        self,
        backbone: PointMAE,
        num_parts: int = 50,
        num_categories: int = 16,
        fetch: Sequence[int] = (3, 7, 11),
    ) -> None:
        super().__init__()
        self.backbone = check_type("backbone", backbone, PointMAE, "a pointpeft.backbones.PointMAE")
        self.num_parts = check_int("num_parts", num_parts, 2)
        self.num_categories = check_int("num_categories", num_categories, 1)
        depth = backbone.depth
        if isinstance(fetch, (str, bytes)) or not isinstance(fetch, Sequence) or not fetch:
            raise TypeError(f"fetch must be a non-empty list of block indices, got {fetch!r}")
        self.fetch = tuple(check_int("fetch", i, 0, depth - 1) for i in fetch)
        width = backbone.trans_dim * len(self.fetch)
        self.label_conv = nn.Sequential(
            nn.Conv1d(num_categories, 64, 1, bias=False), nn.BatchNorm1d(64), nn.LeakyReLU(0.2)
        )
        self.propagation = FeaturePropagation(width + 3, (backbone.trans_dim * 4, 1024))
        self.head = nn.Sequential(
            _conv_bn(1024 + 2 * width + 64, 512, nn.ReLU()),
            nn.Dropout(0.5),
            _conv_bn(512, 256, nn.ReLU()),
            nn.Conv1d(256, num_parts, 1),
        )

    def tokens(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(centers (B, G, 3), features (B, G, len(fetch) * C))``: the fetched blocks' normalised tokens."""
        b = self.backbone
        neighborhood, centers = b.group_divider(points)
        x = b.encoder(neighborhood)
        if b.encoder_dims != b.trans_dim:
            x = b.reduce_dim(x)
        pos = b.pos_embed(centers)
        fetched = []
        for index, block in enumerate(b.blocks.blocks):
            x = block(x + pos)
            if index in self.fetch:
                fetched.append(b.norm(x))
        return centers, torch.cat(fetched, dim=2)

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        check_cloud(points, "points")
        if not isinstance(category, torch.Tensor) or category.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"category must be an int64 or int32 tensor, got {getattr(category, 'dtype', category)}"
            )
        if tuple(category.shape) != (points.shape[0],):
            raise ValueError(f"category must have shape ({points.shape[0]},), got {tuple(category.shape)}")
        if not torch.compiler.is_compiling() and (
            category.min() < 0 or category.max() >= self.num_categories
        ):
            raise ValueError(
                f"category must hold values in [0, {self.num_categories}), got {category.tolist()}"
            )
        count = points.shape[1]
        centers, features = self.tokens(points)
        one_hot = nn.functional.one_hot(category.long(), self.num_categories).to(points.dtype)
        label = self.label_conv(one_hot.unsqueeze(2)).expand(-1, -1, count)  # (B, 64, N)
        pooled = torch.cat((features.amax(dim=1), features.mean(dim=1)), dim=1)  # (B, 2 * 3C)
        propagated = self.propagation(points, centers, features)  # (B, 1024, N)
        x = torch.cat((propagated, pooled.unsqueeze(2).expand(-1, -1, count), label), dim=1)
        logits: torch.Tensor = self.head(x)
        return logits.transpose(1, 2)
