"""A test double of the openpoints (PointNeXt) ViT classifier: ``BaseCls(encoder=PointViT, prediction=ClsHead)``.

Written by us from the structure of the upstream openpoints files, not copied from them. It reproduces:

* the wrapper ``BaseCls`` with ``.encoder`` (a ``PointViT``) and ``.prediction`` (a ``ClsHead``) and its
  forward ``prediction(encoder.forward_cls_feat(pts))``, so a state dict has the keys ``encoder.…`` and
  ``prediction.head.…``;
* ``PointViT``'s names: ``patch_embed`` (a ``PointPatchEmbed``: ``conv1``/``conv2`` of 1×1 ``Conv2d`` blocks,
  ``feature_type='dp'``), ``cls_token``, ``cls_pos``, ``pos_embed`` (``{0: Sequential(Linear(3, 128), GELU),
  1: Linear(128, C)}``), ``proj`` (Identity when the patch width equals C), ``pos_drop``, ``blocks.{i}``
  (directly a ModuleList, pre-norm, ``qkv`` with bias as in the published configs, ``mlp.fc1``/``fc2``) and
  a final ``norm`` (LayerNorm eps 1e-6) that the forward calls; the positional embedding is added before
  every block (``add_pos_each_block``); ``forward_cls_feat`` concatenates the features named by
  ``global_feat`` (default ``'cls,max'``: ``x[:, 0]`` and the max over the patch tokens);
* the patch count ``int(N * sample_ratio)`` and KNN grouping (``torch.cdist`` + ``topk``) of
  ``PointPatchEmbed``;
* the CUDA-only allocations of openpoints' CUDA ops: ``furthest_point_sample`` allocates its output as
  ``torch.cuda.IntTensor(B, npoint)`` and its distance buffer as ``torch.cuda.FloatTensor(B, N)``, and
  ``grouping_operation`` allocates ``torch.cuda.FloatTensor(B, C, npoint, nsample)``. On a CPU-only torch
  these raise ``TypeError: type torch.cuda.IntTensor not available``. Every such allocation goes through
  the module-level function :func:`cuda_buffer`; a test replaces it with :func:`cpu_buffer`
  (``monkeypatch.setattr(openpoints_official, "cuda_buffer", openpoints_official.cpu_buffer)``) to run the
  double on CPU. The index computations themselves call :mod:`pointpeft.ops` / plain torch.

Left out: ``P3Embed`` (the ScanObjectNN config), the distillation token, the segmentation decoder.
"""

from __future__ import annotations

from typing import Any

import torch
from tests.upstream.point_mae_official import Attention, DropPath
from torch import nn

import pointpeft


def cuda_buffer(type_name: str, *size: int, device: torch.device | None = None) -> torch.Tensor:
    """Allocate as openpoints' CUDA ops do: ``torch.cuda.<type_name>(*size)`` (fails without CUDA)."""
    constructor = getattr(torch.cuda, type_name)
    if device is None:
        return constructor(*size)  # type: ignore[no-any-return]
    return constructor(*size, device=device)  # type: ignore[no-any-return]


def cpu_buffer(type_name: str, *size: int, device: torch.device | None = None) -> torch.Tensor:
    """The replacement tests patch in for :func:`cuda_buffer`: an uninitialised tensor of the same dtype."""
    dtypes = {"IntTensor": torch.int32, "FloatTensor": torch.float32}
    if type_name not in dtypes:
        raise ValueError(f"type_name: expected one of {sorted(dtypes)}, got {type_name!r}")
    return torch.empty(size, dtype=dtypes[type_name], device=device)


def furthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """FPS as openpoints' ``FurthestPointSampling``: CUDA buffers first, then the indices.

    Shapes:
        ``xyz (B, N, 3)`` → ``(B, npoint)`` int32.
    """
    batch, count, _ = xyz.shape
    output = cuda_buffer("IntTensor", batch, npoint)
    cuda_buffer("FloatTensor", batch, count).fill_(1e10)
    output.copy_(
        pointpeft.ops.farthest_point_sample(xyz, npoint).to(device=output.device, dtype=output.dtype)
    )
    return output


