"""Child processes (shards, router) with readiness checks; used by the launcher, tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ChildProcess:
    """A started child: its argv, its Popen, and what it writes (a log file, so pipes never block it)."""

    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def tgi_async_command(*args: str) -> list[str]:
    """argv running a tgi-async subcommand with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "tgi_async.cli", *args]


def spawn(
    name: str, argv: Sequence[str], log_path: Path | None = None, env: dict[str, str] | None = None
) -> ChildProcess:
    full_env = {**os.environ, **(env or {})}
    log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - owned by the child
    popen = subprocess.Popen(
        list(argv), stdout=log or None, stderr=subprocess.STDOUT if log else None, env=full_env
    )
    if log is not None:
        log.close()
    return ChildProcess(name=name, argv=list(argv), popen=popen, log_path=log_path, env=env or {})


def wait_for_path(child: ChildProcess, path: str | Path, timeout: float = 120.0) -> None:
    """Wait until `path` exists (a shard's Unix socket), failing early with the child's log if it dies."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name}: {path} did not appear in {timeout}s:\n{child.log_tail()}")
        time.sleep(0.05)


def wait_for_http(child: ChildProcess, url: str, timeout: float = 120.0) -> None:
    """Wait until GET `url` answers 200 (the router's /health), failing early if the child dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name}: {url} not healthy in {timeout}s:\n{child.log_tail()}")
        time.sleep(0.1)
