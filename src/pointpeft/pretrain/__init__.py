"""Point-MAE masked-autoencoder pre-training: the model (:class:`PointMAEPretrainer`), its loss
(:func:`chamfer_l2`) and the training run (:func:`pretrain`, ``pointpeft pretrain``), whose checkpoints
have the released layout that :func:`pointpeft.load_pretrained` reads."""

from pointpeft.pretrain.chamfer import chamfer_l2
from pointpeft.pretrain.loop import RECIPE, PretrainResult, pretrain
from pointpeft.pretrain.model import MAEDecoder, PointMAEPretrainer, random_mask

__all__ = [
    "RECIPE",
    "MAEDecoder",
    "PointMAEPretrainer",
    "PretrainResult",
    "chamfer_l2",
    "pretrain",
    "random_mask",
]
