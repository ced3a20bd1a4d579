"""`tgi-async`: one console script, one subcommand per process kind.

  tgi-async shard serve MODEL_ID --uds-path P   the bundled transformers shard (generate.v3 over gRPC)
  tgi-async router [flags]                       the router: TGI's HTTP API + our schedulers
  tgi-async launch --model-id M [flags]          shards + router, like text-generation-launcher
  tgi-async make-tiny-model DIR [--seed N]       the embedded default model
  tgi-async timeline TRACE_FILE -o OUT.html      a picture of a traced run

Each subcommand's module owns its flags (`add_parser`) and its entry point, imported only when chosen so
`tgi-async --help` stays fast and a shard never imports FastAPI.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import signal
import sys

from tgi_async.flags import add_version

# subcommand -> module with `add_parser(subparsers)`; the parser's `func` default runs it
SUBCOMMANDS = {
    "shard": "tgi_async.shard.cli",
    "router": "tgi_async.router.cli",
    "launch": "tgi_async.launcher.cli",
    "make-tiny-model": "tgi_async.tiny_model_cli",
    "timeline": "tgi_async.telemetry.timeline_cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgi-async", description=__doc__.split("\n")[0])
    add_version(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=f"see `tgi-async {name} --help`")
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not exc.name or not module_name.startswith(exc.name):
                raise
            continue  # subcommand not built yet in this checkout
        module.add_parser(subparsers)
    return parser


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` writes every thread's stack to stderr (the log) and the process goes on: how a stuck
    shard or router shows where it waits, with no py-spy at hand."""
    if hasattr(signal, "SIGUSR1") and sys.__stderr__ is not None:
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dump_stacks_on_sigusr1()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
