"""`tgi-async launch` at run time: probe the machine, start the shards, then the router, then supervise.

The order and the rules are TGI's launcher's: downloads (TGI's shard only), every shard until its socket
`PATH-{rank}` exists, then the router until /health answers; SIGINT/SIGTERM stop the router, then the shards
(SIGKILL after --graceful-termination-timeout, or at once on a second signal); if any child exits, everything
stops and the launch exits 1 naming the child, with its last output lines.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from importlib import metadata

from tgi_async.launcher.config import LaunchConfig, LaunchError, redacted, validate
from tgi_async.launcher.plan import Command, Facts, LaunchPlan, plan
from tgi_async.launcher.preflight import check_free, check_port_free, locate_model
from tgi_async.launcher.processes import ChildProcess, spawn_streaming, stop_all
from tgi_async.launcher.sizing import GpuInfo

logger = logging.getLogger("tgi_async.launcher")

_LOGURU_LEVELS = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "SUCCESS": 20,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
}


class ChildExited(LaunchError):
    def __init__(self, child: ChildProcess) -> None:
        if child.reader is not None:
            child.reader.join(timeout=2.0)  # its last lines are still in the pipe
        tail = child.log_tail(20)
        super().__init__(
            f"{child.name} exited with code {child.popen.returncode}"
            + (f"; its last output lines:\n{tail}" if tail else " (no output)")
        )


def probe_gpus() -> tuple[GpuInfo | None, int | None]:
    """The first GPU and the GPU count, from nvidia-smi; (None, None) without it."""
    if shutil.which("nvidia-smi") is None:
        return None, None
    query = ["nvidia-smi", "--query-gpu=gpu_name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    rows = [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]
    if not rows or len(rows[0]) < 3:
        return None, None
    name, memory, capability = rows[0][:3]
    major, _, minor = capability.partition(".")
    return GpuInfo(
        name=name,
        memory_mib=int(memory) if memory.isdigit() else None,
        compute_capability=(int(major), int(minor or 0)) if major.isdigit() else None,
    ), len(rows)


def find_tgi_shard(environ: dict[str, str]) -> tuple[tuple[str, ...] | None, str]:
    """The command running TGI's text-generation-server, and how it was found."""
    binary = environ.get("TGI_SHARD_BIN")
    if binary:
        path = shutil.which(binary)
        if path is None:
            raise LaunchError(f"TGI_SHARD_BIN={binary} is not an executable")
        return (path,), f"TGI_SHARD_BIN={binary}"
    if importlib.util.find_spec("text_generation_server") is not None:
        path = shutil.which("text-generation-server")
        command = (path,) if path else (sys.executable, "-m", "text_generation_server.cli")
        return command, "text_generation_server is importable"
    return None, "text_generation_server is not importable and TGI_SHARD_BIN is not set"


