"""The generate.v3 stubs work under the main venv's protobuf/grpcio AND under TGI's image pins.

TGI v3.3.x's server pins protobuf==5.29.4 and grpcio==1.71.0 (server/requirements_cuda.txt); code of ours that
runs inside that image must import and talk gRPC there. A second venv with exactly those pins is created once
under .venv-oldpins (gitignored, reused while its pins match) and runs tests/proto_roundtrip.py: every message
built, serialized and parsed, and a real grpc.aio server + client over a Unix socket. The main venv runs the
same script, and both must encode every message to the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tgi_async.proto import pb

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "proto_roundtrip.py"
OLD_PINS = ("protobuf==5.29.4", "grpcio==1.71.0")
OLD_PINS_VENV = REPO / ".venv-oldpins"
_MARKER = ".tgi-async-pins"  # written last: its presence and content mean the venv is complete


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def ensure_old_pins_venv() -> tuple[Path, float]:
    """The old-pins venv's python and the seconds spent creating it (0 when reused)."""
    python = OLD_PINS_VENV / "bin" / "python"
    marker = OLD_PINS_VENV / _MARKER
    if marker.exists() and marker.read_text() == "\n".join(OLD_PINS) and python.exists():
        return python, 0.0
    started = time.monotonic()
    # NOTE: built beside the target and renamed into place, so a concurrent run never sees half a venv.
    staging = OLD_PINS_VENV.with_name(f"{OLD_PINS_VENV.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        made = _run([sys.executable, "-m", "venv", str(staging)], timeout=120)
        if made.returncode != 0:
            pytest.fail(f"python -m venv failed:\n{made.stderr[-2000:]}")
        pip = [str(staging / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        installed = _run([*pip, *OLD_PINS], timeout=300)
        if installed.returncode != 0:
            reason = f"pip could not install {' '.join(OLD_PINS)} (registry unreachable?)"
            pytest.skip(f"{reason}: {installed.stderr[-1500:]}")
        (staging / _MARKER).write_text("\n".join(OLD_PINS))
        shutil.rmtree(OLD_PINS_VENV, ignore_errors=True)
        try:
            os.rename(staging, OLD_PINS_VENV)
        except OSError:
            if not marker.exists():  # another run did not win the race either
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return python, time.monotonic() - started


def run_roundtrip(python: Path | str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONHOME", None)
    result = subprocess.run(
        [str(python), str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, f"{python} {SCRIPT.name} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def old_pins_report() -> dict:
    python, seconds = ensure_old_pins_venv()
    if seconds:
        print(f"\n.venv-oldpins created in {seconds:.1f}s")
    return run_roundtrip(python)


@pytest.fixture(scope="session")
def main_report() -> dict:
    return run_roundtrip(sys.executable)


ALL_RPCS = ["Info", "Health", "ServiceDiscovery", "Warmup", "Prefill", "Decode", "FilterBatch", "ClearCache"]


def test_old_pins_roundtrip(old_pins_report: dict) -> None:
    assert old_pins_report["protobuf"] == "5.29.4"
    assert old_pins_report["grpcio"] == "1.71.0"
    assert old_pins_report["torch_imported"] is False
    assert old_pins_report["rpcs"] == ALL_RPCS
    assert sorted(old_pins_report["messages"]) == sorted(pb.DESCRIPTOR.message_types_by_name)


def test_main_venv_roundtrip(main_report: dict) -> None:
    import google.protobuf
    import grpc

    assert main_report["protobuf"] == google.protobuf.__version__
    assert main_report["grpcio"] == grpc.__version__
    assert main_report["torch_imported"] is False
    assert main_report["rpcs"] == ALL_RPCS


def test_same_bytes_on_both_runtimes(old_pins_report: dict, main_report: dict) -> None:
    assert old_pins_report["messages"] == main_report["messages"]
