"""The ``fashiondvc`` command: demo, paper table, search."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fashiondvc.errors import FashionError, run_main


def _demo(args: argparse.Namespace) -> None:
    from fashiondvc.demo import run_demo

    run_demo(photos=args.photos, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashiondvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the pipeline offline on a generated sample")
    demo.add_argument("--photos", type=int, default=120, help="generated photos (default 120)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    def call() -> None:
        if getattr(args, "photos", 1) < 4:
            raise FashionError("--photos: need at least 4")
        args.handler(args)

    run_main(call)


if __name__ == "__main__":
    main()
