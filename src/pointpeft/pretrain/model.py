"""Point-MAE's masked-autoencoder pre-training around a :class:`~pointpeft.backbones.PointMAE` encoder."""

from __future__ import annotations

import torch
from torch import nn

from pointpeft.backbones import PointMAE
from pointpeft.backbones.point_mae import Block
from pointpeft.checks import check_fraction, check_positive_int, check_type
from pointpeft.pretrain.chamfer import chamfer_l2

#: The encoder's tensors that pre-training does not have (Point-MAE's pre-training has no CLS token).
FINE_TUNING_ONLY = ("cls_token", "cls_pos")


def random_mask(
    batch: int, groups: int, ratio: float, *, generator: torch.Generator | None = None, device: torch.device
) -> torch.Tensor:
    """Point-MAE's ``rand`` mask: in each cloud, ``int(ratio · G)`` of the G patches, drawn uniformly
    without replacement, are masked.

    Returns:
        a bool tensor ``(B, G)``, True where a patch is masked.
    """
    count = int(ratio * groups)
    order = torch.rand(batch, groups, generator=generator).argsort(dim=1)[:, :count]
    mask = torch.zeros(batch, groups, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask.to(device)


class MAEDecoder(nn.Module):
    """Point-MAE's lightweight decoder: pre-norm blocks with the positions added before each, a final
    LayerNorm on the last ``count`` tokens (the masked ones).

    Shapes:
        forward: ``x (B, L, C)``, ``pos (B, L, C)``, ``count`` → ``(B, count, C)``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, drop_path_rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, drop_path=drop_path_rates[i]) for i in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        for module in self.modules():  # the released decoder's init
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, count: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        out: torch.Tensor = self.norm(x[:, -count:])
        return out


class PointMAEPretrainer(nn.Module):
    """Point-MAE's pre-training model (Pang et al., ECCV 2022), as its released code computes it, around
    a :class:`~pointpeft.backbones.PointMAE` whose encoder it trains (``MAE_encoder``).

    For clouds ``(B, N, 3)``: FPS + kNN patches ``(B, G, K, 3)`` and centres; a random ``mask_ratio`` of
    the patches per cloud is masked; the visible patches pass the patch encoder and the blocks (positions
    of their centres added before every block) and the final norm; the decoder reads them followed by one
    shared ``mask_token`` per masked patch (decoder positions of all centres added before each of its
    blocks); its outputs at the masked patches go through ``increase_dim`` (a 1×1 conv to ``3K``) to ``K``
    points each, and the loss is :func:`~pointpeft.pretrain.chamfer_l2` between those and the masked
    patches (centred on their centres). The CLS token and position of the backbone are not used.

    The state dict has the released layout: ``MAE_encoder.*`` (the backbone's names),
    ``mask_token``, ``decoder_pos_embed.*``, ``MAE_decoder.*``, ``increase_dim.0.*``;
    :meth:`checkpoint_state_dict` leaves out the backbone's CLS tensors, which the released pre-training
    does not have, so :func:`pointpeft.load_pretrained` reads the file as a released one.

    Args:
        backbone: the encoder, a :class:`~pointpeft.backbones.PointMAE` whose patch encoder is as wide as
            its tokens (``encoder_dims == trans_dim``, Point-MAE's own).
        mask_ratio: the share of patches masked per cloud, in [0, 1) (released: 0.6).
        decoder_depth: decoder blocks (released: 4).
        decoder_num_heads: their attention heads (released: 6).
        drop_path_rate: the decoder's stochastic depth, spaced from 0 over its blocks (released: the
            encoder's, 0.1).

    Shapes:
        forward: ``points (B, N, 3)`` → the loss, a scalar.
    """

    def __init__(
        self,
        backbone: PointMAE,
        mask_ratio: float = 0.6,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        check_type("backbone", backbone, PointMAE, "a pointpeft.backbones.PointMAE")
        if backbone.encoder_dims != backbone.trans_dim:
            raise ValueError(
                f"backbone must have encoder_dims == trans_dim (Point-MAE's encoder), got encoder_dims="
                f"{backbone.encoder_dims} and trans_dim={backbone.trans_dim}"
            )
        mask_ratio = check_fraction("mask_ratio", mask_ratio)  # < 1: some patches stay visible
        check_positive_int("decoder_depth", decoder_depth)
        check_positive_int("decoder_num_heads", decoder_num_heads)
        drop_path_rate = check_fraction("drop_path_rate", drop_path_rate)
        dim, size = backbone.trans_dim, backbone.group_size
        if dim % decoder_num_heads:
            raise ValueError(
                f"decoder_num_heads ({decoder_num_heads}) must divide the token width trans_dim ({dim})"
            )
        self.mask_ratio = mask_ratio
        self.MAE_encoder = backbone
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, decoder_depth)]
        self.MAE_decoder = MAEDecoder(dim, decoder_depth, decoder_num_heads, rates)
        self.increase_dim = nn.Sequential(nn.Conv1d(dim, 3 * size, 1))

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The Chamfer-L2 reconstruction loss of the masked patches of ``points (B, N, 3)``; ``generator``
        draws the mask (else torch's global random state)."""
        encoder = self.MAE_encoder
        neighborhood, center = encoder.group_divider(points)  # (B, G, K, 3), (B, G, 3)
        batch, groups, size, _ = neighborhood.shape
        mask = random_mask(batch, groups, self.mask_ratio, generator=generator, device=points.device)
        tokens = encoder.encoder(neighborhood)  # (B, G, C)
        dim = tokens.shape[-1]
        visible = tokens[~mask].reshape(batch, -1, dim)
        x = encoder.blocks(visible, encoder.pos_embed(center[~mask].reshape(batch, -1, 3)))
        x = encoder.norm(x)
        masked = int(mask[0].sum())
        position_visible = self.decoder_pos_embed(center[~mask]).reshape(batch, -1, dim)
        position_masked = self.decoder_pos_embed(center[mask]).reshape(batch, masked, dim)
        full = torch.cat((x, self.mask_token.expand(batch, masked, -1)), dim=1)
        decoded = self.MAE_decoder(full, torch.cat((position_visible, position_masked), dim=1), masked)
        rebuilt = self.increase_dim(decoded.transpose(1, 2)).transpose(1, 2)  # (B, M, 3K)
        predicted = rebuilt.reshape(batch * masked, size, 3)
        target = neighborhood[mask].reshape(batch * masked, size, 3)
        return chamfer_l2(predicted, target)

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the encoder's CLS tensors: the layout of the released pre-training
        checkpoints' ``base_model``."""
        skip = {f"MAE_encoder.{name}" for name in FINE_TUNING_ONLY}
        return {k: v for k, v in self.state_dict().items() if k not in skip}
