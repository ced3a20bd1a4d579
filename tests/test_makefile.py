"""The Makefile on a fresh machine: the CPU build of torch where there is no CUDA GPU, a local wheel before
any index; `make clean` removes every venv; a test session's socket folders live under one removable root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tgi_async.launcher.processes import TMP_ROOT_ENV, short_tmp_dir

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_dry_run(tmp_path: Path, target: str, nvidia_smi_exit: int) -> list[str]:
    """`make -n -B target` with a stand-in nvidia-smi that exits `nvidia_smi_exit` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho 'GPU 0: stand-in'\nexit {nvidia_smi_exit}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for name in ("TORCH_SPEC", "TORCH_INDEX_URL", "TORCH_CPU_INDEX_URL", "TORCH_VERSION"):
        env.pop(name, None)
    done = subprocess.run(
        ["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line for line in done.stdout.splitlines() if "torch==" in line or line.startswith("rm ")]


def test_without_cuda_torch_is_the_cpu_build_local_wheel_first(tmp_path: Path) -> None:
    lines = make_dry_run(tmp_path, "install", nvidia_smi_exit=9)
    assert '--no-index --no-deps "torch==2.13.0+cpu"' in lines[0]  # a local wheel, no network
    assert '--extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"' in lines[1]
    assert all("+cpu" in line for line in lines)


def test_with_cuda_torch_is_pypis_build(tmp_path: Path) -> None:
    lines = make_dry_run(tmp_path, "install", nvidia_smi_exit=0)
    assert lines and all('torch==2.13.0"' in line and "+cpu" not in line for line in lines)
    assert not any("download.pytorch.org" in line for line in lines)


def test_clean_removes_every_venv(tmp_path: Path) -> None:
    (clean,) = make_dry_run(tmp_path, "clean", nvidia_smi_exit=9)
    assert ".venv-*" in clean.split()


def test_socket_folders_live_under_the_session_root(session_tmp_root: str) -> None:
    assert os.environ[TMP_ROOT_ENV] == session_tmp_root
    assert Path(short_tmp_dir()).parent == Path(session_tmp_root)
