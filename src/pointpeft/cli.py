"""The ``pointpeft`` command line: ``demo``, ``train``, ``eval``, ``params``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (see configs/); defaults otherwise")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. optim.epochs=10"
    )


def _build_parser() -> argparse.ArgumentParser:
    from pointpeft import __version__

    parser = argparse.ArgumentParser(
        prog="pointpeft", description="Parameter-efficient tuning (DAPT) of point-cloud transformers."
    )
    parser.add_argument("--version", action="version", version=f"pointpeft {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="train DAPT on synthetic shapes (about a minute on a CPU)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's 8)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, weights and order (default: 0)")
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--output-dir", default="runs/demo", help="where the adapter goes (default: runs/demo)")
    train = commands.add_parser("train", help="train DAPT as a config says (torchrun-ready)")
    _add_config_arguments(train)
    evaluate = commands.add_parser("eval", help="test accuracy of a saved adapter")
    evaluate.add_argument("--adapter", required=True, help="adapter folder (e.g. runs/NAME/best)")
    _add_config_arguments(evaluate)
    params = commands.add_parser("params", help="trainable-parameter table of a config, without training")
    _add_config_arguments(params)
    return parser


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import torch

    from pointpeft.demo import run_demo

    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    run_demo(epochs=args.epochs, seed=args.seed, output_dir=args.output_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        return _demo(parser, args)

    from pointpeft.train import config as train_config

    try:
        config = train_config.load_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError, TypeError) as error:
        parser.error(str(error))
    if args.command == "params":
        from pointpeft.train import build_model, num_classes_of, parameter_table

        print(parameter_table(build_model(config, num_classes_of(config))))
        return 0
    if args.command == "train":
        from pointpeft.train import train

        train(config)
        return 0
    # eval
    import torch

    from pointpeft.adapter_io import load_adapter
    from pointpeft.train import build_backbone, build_datasets, evaluate
    from pointpeft.train.loop import _device

    if config["run"]["threads"] is not None:
        torch.set_num_threads(config["run"]["threads"])
    _, test_set, _ = build_datasets(config)
    device = _device(config["run"]["device"])
    model = load_adapter(build_backbone(config), args.adapter).to(device)
    accuracy = evaluate(model, test_set, config, device, progress=config["run"]["progress"])
    print(f"test accuracy {accuracy:.2f}% ({len(test_set)} clouds, adapter {args.adapter})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
