"""`tgi-async launch` owns its children and its port: they die with it however it dies, and a second launch
never disturbs a live one. Real processes: the stand-in TGI shard (tests/launcher_fakes.py) and, for the
port and readiness checks, the real bundled shard and router."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_fakes import alive, children_of, fake_tgi_env, free_port, launch_argv
from tgi_async.launcher.launch import router_ready
from tgi_async.launcher.processes import short_tmp_dir, tgi_async_command


@pytest.fixture
def fake_tgi(tmp_path: Path) -> dict[str, str]:
    return fake_tgi_env(tmp_path)


def _wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start_waiting_shards(env: dict[str, str]) -> tuple[subprocess.Popen, list[int]]:
    """A launch whose two stand-in shards never become ready; returns it and the shards' PIDs."""
    uds = os.path.join(short_tmp_dir(), "s")
    launcher = subprocess.Popen(
        launch_argv("--shard", "tgi", "--num-shard", "2", "--shard-uds-path", uds, "--port", str(free_port()),
                    "--prometheus-port", "0", "-g", "5"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    record = Path(env["FAKE_RECORD"])
    _wait_for(lambda: all((record / f"pid-{rank}").exists() for rank in (0, 1)), 60, "both shards")
    return launcher, [int((record / f"pid-{rank}").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_children_die_with_the_launcher(fake_tgi: dict[str, str], sig: signal.Signals) -> None:
    """A closed terminal (SIGHUP) stops the children in order; a SIGKILLed launcher, which can do nothing,
    still leaves no child: the kernel signals them (parent-death signal)."""
    launcher, shards = _start_waiting_shards(fake_tgi)
    assert all(alive(pid) for pid in shards)
    launcher.send_signal(sig)
    output, _ = launcher.communicate(timeout=30)
    _wait_for(lambda: not any(alive(pid) for pid in shards), 10, f"no shard left after {sig.name}")
    if sig == signal.SIGHUP:
        assert launcher.returncode == 0, output
        assert "fake shard 0 got TERM" in output and "fake shard 1 got TERM" in output


def test_typo_flag_exits_2_before_anything_starts(fake_tgi: dict[str, str]) -> None:
    result = subprocess.run(
        launch_argv("--shard", "tgi", "--prot", "3001"),
        env=fake_tgi, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unexpected argument '--prot' found" in result.stderr
    assert "a similar argument exists: '--port'" in result.stderr
    assert not (Path(fake_tgi["FAKE_RECORD"]) / "argv").exists()


@pytest.mark.parametrize(
    ("model_id", "env", "message"),
    [
        ("/no/such/model", {}, "--model-id /no/such/model: no such directory"),
        ("./missing-model", {}, "--model-id ./missing-model: no such directory"),
        ("not a repo!", {}, "neither a local directory nor a Hub model id"),
        ("org/model", {"HF_HUB_OFFLINE": "1"}, "not in the Hub cache, and HF_HUB_OFFLINE is set"),
        ("org/model", {"HF_ENDPOINT": "http://127.0.0.1:{closed}"}, "the Hub (http://127.0.0.1:"),
    ],
)
def test_a_model_that_cannot_be_found_fails_before_any_child(
    fake_tgi: dict[str, str], tmp_path: Path, model_id: str, env: dict[str, str], message: str
) -> None:
    closed = free_port()  # nothing listens there: "no Hub here"
    environ = {**fake_tgi, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0"}
    environ.update({k: v.format(closed=closed) for k, v in env.items()})
    started = time.monotonic()
    result = subprocess.run(
        launch_argv("--shard", "tgi", "--model-id", model_id, "--port", str(free_port())),
        env=environ, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], output
    assert "Traceback" not in output
    assert time.monotonic() - started < 20
    assert not (Path(fake_tgi["FAKE_RECORD"]) / "argv").exists()


def test_a_live_shard_socket_is_left_alone(fake_tgi: dict[str, str]) -> None:
    """Something answers on the socket path: the launch refuses, and the socket stays."""
    uds = os.path.join(short_tmp_dir(), "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(f"{uds}-0")
        live.listen()
        result = subprocess.run(
            launch_argv("--shard", "tgi", "--shard-uds-path", uds, "--port", str(free_port())),
            env=fake_tgi, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 1
        assert f"--shard-uds-path: {uds}-0 is in use by a running shard" in result.stdout + result.stderr
        assert os.path.exists(f"{uds}-0")
    assert not (Path(fake_tgi["FAKE_RECORD"]) / "argv").exists()


@pytest.fixture
def foreign_server() -> Iterator[str]:
    """An HTTP server that is not our router but answers /health with 200 and /info with another id."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"instance_id": "someone-else"}).encode() if self.path == "/info" else b""
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_readiness_is_our_router_not_whatever_answers(foreign_server: str) -> None:
    with urllib.request.urlopen(f"{foreign_server}/health", timeout=5) as response:
        assert response.status == 200
    assert not router_ready(foreign_server, "ours")
    assert router_ready(foreign_server, "someone-else")


@pytest.fixture
def first_launch(tiny_model_dir: Path) -> Iterator[tuple[subprocess.Popen, int, str]]:
    uds = os.path.join(short_tmp_dir(), "s")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "PORT", "HOSTNAME", "NUM_SHARD")}
    launcher = subprocess.Popen(
        launch_argv("--model-id", str(tiny_model_dir), "--shard", "bundled", "--hostname", "127.0.0.1",
                    "--port", str(port), "--prometheus-port", "0", "--shard-uds-path", uds, "-g", "10"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert launcher.stdout is not None
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if line.startswith("tgi-async ready: "):
            break
    else:
        pytest.fail("the first launch never got ready:\n" + "".join(lines[-40:]))
    threading.Thread(target=launcher.stdout.read, daemon=True).start()  # keep its pipe drained
    try:
        yield launcher, port, uds
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=30)


def test_second_launch_on_a_busy_port_fails_fast_and_the_first_keeps_serving(
    first_launch: tuple[subprocess.Popen, int, str], tiny_model_dir: Path
) -> None:
    launcher, port, uds = first_launch
    children = children_of(launcher.pid)
    assert len(children) == 2  # the shard and the router
    for other_uds in (uds, os.path.join(short_tmp_dir(), "s")):
        started = time.monotonic()
        second = subprocess.run(
            launch_argv("--model-id", str(tiny_model_dir), "--shard", "bundled", "--hostname", "127.0.0.1",
                        "--port", str(port), "--prometheus-port", "0", "--shard-uds-path", other_uds),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        output = (second.stdout + second.stderr).strip().splitlines()
        assert second.returncode == 1
        assert len(output) == 1 and f"--port {port}: address 127.0.0.1:{port} is already in use" in output[0]
        assert elapsed < 2.0 + 3.0  # NOTE: < 2 s on an idle machine; slack for a loaded shared one
        assert "tgi-async ready" not in output[0]
    assert os.path.exists(f"{uds}-0")  # the live shard's socket is still there
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        assert response.status == 200
    launcher.kill()  # SIGKILL: no clean-up from the launcher itself
    launcher.wait(timeout=30)
    _wait_for(lambda: not any(alive(pid) for pid in children), 30, "no router or shard left after SIGKILL")


@pytest.mark.parametrize("flag", ["--port", "--prometheus-port"])
def test_router_on_a_busy_port_says_so_in_one_line(flag: str) -> None:
    """Checked before it connects to any shard: one line, no traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = {"--port": str(free_port()), "--prometheus-port": str(free_port()), flag: str(taken)}
        argv = tgi_async_command("router", "--hostname", "127.0.0.1", "--master-shard-uds-path", "/none-0")
        argv += [arg for item in ports.items() for arg in item]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1
    assert len(lines) == 1 and f"{flag} {taken}: address 127.0.0.1:{taken} is already in use" in lines[0]