def grouping_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather as openpoints' ``grouping_operation``: a CUDA output buffer, then the gather.

    Shapes:
        ``features (B, C, N)``, ``idx (B, npoint, nsample)`` int → ``(B, C, npoint, nsample)``.
    """
    batch, channels, _ = features.shape
    _, npoint, nsample = idx.shape
    output = cuda_buffer("FloatTensor", batch, channels, npoint, nsample, device=features.device)
    flat = idx.long().reshape(batch, 1, npoint * nsample).expand(-1, channels, -1)
    gathered = torch.gather(features, 2, flat).reshape(batch, channels, npoint, nsample)
    return output.to(features.dtype).copy_(gathered)


class KNN(nn.Module):
    """``torch.cdist`` + ``topk`` over the support points, returned as int32 ``(B, M, k)`` indices."""

    def __init__(self, neighbors: int) -> None:
        super().__init__()
        self.neighbors = neighbors

    @torch.no_grad()
    def forward(self, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        found = torch.cdist(support, query).topk(k=self.neighbors, dim=1, largest=False)
        return found.values, found.indices.transpose(1, 2).contiguous().int()


class KNNGroup(nn.Module):
    """Relative positions of the ``nsample`` nearest points of every query point.

    Shapes:
        forward: ``query_xyz (B, M, 3)``, ``support_xyz (B, N, 3)`` → ``(dp (B, 3, M, nsample), None)``.
    """

    def __init__(self, nsample: int) -> None:
        super().__init__()
        self.nsample = nsample
        self.knn = KNN(nsample)

    def forward(
        self, query_xyz: torch.Tensor, support_xyz: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _, idx = self.knn(support_xyz, query_xyz)
        grouped = grouping_operation(support_xyz.transpose(1, 2).contiguous(), idx)
        grouped = grouped - query_xyz.transpose(1, 2).unsqueeze(-1)
        return grouped, None if features is None else grouping_operation(features, idx)


def conv_block(cin: int, cout: int, norm_act: bool) -> nn.Sequential:
    """openpoints' ``create_convblock2d`` (order conv-norm-act): ``Conv2d(1x1, bias only without norm)[, BN, ReLU]``."""
    if norm_act:
        return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, 1))


