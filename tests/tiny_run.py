"""The overrides of a training run small enough for a test: a one-block Point-MAE of width 32 on 16
synthetic clouds of 64 points, one epoch."""

TINY = [
    "data.npoints=64",
    "data.synthetic_points=64",
    "data.synthetic_classes=4",
    "data.synthetic_train=16",
    "data.synthetic_test=8",
    "model.trans_dim=32",
    "model.depth=1",
    "model.num_heads=4",
    "model.num_group=8",
    "model.group_size=8",
    "model.encoder_dims=32",
    "model.init=default",
    "dapt.rank=4",
    "optim.batch_size=8",
    "optim.eval_batch_size=8",
    "optim.warmup_epochs=0",
    "optim.epochs=1",
    "run.progress=false",
    "run.threads=1",
]
