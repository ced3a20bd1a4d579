"""`tgi-async launch`: TGI's text-generation-launcher flags (same names, env vars, defaults) + ours.

Flags come from LaunchConfig's field metadata (config.py). A flag we do not know stops the launch with exit
code 2 before anything starts, as TGI's launcher does (a typo such as --prot must not serve on the default).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import fields
from typing import Any

from tgi_async.flags import add_version, describe, reject_unknown_flags
from tgi_async.launcher.config import LaunchConfig, LaunchError, env_name

logger = logging.getLogger("tgi_async.launcher")

_FALSEY = ("", "0", "false", "no", "off", "n", "f")


def _bool_value(text: str) -> bool:
    """A flag that takes true/false (clap's bool)."""
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"invalid value '{text}': expected true or false")
    return lowered == "true"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value '{text}': expected integers separated by commas"
        ) from None


_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": _bool_value, "ints": _int_list}


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    for spec in fields(LaunchConfig):
        meta = spec.metadata
        if not meta:
            continue
        names = [f"--{spec.name.replace('_', '-')}"] + ([meta["short"]] if meta["short"] else [])
        env = env_name(spec.name, meta)
        raw = os.environ.get(env) if env else None
        help_text = describe(meta["help"], env, spec.default if meta["kind"] != "append" else None)
        if meta["kind"] == "switch":
            default = raw is not None and raw.strip().lower() not in _FALSEY
            parser.add_argument(*names, action="store_true", default=default, help=help_text)
        elif meta["kind"] == "append":
            parser.add_argument(*names, action="append", default=None, metavar="VALUE", help=help_text)
        else:
            # NOTE: argparse converts a string default with `type`, so a bad env value fails like a bad flag.
            default = raw if raw is not None else spec.default
            kind = _TYPES[meta["kind"]]
            parser.add_argument(*names, type=kind, default=default, metavar=_metavar(meta), help=help_text)


def _metavar(meta: Any) -> str:
    return "{" + ",".join(meta["choices"]) + "}" if meta["choices"] else meta["kind"].upper()


def config_from_args(args: argparse.Namespace) -> LaunchConfig:
    """Namespace -> LaunchConfig, checking choices (env values bypass argparse's own check)."""
    values: dict[str, Any] = {}
    for spec in fields(LaunchConfig):
        if not spec.metadata:
            continue
        value = getattr(args, spec.name)
        meta = spec.metadata
        if meta["kind"] == "append":
            env = env_name(spec.name, meta)
            value = tuple(value) if value is not None else ((os.environ[env],) if env in os.environ else ())
        if meta["choices"] and value is not None and value not in meta["choices"]:
            source = env_name(spec.name, meta)
            raise LaunchError(
                f"invalid value '{value}' for --{spec.name.replace('_', '-')} (env {source}): "
                f"choose from {', '.join(meta['choices'])}"
            )
        values[spec.name] = value
    return LaunchConfig(**values)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="start shards and the router, like text-generation-launcher (same flags)",
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    add_launch_flags(parser)
    add_version(parser)
    parser.set_defaults(func=run)
    reject_unknown_flags(parser)


def _log_level(environ: dict[str, str]) -> str:
    """LOG_LEVEL as TGI's launcher reads it (a simple level; anything else means INFO)."""
    level = environ.get("LOG_LEVEL", "info").strip().lower()
    return {"trace": "DEBUG", "debug": "DEBUG", "warn": "WARNING", "error": "ERROR"}.get(level, "INFO")


def run(args: argparse.Namespace) -> int:
    from tgi_async.launcher.launch import launch
    from tgi_async.logs import setup_logging

    setup_logging(json_output=args.json_output, level=_log_level(dict(os.environ)), style="launcher")
    try:
        return launch(config_from_args(args))
    except LaunchError as exc:
        logger.error("%s", exc)
        return 1
