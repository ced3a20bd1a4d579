"""Checks `tgi-async launch` makes before any child starts, each failing with one line that says what to do.

Ports and shard sockets: another instance must keep serving, so a port in use or a socket something answers
on stops this launch (a socket nothing answers on is stale and removed). The model: a local path must be a
directory; a Hub id must be valid, and readable from the cache or the Hub, so "no Hub here" is one line
instead of a shard retrying for a minute.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tgi_async.launcher.config import LaunchConfig, LaunchError
from tgi_async.launcher.sizing import ModelConfig, parse_model_config

logger = logging.getLogger("tgi_async.launcher")

_TRUE = ("1", "true", "yes", "on")


def check_port_free(hostname: str, port: int, flag: str) -> None:
    """Bind `hostname:port` as the router will (SO_REUSEADDR, like uvicorn); LaunchError if it is taken."""
    infos = socket.getaddrinfo(hostname or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LaunchError(
                    f"{flag} {port}: address {hostname}:{port} is already in use (another server?); "
                    f"stop it or choose another {flag}"
                ) from None
            raise LaunchError(f"{flag} {port}: cannot bind {hostname}:{port}: {exc.strerror}") from None


def clear_shard_socket(path: str) -> None:
    """Remove a stale socket at `path`; LaunchError if a live shard answers on it."""
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # nothing listens: a stale socket, which would look ready
            return
    raise LaunchError(
        f"--shard-uds-path: {path} is in use by a running shard (another launch?); "
        "stop it or choose another --shard-uds-path"
    )


def check_free(config: LaunchConfig, sockets: tuple[str, ...]) -> None:
    check_port_free(config.hostname, config.port, "--port")
    if config.prometheus_port and config.prometheus_port != config.port:
        check_port_free(config.hostname, config.prometheus_port, "--prometheus-port")
    for path in sockets:
        clear_shard_socket(path)


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or model_id in (".", "..")


def locate_model(model_id: str, revision: str | None, environ: dict[str, str]) -> ModelConfig | None:
    """The model's config.json (None when unreadable but the model may still load); LaunchError when the
    model cannot be found at all: a missing local directory, an invalid id, or a Hub id neither cached nor
    reachable."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return _parse(local / "config.json")
    if local.exists() or _looks_like_path(model_id):
        raise LaunchError(f"--model-id {model_id}: no such directory")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise LaunchError(
            f"--model-id {model_id}: neither a local directory nor a Hub model id (namespace/name)"
        ) from None
    cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return _parse(Path(cached))
    if environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise LaunchError(
            f"--model-id {model_id}: not a local directory and not in the Hub cache, "
            "and HF_HUB_OFFLINE is set"
        )
    return _fetch_config(model_id, revision, environ)


def _parse(path: Path) -> ModelConfig | None:
    try:
        return parse_model_config(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        logger.info("Could not read the model's config.json: %s", exc)
        return None


def _fetch_config(model_id: str, revision: str | None, environ: dict[str, str]) -> ModelConfig | None:
    """One plain request for config.json (TGI's launcher makes one; huggingface_hub would retry for ~20 s)."""
    endpoint = environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/{model_id}/resolve/{revision or 'main'}/config.json")
    token = environ.get("HF_TOKEN") or environ.get("HF_API_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return parse_model_config(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise LaunchError(f"--model-id {model_id}: not found on the Hub ({endpoint})") from None
        logger.info("Could not read the model's config.json: HTTP %d from %s", exc.code, endpoint)
        return None  # gated or private: the shard, with its token, has the last word
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LaunchError(
            f"--model-id {model_id}: not a local directory and not in the Hub cache, and the Hub "
            f"({endpoint}) is unreachable: {reason}"
        ) from None
    except (ValueError, TypeError, AttributeError) as exc:
        logger.info("Could not read the model's config.json: %s", exc)
        return None
