"""`tgi-async make-tiny-model DIR [--seed N]`."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny-model", help="write the tiny random-weight Llama used by tests and `make run`"
    )
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tgi_async.tiny_model import make_tiny_model

    print(make_tiny_model(args.directory, seed=args.seed))
    return 0
