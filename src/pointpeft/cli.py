"""The ``pointpeft`` command line: ``demo``, ``train``, ``fewshot``, ``eval``, ``params``, ``pretrain``.

Errors that pointpeft raises about what the user gave it (a bad config key, a missing file, data that does
not fit, a ``last.pt`` that cannot be resumed) are printed as ``pointpeft <command>: error: ...`` with exit
code 2 (1 for a training loss that became NaN); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import linecache
import os
import sys
from collections.abc import Sequence
from typing import Any

# The errors pointpeft raises for bad input (with a message naming the key, argument or file), and the
# exit code each gets. Only those raised by pointpeft's own code count (see _raised_by_pointpeft).
USER_ERRORS: dict[type[BaseException], int] = {
    ValueError: 2,
    TypeError: 2,
    FileNotFoundError: 2,
    FloatingPointError: 1,
}


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="YAML config (see configs/); defaults otherwise. Give it again to layer files in order, e.g. "
        "a dataset's config then a method's from configs/methods/",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. optim.epochs=10"
    )


def _build_parser() -> argparse.ArgumentParser:
    from pointpeft.version import __version__

    parser = argparse.ArgumentParser(
        prog="pointpeft", description="Parameter-efficient tuning (DAPT) of point-cloud transformers."
    )
    parser.add_argument("--version", action="version", version=f"pointpeft {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="DAPT on a pre-trained and on a random backbone, and a linear probe, on synthetic shapes"
    )
    demo.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs of each of the three runs (default: the demo's 20)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, weights and order (default: 0)")
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    demo.add_argument(
        "--output-dir",
        default="runs/demo",
        help="the demo's folder, a subfolder per run (default: runs/demo)",
    )
    train = commands.add_parser("train", help="train DAPT as a config says (torchrun-ready)")
    _add_config_arguments(train)
    fewshot = commands.add_parser(
        "fewshot",
        help="the few-shot ModelNet40 protocol: every way x shot x fold episode, then mean ± std per setting "
        "(resumable; e.g. --config configs/fewshot_modelnet40.yaml data.root=DIR)",
    )
    _add_config_arguments(fewshot)
    for flag, values in (("--ways", "5 10"), ("--shots", "10 20"), ("--folds", "0 1 ... 9")):
        fewshot.add_argument(
            flag, type=int, nargs="+", default=None, help=f"episodes to run (default: {values})"
        )
    evaluate = commands.add_parser("eval", help="test accuracy of a saved adapter")
    evaluate.add_argument("--adapter", required=True, help="adapter folder (e.g. runs/NAME/best)")
    evaluate.add_argument(
        "--config",
        action="append",
        default=None,
        help="YAML config (repeatable, applied in order); without it, the backbone and data settings recorded "
        "in the adapter folder",
    )
    evaluate.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. data.root=/data"
    )
    params = commands.add_parser("params", help="trainable-parameter table of a config, without training")
    _add_config_arguments(params)
    _add_pretrain_parser(commands)
    return parser


def _add_pretrain_parser(commands: Any) -> None:
    from pointpeft.pretrain import RECIPE

    pretrain = commands.add_parser(
        "pretrain",
        help="Point-MAE masked-autoencoder pre-training (the released recipe) on synthetic shapes or a "
        "dataset folder; writes "
        "OUTPUT_DIR/pretrain.pth for model.pretrained",
    )
    flags: list[tuple[str, type, Any, str]] = [
        ("--epochs", int, RECIPE["epochs"], "epochs"),
        ("--batch-size", int, RECIPE["batch_size"], "clouds per step"),
        ("--lr", float, RECIPE["lr"], "peak learning rate"),
        ("--warmup-epochs", int, RECIPE["warmup_epochs"], "warm-up epochs"),
        ("--npoints", int, RECIPE["npoints"], "points per cloud"),
        ("--clouds", int, 1000, "synthetic clouds to pre-train on"),
        ("--classes", int, 14, "synthetic shape classes the clouds are drawn from (labels are not used)"),
        ("--trans-dim", int, 384, "token width"),
        ("--depth", int, 12, "encoder blocks"),
        ("--num-heads", int, 6, "encoder attention heads"),
        ("--num-group", int, 64, "patches per cloud"),
        ("--group-size", int, 32, "points per patch"),
        ("--decoder-num-heads", int, 6, "decoder attention heads"),
        ("--seed", int, 0, "seed of the data, weights, order and masks"),
    ]
    for flag, kind, default, text in flags:
        pretrain.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default})")
    pretrain.add_argument(
        "--data",
        choices=("synthetic", "scanobjectnn", "modelnet40"),
        default="synthetic",
        help="the clouds to pre-train on: SyntheticShapes (--clouds of them), or the training split of a "
        "ScanObjectNN or ModelNet40 folder (--data-root; labels are not used) (default: synthetic)",
    )
    pretrain.add_argument(
        "--data-root", default=None, help="the dataset folder, for scanobjectnn / modelnet40"
    )
    pretrain.add_argument(
        "--variant",
        default="OBJ_BG",
        help="ScanObjectNN variant: OBJ_BG, OBJ_ONLY or PB_T50_RS (default: OBJ_BG)",
    )
    pretrain.add_argument(
        "--synthetic-points",
        type=int,
        default=None,
        help="points per generated synthetic cloud, reduced to --npoints by FPS (default: --npoints)",
    )
    pretrain.add_argument("--device", default="cpu", help="where to train, e.g. cuda (default: cpu)")
    pretrain.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    pretrain.add_argument(
        "--output-dir", default="runs/pretrain", help="run folder; rerun to resume (default: runs/pretrain)"
    )


#: ``pointpeft pretrain --data synthetic`` draws its clouds from ``SyntheticShapes(seed=SYNTHETIC_SEED + --seed)``
SYNTHETIC_SEED = 2_000_003


def _pretrain_clouds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The dataset ``pointpeft pretrain`` reads: synthetic shapes, or a folder's training split."""
    if args.data == "synthetic":
        from pointpeft.data import SyntheticShapes

        if args.data_root is not None:
            parser.error("--data-root is for --data scanobjectnn or modelnet40, not synthetic")
        points = args.npoints if args.synthetic_points is None else args.synthetic_points
        if points < args.npoints:
            parser.error(f"--synthetic-points ({points}) must be >= --npoints ({args.npoints})")
        # seeds of their own: none of these clouds is one of pointpeft train's (seeds run.seed and
        # run.seed + 1,000,003)
        return SyntheticShapes(
            args.clouds, points, num_classes=args.classes, seed=SYNTHETIC_SEED + args.seed, cache=True
        )
    if args.data_root is None:
        parser.error(f"--data {args.data} needs --data-root, the dataset folder")
    if args.data == "scanobjectnn":
        from pointpeft.data import ScanObjectNN

        return ScanObjectNN(args.data_root, variant=args.variant, split="train", min_points=args.npoints)
    from pointpeft.data import ModelNet40

    return ModelNet40(args.data_root, split="train")


