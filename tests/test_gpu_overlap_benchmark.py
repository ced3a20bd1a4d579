"""benchmarks/gpu_overlap.py keeps working between GPU sessions: its GPU-active arithmetic on a known trace,
its stack sampler on a known busy thread, and its smoke and measurement on the CPU (the same code a GPU runs,
with a small random model)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.gpu_overlap import StackSampler, active_fraction

ROOT = Path(__file__).resolve().parents[1]


def kernel(ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "ts": ts, "dur": dur, "name": "k"}


def test_active_fraction_is_the_union_of_gpu_activity_over_the_trimmed_window() -> None:
    events = [
        kernel(0, 10),
        kernel(5, 10),  # overlaps the first: counted once
        kernel(30, 10, "gpu_memcpy"),
        kernel(60, 40),
        {"ph": "X", "cat": "cuda_runtime", "ts": 0, "dur": 100, "name": "cudaLaunchKernel"},  # host side
    ]
    fraction, busy_ms = active_fraction({"traceEvents": events}, trim=0.0)
    assert fraction == pytest.approx((15 + 10 + 40) / 100)
    assert busy_ms == pytest.approx(65 / 1e3)
    trimmed, _ = active_fraction({"traceEvents": events}, trim=0.1)  # window [10, 90]: 5 + 10 + 30 busy
    assert trimmed == pytest.approx(45 / 80)


def test_stack_sampler_finds_where_a_thread_spends_its_time() -> None:
    stop = threading.Event()

    def spin_here() -> None:
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin_here, name="spinner")
    worker.start()
    try:
        with StackSampler(interval=0.001) as sampler:
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join()
    spinner = {stack: count for (thread, stack), count in sampler.counts.items() if thread == "spinner"}
    assert spinner and all("spin_here" in stack for stack in spinner)


def run_benchmark(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_overlap", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_smoke_and_measure_run_on_the_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    smoke = run_benchmark("smoke", str(tiny_model_dir), "--device", "cpu")
    assert "SMOKE PASS" in smoke
    assert "all requests (seeded too): 40/40" in smoke
    common = ["--shape", "small", "--device", "cpu", "--dtype", "float32", "--batch-sizes", "4"]
    measure = run_benchmark("measure", *common, "--new-tokens", "8", "--rounds", "1", "--out", str(tmp_path))
    assert "| 4 | on |" in measure and "| 4 | off |" in measure
    assert (tmp_path / "results.json").exists()
    where = run_benchmark("where", *common, "--new-tokens", "8")
    assert "thread shard-compute_0" in where
