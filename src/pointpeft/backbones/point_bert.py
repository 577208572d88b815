"""The Point-BERT fine-tuning encoder, with the official parameter names.

Point-BERT's fine-tuning model (``PointTransformer`` in the official ``models/Point_BERT.py``) is the
Point-MAE encoder with a 256-wide patch encoder followed by ``reduce_dim = Linear(256, trans_dim)``: the
same grouping (FPS + KNN), mini-PointNet (``encoder.first_conv``, ``encoder.second_conv``), ``cls_token``,
``cls_pos``, ``pos_embed`` MLP, pre-norm blocks ``blocks.blocks.{i}`` (``norm1, attn.qkv, attn.proj,
drop_path, norm2, mlp.fc1, mlp.fc2``) that re-add the positional embedding before every block, and final
``norm``. :class:`pointpeft.backbones.PointMAE` with ``encoder_dims != trans_dim`` computes exactly that, so
:class:`PointBERT` is that class with Point-BERT's published defaults; every formula lives in
:mod:`pointpeft.backbones.point_mae`.

Upstream's classification head (``cls_head_finetune``, on ``[x[:, 0], max over x[:, 1:]]`` after the final
norm) is not part of the backbone: :func:`pointpeft.wrap_with_dapt` adds its own head.
"""

from __future__ import annotations

from pointpeft.backbones.point_mae import PointMAE, PosMode
from pointpeft.checks import check_positive_int


class PointBERT(PointMAE):
    """The Point-BERT fine-tuning encoder: :class:`~pointpeft.backbones.PointMAE` with a 256-wide patch
    encoder and ``reduce_dim``, at Point-BERT's published settings.

    The defaults are the published fine-tuning configuration (``trans_dim`` 384, ``depth`` 12,
    ``num_heads`` 6, ``num_group`` 64, ``group_size`` 32, ``encoder_dims`` 256, for clouds of 1024
    points); the published runs use ``drop_path_rate=0.1``. A Point-BERT checkpoint's ``base_model``
    entries load by name once the prefixes its loader strips (``module.``, ``transformer_q.`` or
    ``base_model.``) are removed: the backbone's state-dict keys are ``encoder.*``, ``reduce_dim.*``,
    ``cls_token``, ``cls_pos``, ``pos_embed.*``, ``blocks.blocks.{i}.*`` and ``norm.*``.

    Args:
        trans_dim: token width C.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        num_group: G, the number of patches per cloud.
        group_size: K, the points per patch.
        encoder_dims: output width of the patch encoder, mapped to ``trans_dim`` by ``reduce_dim``. It must
            differ from ``trans_dim``: Point-BERT always has ``reduce_dim``, which
            :class:`~pointpeft.backbones.PointMAE` builds only for differing widths.
        drop_path_rate: stochastic-depth rate, linearly spaced from 0 over the blocks.
        pos_mode: ``"every_block"`` (Point-BERT's forward) or ``"once"`` (see
            :class:`~pointpeft.backbones.PointMAE`).
        mlp_ratio: FFN hidden width over C.
        qkv_bias: whether the qkv projection has a bias (Point-BERT: no).

    Shapes:
        forward: ``points (B, N, 3)`` with ``N >= max(num_group, group_size)`` → tokens ``(B, 1 + G, C)``
        (CLS first), after the final LayerNorm. Upstream's head reads the CLS token ``[:, 0]`` and the
        max over the patch tokens ``[:, 1:]``.

    Raises:
        TypeError / ValueError: as :class:`~pointpeft.backbones.PointMAE`; ValueError also if
            ``encoder_dims == trans_dim``.
    """

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        num_group: int = 64,
        group_size: int = 32,
        encoder_dims: int = 256,
        drop_path_rate: float = 0.0,
        pos_mode: PosMode = "every_block",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
    ) -> None:
        check_positive_int("trans_dim", trans_dim)
        check_positive_int("encoder_dims", encoder_dims)
        if encoder_dims == trans_dim:
            raise ValueError(
                f"encoder_dims must differ from trans_dim (Point-BERT maps the patch encoder's width to "
                f"trans_dim with reduce_dim), got encoder_dims={encoder_dims} and trans_dim={trans_dim}; "
                "for equal widths use pointpeft.backbones.PointMAE"
            )
        super().__init__(
            trans_dim=trans_dim,
            depth=depth,
            num_heads=num_heads,
            num_group=num_group,
            group_size=group_size,
            encoder_dims=encoder_dims,
            drop_path_rate=drop_path_rate,
            pos_mode=pos_mode,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
        )
