"""`tgi-async launch` as a real process: supervision, signals, TGI's shard contract, and the bundled stack.

A stand-in for TGI's `text-generation-server` (a shell script, via TGI_SHARD_BIN) records what the launcher
gives it, so the TGI-shard path runs without TGI; the last test runs the real bundled shard and router.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_fakes import fake_tgi_env, free_port, launch_argv
from tgi_async.launcher.processes import short_tmp_dir


@pytest.fixture
def fake_tgi(tmp_path: Path) -> dict[str, str]:
    return fake_tgi_env(tmp_path)


def test_shard_exit_stops_the_launch(fake_tgi: dict[str, str]) -> None:
    uds = os.path.join(short_tmp_dir(), "s")
    env = {**fake_tgi, "FAKE_FAIL": "1", "LOG_LEVEL": "debug"}
    result = subprocess.run(
        launch_argv("--shard", "tgi", "--shard-uds-path", uds, "--port", str(free_port())),
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "shard-0 exited with code 3" in output
    assert "fake shard boom" in output  # its last lines come with the error
    assert "weights ready" in output  # TGI's JSON log lines are re-logged as text
    record = Path(env["FAKE_RECORD"])
    download, serve = (record / "argv").read_text().splitlines()
    assert download.startswith(f"download-weights {env['MODEL_ID']} --extension .safetensors")
    assert serve.startswith(f"serve {env['MODEL_ID']} --uds-path {uds} --logger-level DEBUG --json-output")
    lines = (record / "env-0").read_text().splitlines()
    shard_env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert (shard_env["RANK"], shard_env["WORLD_SIZE"], shard_env["MASTER_PORT"]) == ("0", "1", "29500")
    # no head_dim in config.json and no GPU: TGI's fallback
    assert (shard_env["ATTENTION"], shard_env["PREFIX_CACHING"]) == ("paged", "0")
    assert "LOG_LEVEL" not in shard_env


def test_signal_stops_waiting_shards(fake_tgi: dict[str, str]) -> None:
    """The shards never become ready; SIGTERM to the launcher stops both of them and exits 0."""
    uds = os.path.join(short_tmp_dir(), "s")
    launcher = subprocess.Popen(
        launch_argv("--shard", "tgi", "--num-shard", "2", "--shard-uds-path", uds, "-g", "5"),
        env=fake_tgi, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    record = Path(fake_tgi["FAKE_RECORD"])
    deadline = time.monotonic() + 30
    while not all((record / f"pid-{rank}").exists() for rank in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int((record / f"pid-{rank}").read_text()) for rank in (0, 1)]
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=30)
    assert launcher.returncode == 0, output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "fake shard 0 got TERM" in output and "fake shard 1 got TERM" in output
    assert [line.split()[0] for line in (record / "argv").read_text().splitlines()] == [
        "download-weights", "serve", "serve",
    ]  # fmt: skip


def test_bad_flags_exit_before_starting_anything(fake_tgi: dict[str, str]) -> None:
    result = subprocess.run(
        launch_argv("--max-input-tokens", "10", "--max-total-tokens", "5"),
        env=fake_tgi, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "`max_input_tokens`(10) must be < `max_total_tokens`(5)" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (Path(fake_tgi["FAKE_RECORD"]) / "argv").exists()


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture
def bundled_stack(tiny_model_dir: Path) -> Iterator[tuple[subprocess.Popen, str, str]]:
    if not _importable("tgi_async.router.cli"):
        pytest.skip("tgi_async.router.cli is not importable yet: the launch needs the router")
    if not _importable("tgi_async.shard.cli"):
        pytest.skip("tgi_async.shard.cli is not importable yet: the launch needs the bundled shard")
    uds = os.path.join(short_tmp_dir(), "s")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "PORT", "HOSTNAME", "NUM_SHARD")}
    launcher = subprocess.Popen(
        launch_argv("--model-id", str(tiny_model_dir), "--shard", "bundled", "--hostname", "127.0.0.1",
                    "--port", str(port), "--shard-uds-path", uds, "--scheduler", "sync", "-g", "10"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield launcher, f"http://127.0.0.1:{port}", uds
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate(timeout=30)


def test_bundled_shard_and_router(bundled_stack: tuple[subprocess.Popen, str, str]) -> None:
    launcher, url, uds = bundled_stack
    assert launcher.stdout is not None
    lines = []
    for ready in launcher.stdout:  # its logs, then the readiness line (or the launcher's exit)
        lines.append(ready)
        if ready.startswith("tgi-async ready"):
            break
    assert ready.startswith(f"tgi-async ready: {url} (model "), "".join(lines[-30:])
    assert ready.rstrip().endswith("scheduler sync, shard bundled)")
    assert os.path.exists(f"{uds}-0")
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert response.status == 200
    launcher.send_signal(signal.SIGINT)
    output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, output[-3000:]
    assert not os.path.exists(f"{uds}-0")  # the shard stopped and removed its socket
