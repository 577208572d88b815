"""Point-MAE masked-autoencoder pre-training: the model (:class:`PointMAEPretrainer`), its loss
(:func:`chamfer_l2`) and the training run (:func:`pretrain`, ``pointpeft pretrain``), whose checkpoints
have the released layout that :func:`pointpeft.load_pretrained` reads; and the small checkpoint that ships
with pointpeft (:func:`bundled_checkpoint`, ``model.pretrained=bundled``)."""

from pointpeft.pretrain.bundled import BUNDLED, BUNDLED_COMMAND, BUNDLED_SIZES, bundled_checkpoint
from pointpeft.pretrain.chamfer import chamfer_l2
from pointpeft.pretrain.loop import RECIPE, PretrainResult, pretrain
from pointpeft.pretrain.model import MAEDecoder, PointMAEPretrainer, random_mask

__all__ = [
    "BUNDLED",
    "BUNDLED_COMMAND",
    "BUNDLED_SIZES",
    "RECIPE",
    "MAEDecoder",
    "PointMAEPretrainer",
    "PretrainResult",
    "bundled_checkpoint",
    "chamfer_l2",
    "pretrain",
    "random_mask",
]