def _pretrain(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    from pointpeft.backbones import PointMAE
    from pointpeft.pretrain import pretrain

    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for name in ("clouds", "trans_dim", "depth", "num_heads", "num_group", "group_size", "seed"):
        if getattr(args, name) < (0 if name == "seed" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'seed' else 1}")
    torch.manual_seed(args.seed)
    backbone = PointMAE(
        trans_dim=args.trans_dim,
        depth=args.depth,
        num_heads=args.num_heads,
        num_group=args.num_group,
        group_size=args.group_size,
        encoder_dims=args.trans_dim,
        drop_path_rate=0.1,
    )
    result = pretrain(
        args.output_dir,
        backbone=backbone,
        dataset=_pretrain_clouds(parser, args),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=args.warmup_epochs,
        npoints=args.npoints,
        decoder_num_heads=args.decoder_num_heads,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 tells
    print(
        f"checkpoint: {result.checkpoint} (load it with model.pretrained={result.checkpoint}, model sizes "
        f"model.trans_dim={args.trans_dim} model.depth={args.depth} model.num_heads={args.num_heads} "
        f"model.encoder_dims={args.trans_dim})"
    )
    return 0


def _raised_by_pointpeft(error: BaseException) -> bool:
    """Whether ``error`` was raised by a ``raise`` statement in pointpeft's own code (a checked input),
    rather than by Python, torch or another library deep inside a call (a bug to show with its
    traceback)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    package = os.path.dirname(os.path.abspath(__file__))
    if not filename.startswith(package + os.sep):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    from pointpeft.demo import run_demo

    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    run_demo(epochs=args.epochs, seed=args.seed, output_dir=args.output_dir)
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "demo":
        return _demo(parser, args)
    if args.command == "pretrain":
        return _pretrain(parser, args)

    from pointpeft.train import config as train_config

    if args.command == "eval" and args.config is None:
        from pointpeft.train import adapter_run_config, evaluate_saved_adapter

        # No YAML: the backbone and data settings come from the adapter folder, then the overrides.
        config = adapter_run_config(args.adapter, args.overrides)
        accuracy, clouds = evaluate_saved_adapter(config, args.adapter)
        print(f"test accuracy {accuracy:.2f}% ({clouds} clouds, adapter {args.adapter})")
        return 0
    config = train_config.load_config(args.config, args.overrides)
    if args.command == "params":
        from pointpeft.train import build_model, num_classes_of, parameter_table

        print(parameter_table(build_model(config, num_classes_of(config))))
        return 0
    if args.command == "train":
        from pointpeft.train import train

        train(config)
        return 0
    if args.command == "fewshot":
        from pointpeft.train import run_fewshot
        from pointpeft.train.config import FEWSHOT_FOLDS, FEWSHOT_SHOTS, FEWSHOT_WAYS

        run_fewshot(
            config,
            ways=args.ways or FEWSHOT_WAYS,
            shots=args.shots or FEWSHOT_SHOTS,
            folds=args.folds or FEWSHOT_FOLDS,
        )
        return 0
    from pointpeft.train import evaluate_saved_adapter

    accuracy, clouds = evaluate_saved_adapter(config, args.adapter)
    print(f"test accuracy {accuracy:.2f}% ({clouds} clouds, adapter {args.adapter})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _run(parser, args)
    except tuple(USER_ERRORS) as error:
        if not _raised_by_pointpeft(error):
            raise
        code = next(c for kind, c in USER_ERRORS.items() if isinstance(error, kind))
        parser.exit(code, f"pointpeft {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
