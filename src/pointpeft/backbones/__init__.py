"""Reference point-cloud backbones, with the official parameter names so that checkpoints load by name."""

from pointpeft.backbones.point_mae import PointMAE

__all__ = ["PointMAE"]
