"""`kill -USR1` on a tgi-async process writes every thread's stack to its stderr, `kill -USR2` every task of
its event loop; the process goes on."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, signal, threading, time
from tgi_async.cli import dump_stacks_on_sigusr1
dump_stacks_on_sigusr1()
threading.Thread(target=time.sleep, args=(5,), name="sleeper", daemon=True).start()
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.1)
print("still running")
"""


def test_sigusr1_dumps_every_threads_stack_and_the_process_goes_on() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"
    assert "Current thread" in done.stderr
    assert "Thread 0x" in done.stderr  # the other thread's stack too


TASKS_SCRIPT = """
import asyncio, os, signal
from tgi_async import event_loop

async def waits_forever():
    await asyncio.Event().wait()

async def main():
    waiters = [asyncio.ensure_future(waits_forever()) for _ in range(3)]
    await asyncio.sleep(0)
    os.kill(os.getpid(), signal.SIGUSR2)
    await asyncio.sleep(0.1)
    for waiter in waiters:
        waiter.cancel()
    print("still running")

event_loop.run(main())
"""


def test_sigusr2_dumps_every_task_of_the_event_loop_and_the_process_goes_on() -> None:
    done = subprocess.run([sys.executable, "-c", TASKS_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"
    assert "4 asyncio tasks, 2 distinct" in done.stderr  # main and three waiters alike
    assert "3 tasks (" in done.stderr
    assert done.stderr.count("in waits_forever") == 1  # where they await, once for the three
