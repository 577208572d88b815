"""Reference point-cloud backbones, with the official parameter names so that checkpoints load by name.

:data:`BACKBONES` maps the names the training CLI accepts (``model.backbone=<name>``) to the classes.
"""

from torch import nn

from pointpeft.backbones.point_bert import PointBERT
from pointpeft.backbones.point_gpt import PointGPT
from pointpeft.backbones.point_mae import PointMAE
from pointpeft.backbones.recon import ReCon

BACKBONES: dict[str, type[nn.Module]] = {
    "point_mae": PointMAE,
    "point_bert": PointBERT,
    "recon": ReCon,
    "pointgpt": PointGPT,
}
"""The built-in backbones by name: ``"point_mae"``, ``"point_bert"``, ``"recon"``, ``"pointgpt"``."""

__all__ = ["BACKBONES", "PointBERT", "PointGPT", "PointMAE", "ReCon"]
