"""CallOrder on its own: a number that never runs (lost, cancelled, timed out) never holds later calls back
more than once, on every Python the project supports (3.10's asyncio.TimeoutError is not the builtin one)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tgi_async.shard.call_order import CallOrder

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = textwrap.dedent(
    """
    import asyncio, time
    from tgi_async.shard.call_order import CallOrder

    async def main():
        order = CallOrder(timeout=0.05)
        await order.turn(("a", 0))
        # 1 is lost: 2 waits once, then runs; 3 and 4 then run at once
        started = time.perf_counter()
        await order.turn(("a", 2))
        first = time.perf_counter() - started
        started = time.perf_counter()
        await order.turn(("a", 3))
        await order.turn(("a", 4))
        later = time.perf_counter() - started
        print(f"{first:.3f} {later:.3f}")

    asyncio.run(main())
    """
)


def python_3_10() -> str | None:
    """A working Python 3.10 (PATH, or pyenv's versions whose shim needs a selection), if any."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        shutil.which("python3.10"),
        *map(str, sorted(pyenv_root.glob("versions/3.10*/bin/python3.10"))),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


@pytest.mark.parametrize("python", ["3.10", "this interpreter"])
def test_a_lost_number_delays_one_call_once(python: str) -> None:
    binary = python_3_10() if python == "3.10" else sys.executable
    if binary is None:
        pytest.skip("no Python 3.10 here")
    out = subprocess.run(
        [binary, "-c", SCENARIO], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    first, later = map(float, out.stdout.split())
    assert 0.04 <= first < 1.0
    assert later < 0.04


async def test_a_call_cancelled_while_waiting_gives_up_its_number() -> None:
    order = CallOrder(timeout=5.0)
    one = asyncio.ensure_future(order.turn(("b", 1)))
    two = asyncio.ensure_future(order.turn(("b", 2)))
    await asyncio.sleep(0.01)
    assert not one.done() and not two.done()  # both wait for 0
    one.cancel()  # 1's RPC is cancelled (client deadline) while it waits
    await asyncio.sleep(0.01)
    assert not two.done()  # 0 has still not run: 2 keeps waiting
    await order.turn(("b", 0))
    await asyncio.wait_for(two, 0.5)  # not the 5 s timeout: 1 will never come
    await asyncio.wait_for(order.turn(("b", 3)), 0.5)