class PointPatchEmbed(nn.Module):
    """FPS centres (``int(N * sample_ratio)``), KNN groups, a shared PointNet with the group max fed back.

    Shapes:
        forward: ``p (B, N, 3)`` → ``([p, center_p (B, M, 3)], [x, out_f (B, embed_dim, M)])``.
    """

    def __init__(
        self,
        sample_ratio: float = 0.25,
        group_size: int = 32,
        embed_dim: int = 384,
        channels: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.sample_ratio = sample_ratio
        self.group_size = group_size
        self.grouper = KNNGroup(group_size)
        widths = [3, *(channels or [128, 256, 512]), embed_dim]
        layers = len(widths) - 1
        half = layers // 2
        self.conv1 = nn.Sequential(
            *(conv_block(widths[i], widths[i + 1], i != half - 1) for i in range(half))
        )
        widths[half] *= 2
        self.conv2 = nn.Sequential(
            *(conv_block(widths[i], widths[i + 1], i != layers - 1) for i in range(half, layers))
        )
        self.out_channels = widths[-1]
        self.channel_list = [3, embed_dim]

    def forward(
        self, p: torch.Tensor, x: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        count = p.shape[1]
        idx = furthest_point_sample(p, int(count * self.sample_ratio)).long()
        center_p = torch.gather(p, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
        dp, _ = self.grouper(center_p, p, x)
        feat = self.conv1(dp)
        feat = torch.cat(
            [feat.max(dim=-1, keepdim=True).values.expand(-1, -1, -1, self.group_size), feat], dim=1
        )
        out_f = self.conv2(feat).max(dim=-1, keepdim=True).values.squeeze(-1)
        return [p, center_p], [x, out_f]


class Mlp(nn.Module):
    """openpoints' Mlp: ``drop2(fc2(drop1(act(fc1(x)))))``. Shapes: ``(B, T, C)`` → same."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
        return out


class Block(nn.Module):
    """Pre-norm block (``norm1``, ``attn``, ``drop_path``, ``norm2``, ``mlp``). Shapes: ``(B, T, C)`` → same."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        out: torch.Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out


class PointViT(nn.Module):
    """openpoints' Point ViT encoder (no head).

    Shapes:
        forward: ``p (B, N, 3)`` → ``(p_list, x_list, tokens (B, 1 + M, C))``;
        forward_cls_feat: ``p (B, N, 3)`` → ``(B, len(global_feat) * C)``.
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        embed_args: dict[str, Any] | None = None,
        global_feat: str = "cls,max",
    ) -> None:
        super().__init__()
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PointPatchEmbed(embed_dim=embed_dim, **(embed_args or {}))
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.pos_embed = nn.Sequential(nn.Sequential(nn.Linear(3, 128), nn.GELU()), nn.Linear(128, embed_dim))
        self.proj: nn.Module = (
            nn.Linear(self.patch_embed.out_channels, embed_dim)
            if self.patch_embed.out_channels != embed_dim
            else nn.Identity()
        )
        self.add_pos_each_block = True
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [float(r) for r in torch.linspace(0, drop_path_rate, depth)]
        self.depth = depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.global_feat = global_feat.split(",")
        self.out_channels = len(self.global_feat) * embed_dim
        self.n_tokens = 1
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.cls_pos, std=0.02)

    def forward(
        self, p: torch.Tensor, x: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
        if x is None:
            x = p.clone().transpose(1, 2).contiguous()
        p_list, x_list = self.patch_embed(p, x)
        last = x_list[-1]
        assert last is not None
        center_p, tokens = p_list[-1], self.proj(last.transpose(1, 2))
        batch = tokens.shape[0]
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(center_p)], dim=1)
        out = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        for block in self.blocks:
            out = block(out + pos)
        return p_list, x_list, self.norm(out)

    def forward_cls_feat(self, p: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        _, _, tokens = self.forward(p, x)
        patches = tokens[:, self.n_tokens :]
        feats = []
        for kind in self.global_feat:
            if "cls" in kind:
                feats.append(tokens[:, 0])
            elif "max" in kind:
                feats.append(patches.max(dim=1).values)
            elif kind in ("avg", "mean"):
                feats.append(patches.mean(dim=1))
        return torch.cat(feats, dim=1)


class ClsHead(nn.Module):
    """openpoints' ClsHead with bn1d/relu hidden blocks: ``head.{0,2,...}`` = ``Sequential(Linear(no bias), BN, ReLU)``,
    ``Dropout`` between, the last ``Sequential(Linear)``.

    Shapes:
        forward: ``(B, in_channels)`` → ``(B, num_classes)``.
    """

    def __init__(
        self, num_classes: int, in_channels: int, mlps: list[int] | None = None, dropout: float = 0.5
    ):
        super().__init__()
        widths = [in_channels, *(mlps if mlps is not None else [256]), num_classes]
        heads: list[nn.Module] = []
        for i in range(len(widths) - 2):
            heads.append(
                nn.Sequential(
                    nn.Linear(widths[i], widths[i + 1], bias=False), nn.BatchNorm1d(widths[i + 1]), nn.ReLU()
                )
            )
            if dropout:
                heads.append(nn.Dropout(dropout))
        heads.append(nn.Sequential(nn.Linear(widths[-2], widths[-1])))
        self.head = nn.Sequential(*heads)

    def forward(self, end_points: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(end_points)
        return out


class BaseCls(nn.Module):
    """openpoints' classifier wrapper: ``prediction(encoder.forward_cls_feat(pts))``.

    Shapes:
        forward: ``pts (B, N, 3)`` → logits ``(B, num_classes)``.
    """

    def __init__(self, encoder: PointViT, prediction: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.prediction = prediction
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.prediction(self.encoder.forward_cls_feat(data))
        return out


def tiny_openpoints(num_classes: int = 5) -> BaseCls:
    """A small openpoints ViT classifier: width 48, depth 2, 3 heads, 1/16 of the points as centres, 16 neighbours."""
    encoder = PointViT(
        embed_dim=48,
        depth=2,
        num_heads=3,
        attn_drop_rate=0.1,
        embed_args={"sample_ratio": 0.0625, "group_size": 16, "channels": [16, 32, 64]},
    )
    return BaseCls(encoder, ClsHead(num_classes, encoder.out_channels, mlps=[32, 32]))
