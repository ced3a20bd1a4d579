"""What the `launch` and `router` command lines share with TGI's (clap): help lines that name the env var and
the default, --version, and unknown flags refused with exit code 2, naming the flag and a close match."""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from tgi_async import version


def describe(text: str, env: str | None, default: Any) -> str:
    """`text [env: NAME=] [default: VALUE]`, clap's way; no default shown for None/False/empty."""
    line = text
    if env:
        line += f" [env: {env}=]"
    if default not in (None, False, (), []):
        line += f" [default: {default}]"
    return line.replace("%", "%%")  # argparse %-formats help texts


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-V", "--version", action="version", version=f"tgi-async {version()}")


def unknown_flag_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """clap's "unexpected argument" error, with a similar flag when there is one."""
    unexpected = next((arg for arg in extras if arg.startswith("-")), extras[0]).split("=", 1)[0]
    known = [name for action in parser._actions for name in action.option_strings if name.startswith("--")]
    close = difflib.get_close_matches(unexpected, known, n=1, cutoff=0.75)
    tip = f"\n\n  tip: a similar argument exists: '{close[0]}'" if close else ""
    return (
        f"error: unexpected argument '{unexpected}' found{tip}\n\n"
        f"Usage: {parser.prog} [OPTIONS]\n\nFor more information, try '--help'.\n"
    )


def reject_unknown_flags(parser: argparse.ArgumentParser) -> None:
    """Make this (sub)parser exit 2 on a flag it does not know, like TGI's launcher and router: a typo such as
    --prot must not serve on the default port."""
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        # NOTE: long flags are checked first: argparse would take the typo's value for a subcommand
        for arg in args or ():
            if arg == "--":
                break
            if arg.startswith("--") and arg.split("=", 1)[0] not in parser._option_string_actions:
                parser.exit(2, unknown_flag_message(parser, [arg]))
        parsed, extras = parse_known(args, namespace)
        if extras:
            parser.exit(2, unknown_flag_message(parser, extras))
        return parsed, extras

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
