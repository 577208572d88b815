"""The ``pointpeft`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    from pointpeft import __version__

    parser = argparse.ArgumentParser(
        prog="pointpeft", description="Parameter-efficient tuning (DAPT) of point-cloud transformers."
    )
    parser.add_argument("--version", action="version", version=f"pointpeft {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="train DAPT on synthetic shapes (under a minute on a CPU)")
    demo.add_argument("--steps", type=int, default=250, help="optimisation steps (default: 250)")
    demo.add_argument("--batch-size", type=int, default=16, help="clouds per step (default: 16)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, weights and order (default: 0)")
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        import torch

        from pointpeft.demo import run_demo

        if args.threads is not None:
            if args.threads < 1:
                parser.error(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        try:
            run_demo(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
        except ValueError as error:
            parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