def log_runtime_env(environ: dict[str, str]) -> None:
    """--env: what this launch runs on."""
    versions = {}
    for package in ("tgi-async", "torch", "transformers", "grpcio", "protobuf", "text-generation-server"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    logger.info("Runtime environment: python %s on %s", platform.python_version(), platform.platform())
    logger.info("Packages: %s", ", ".join(f"{k} {v}" for k, v in versions.items()))
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
        logger.info("GPUs:\n%s", smi.stdout.strip())
    cuda = environ.get("CUDA_VISIBLE_DEVICES")
    logger.info("CUDA_VISIBLE_DEVICES=%s", cuda if cuda is not None else "(unset)")


def _get(url: str) -> bytes | None:
    """GET `url` (never through an HTTP proxy); the body on 200, else None."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def router_ready(base_url: str, instance_id: str) -> bool:
    """Our router is healthy: /health answers 200 and /info carries our instance id (another server that
    answers the same port is not ours)."""
    if _get(f"{base_url}/health") is None:
        return False
    info = _get(f"{base_url}/info")
    try:
        return info is not None and json.loads(info).get("instance_id") == instance_id
    except (ValueError, AttributeError):
        return False


def write_stdout(text: str) -> None:
    """One line to stdout; a closed terminal (EIO, EPIPE) must not stop the launcher or a reader thread."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def connect_host(hostname: str) -> str:
    """Where to reach a server bound to `hostname` from this machine, bracketed for URLs when IPv6."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(hostname, hostname)
    return f"[{host}]" if ":" in host else host


def url_host(hostname: str) -> str:
    return f"[{hostname}]" if ":" in hostname else hostname


class Launcher:
    """Runs a LaunchPlan: owns the children and the stop signal."""

    def __init__(self, config: LaunchConfig, launch_plan: LaunchPlan) -> None:
        self.config = config
        self.plan = launch_plan
        self.children: list[ChildProcess] = []
        self.stop = threading.Event()
        self.signals = 0
        self._output_lock = threading.Lock()
        self.instance_id = uuid.uuid4().hex  # the router shows it in /info: readiness is checked against it

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1
        self.stop.set()
        if self.signals > 1:
            for child in self.children:
                if child.alive():
                    child.popen.kill()

    def on_line(self, name: str, line: str) -> None:
        """A child's output line: shard JSON logs (loguru's shape) are logged again, the rest copied."""
        if line.startswith("{") and name != "router":
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                record = json.loads(line)
                level = _LOGURU_LEVELS.get(record["record"]["level"]["name"], logging.INFO)
                logger.log(level, record["text"].rstrip())
                return
        with self._output_lock:
            write_stdout(line)

    def start(self, command: Command) -> ChildProcess:
        logger.info("Starting %s", command.name)
        logger.debug("%s argv: %s", command.name, " ".join(command.argv))
        env = {**command.env, "TGI_ASYNC_INSTANCE_ID": self.instance_id} if command.name == "router" else None
        try:
            child = spawn_streaming(command.name, command.argv, env or command.env, self.on_line)
        except OSError as exc:
            raise LaunchError(f"cannot start {command.name} ({command.argv[0]}): {exc}") from None
        self.children.append(child)
        return child

    def wait_until(self, ready: Callable[[], bool], watched: list[ChildProcess], waiting_for: str) -> bool:
        """Poll until `ready()`; False if stopped first; raises ChildExited if a watched child exits."""
        started = last_note = time.monotonic()
        while not self.stop.is_set():
            self.check_alive(watched)
            if ready():
                logger.info("%s ready in %.1fs", waiting_for, time.monotonic() - started)
                return True
            if time.monotonic() - last_note > 10:
                logger.info("Waiting for %s to be ready...", waiting_for)
                last_note = time.monotonic()
            self.stop.wait(0.1)
        return False

    def supervise(self, watched: list[ChildProcess]) -> None:
        """Until a signal; raises ChildExited when a child exits."""
        while not self.stop.wait(0.1):
            self.check_alive(watched)

    @staticmethod
    def check_alive(watched: list[ChildProcess]) -> None:
        for child in watched:
            if not child.alive():
                raise ChildExited(child)

    def run(self) -> int:
        # NOTE: SIGHUP too (a closed terminal), as TGI's launcher does; the children die with the launcher
        # anyway (processes.py), but a signal handled here stops them in order.
        stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self.on_signal) for sig in stopping}
        try:
            return self._run()
        except ChildExited as exc:
            logger.error("%s", exc)
            return 1
        finally:
            router = [c for c in self.children if c.name == "router"]
            others = [c for c in self.children if c.name != "router"]
            timeout = 0.0 if self.signals > 1 else float(self.config.graceful_termination_timeout)
            if any(c.alive() for c in self.children):
                logger.info("Shutting down")
            stop_all(router, timeout)
            stop_all(others, timeout)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        for command in self.plan.downloads:
            child = self.start(command)
            while child.alive() and not self.stop.is_set():
                self.stop.wait(0.1)
            if self.stop.is_set():
                return 0
            if child.popen.returncode != 0:
                raise ChildExited(child)
        shards = [self.start(command) for command in self.plan.shards]
        sockets_exist = lambda: all(os.path.exists(p) for p in self.plan.sockets)  # noqa: E731
        if not self.wait_until(sockets_exist, shards, f"{len(shards)} shard(s)"):
            return 0
        router = self.start(self.plan.router)
        base_url = f"http://{connect_host(self.config.hostname)}:{self.config.port}"
        if not self.wait_until(lambda: router_ready(base_url, self.instance_id), [*shards, router], "router"):
            return 0
        write_stdout(
            f"tgi-async ready: http://{url_host(self.config.hostname)}:{self.config.port} "
            f"(model {self.config.model_id}, scheduler {self.config.scheduler}, "
            f"shard {self.plan.resolved.shard_kind})"
        )
        self.supervise([*shards, router])
        return 0


def probe_facts(config: LaunchConfig) -> tuple[Facts, str]:
    """Facts for plan(), and a sentence saying how the shard kind was chosen."""
    environ = dict(os.environ)
    tgi_shard, how = (None, "--shard bundled") if config.shard == "bundled" else find_tgi_shard(environ)
    model = locate_model(config.model_id, config.revision, environ)
    gpu, gpu_count = probe_gpus()
    facts = Facts(
        environ=environ,
        model=model,
        gpu=gpu,
        gpu_count=gpu_count,
        tgi_shard=tgi_shard,
    )
    return facts, how


def launch(config: LaunchConfig) -> int:
    """Run `tgi-async launch` until a signal (0) or a child's exit (1); raises LaunchError on bad flags."""
    if config.env:
        log_runtime_env(dict(os.environ))
    validate(config)  # before probing: reading a Hub config can take seconds
    check_port_free(config.hostname, config.port, "--port")  # first: a second launch fails at once, in a line
    logger.info("Args %s", redacted(config))
    facts, how = probe_facts(config)
    launch_plan = plan(config, facts)
    check_free(config, launch_plan.sockets)
    resolved = launch_plan.resolved
    shard_command = " ".join(launch_plan.shards[0].argv[:3]) if launch_plan.shards else ""
    logger.info("Using shard %s (%s): %s", resolved.shard_kind, how, shard_command)
    logger.info("Using attention %s - Prefix caching %s", resolved.attention, resolved.prefix_caching)
    if resolved.num_shard > 1:
        logger.info("Sharding model on %d processes", resolved.num_shard)
    if config.max_batch_prefill_tokens is None:
        logger.info("Default `max_batch_prefill_tokens` to %d", resolved.max_batch_prefill_tokens)
    if config.trust_remote_code:
        logger.warning(
            "`trust_remote_code` is set. Trusting that model `%s` do not contain malicious code.",
            config.model_id,
        )
    for note in launch_plan.notes:
        logger.info("%s", note)
    return Launcher(config, launch_plan).run()
