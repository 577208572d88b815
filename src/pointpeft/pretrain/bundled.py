"""The small pre-trained Point-MAE shipped with pointpeft: a checkpoint in the released layout, made by one
``pointpeft pretrain`` command on synthetic shapes, that ``pointpeft demo`` and ``model.pretrained=bundled``
start from."""

from __future__ import annotations

import os

#: ``model.pretrained`` names the bundled checkpoint with this value.
BUNDLED = "bundled"
#: The file, inside the ``pointpeft.pretrain`` package.
BUNDLED_FILE = "point_mae_synthetic.pth"
#: The backbone the bundled checkpoint fits (``pointpeft.backbones.PointMAE`` keyword arguments; the model
#: keys of ``configs/synthetic.yaml``).
BUNDLED_SIZES = {
    "trans_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "num_group": 32,
    "group_size": 16,
    "encoder_dims": 64,
}
#: The command that made it (run on a CPU, 2026-12-06).
BUNDLED_COMMAND = (
    "pointpeft pretrain --epochs 40 --clouds 1000 --batch-size 32 --npoints 256 --synthetic-points 512 "
    "--trans-dim 64 --depth 4 --num-heads 4 --num-group 32 --group-size 16 --decoder-num-heads 4 "
    "--warmup-epochs 3 --threads 1 --output-dir runs/pretrain-bundled"
)


def bundled_checkpoint() -> str:
    """The path of the bundled checkpoint (``{"base_model": ..., "epoch": ...}``, the released layout):
    unlabelled clouds of all 14 :class:`~pointpeft.data.SyntheticShapes` classes, none of them a cloud of
    ``pointpeft train``'s synthetic sets, pre-trained by :data:`BUNDLED_COMMAND` for a
    ``PointMAE(**BUNDLED_SIZES)``.

    Raises:
        FileNotFoundError: if the installed package lacks the file (a build that left out package data).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), BUNDLED_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the bundled checkpoint {BUNDLED_FILE} is not installed with pointpeft (looked at {path}); "
            "reinstall pointpeft, or make it with: " + BUNDLED_COMMAND
        )
    return path
