"""Child processes (shards, router) with readiness checks; used by the launcher, tests and benchmarks."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
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
    recent: deque[str] | None = None  # last output lines, for children started by `spawn_streaming`
    reader: threading.Thread | None = None  # the thread reading its output (`spawn_streaming`)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self.recent is not None:
            return "\n".join(list(self.recent)[-lines:])
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


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGTERM when the process that started it dies, however it dies
    (SIGKILL included): the kernel's parent-death signal. None where there is none (not Linux)."""
    if _LIBC is None:
        return None
    prctl = _LIBC.prctl  # looked up before fork: the child only makes two system calls

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def tgi_async_command(*args: str) -> list[str]:
    """argv running a tgi-async subcommand with this interpreter (no need for the console script on PATH)."""
    return [sys.executable, "-m", "tgi_async.cli", *args]


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> ChildProcess:
    """Start a child writing to `log_path`; `cpus` pins it (and every thread it starts) to those CPUs."""
    full_env = {**os.environ, **(env or {})}
    log = open(log_path, "ab") if log_path is not None else None
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    popen = subprocess.Popen(
        list(argv),
        stdout=log or None,
        stderr=subprocess.STDOUT if log else None,
        env=full_env,
        preexec_fn=pin,  # only sched_setaffinity: no locks taken between fork and exec
    )
    if log is not None:
        log.close()
    return ChildProcess(name=name, argv=list(argv), popen=popen, log_path=log_path, env=env or {})


def spawn_streaming(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    on_line: Callable[[str, str], None],
    keep_lines: int = 200,
) -> ChildProcess:
    """Start a child with exactly `env`, in its own session, its output read line by line.

    Each stdout/stderr line goes to `on_line(name, line)` from a reader thread and is kept (the last
    `keep_lines`) for `log_tail`. NOTE: its own session keeps a terminal's Ctrl-C away from the child, so
    the parent decides the shutdown order (as TGI's launcher does with a process group); and the child gets
    SIGTERM when the parent dies (`die_with_parent`), so a killed launcher leaves no shard or router behind.
    """
    popen = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent(os.getpid()),
    )
    recent: deque[str] = deque(maxlen=keep_lines)
    child = ChildProcess(name=name, argv=list(argv), popen=popen, env=env, recent=recent)

    def pump() -> None:
        assert popen.stdout is not None
        for raw in iter(popen.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            recent.append(line)
            on_line(name, line)
        popen.stdout.close()

    child.reader = threading.Thread(target=pump, name=f"{name}-output", daemon=True)
    child.reader.start()
    return child


def stop_all(children: Sequence[ChildProcess], timeout: float) -> None:
    """SIGTERM every live child at once, wait up to `timeout` seconds in total, then SIGKILL the rest."""
    for child in children:
        if child.alive():
            child.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait()
    for child in children:
        if child.reader is not None:
            child.reader.join(timeout=1.0)


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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TMP_ROOT_ENV = "TGI_ASYNC_TMP_ROOT"


def short_tmp_dir(prefix: str = "tgia-") -> str:
    """A short directory for Unix sockets (their paths are limited to ~100 bytes): under /tmp, or under
    $TGI_ASYNC_TMP_ROOT when set (a test session sets it and removes it when it ends)."""
    import tempfile

    return tempfile.mkdtemp(prefix=prefix, dir=os.environ.get(TMP_ROOT_ENV) or "/tmp")


def start_bundled_shard(
    model_dir: str | Path, *extra: str, env: dict[str, str] | None = None, cpus: set[int] | None = None
) -> tuple[ChildProcess, str]:
    """Start `tgi-async shard serve` on a fresh socket; returns the process and its rank-0 socket path."""
    directory = short_tmp_dir()
    uds = os.path.join(directory, "shard")
    argv = tgi_async_command("shard", "serve", str(model_dir), "--uds-path", uds, *extra)
    child = spawn("shard", argv, log_path=Path(directory) / "shard.log", env=env, cpus=cpus)
    wait_for_path(child, f"{uds}-0")
    return child, f"{uds}-0"


def start_router(
    model_dir: str | Path,
    shard_socket: str,
    *args: str,
    cpus: set[int] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[ChildProcess, str]:
    """Start `tgi-async router` on a free port against a running shard; returns it and its base URL."""
    port = free_port()
    argv = tgi_async_command(
        "router",
        "--master-shard-uds-path",
        shard_socket,
        "--tokenizer-name",
        str(model_dir),
        "--hostname",
        "127.0.0.1",
        "--port",
        str(port),
        "--prometheus-port",
        str(free_port()),
        *args,
    )
    child = spawn("router", argv, log_path=Path(short_tmp_dir()) / "router.log", env=env, cpus=cpus)
    wait_for_http(child, f"http://127.0.0.1:{port}/health")
    return child, f"http://127.0.0.1:{port}"
