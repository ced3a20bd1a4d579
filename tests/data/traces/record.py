"""Record tests/data/traces/async_6_requests.jsonl: 6 concurrent /generate on the tiny model (async scheduler,
batches of 4), router and bundled shard exporting to one --otlp-file.

Run from the repository root: `PYTHONPATH=. python tests/data/traces/record.py OUT.jsonl`.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import sys
import time
from pathlib import Path

import httpx

from tests.paths import CACHE_DIR
from tests.telemetry.conftest import start_traced_stack, stop_stack
from tests.telemetry.otlp_receiver import OtlpReceiver
from tgi_async.tiny_model import cached_tiny_model


def main(out: Path) -> None:
    receiver = OtlpReceiver().start()
    stack = start_traced_stack(
        cached_tiny_model(CACHE_DIR), receiver, "--scheduler", "async", "--max-batch-size", "4"
    )

    def generate(i: int) -> int:
        body = {"inputs": "hello " * (4 + 3 * i), "parameters": {"max_new_tokens": 6 + 5 * i}}
        return httpx.post(stack.url + "/generate", json=body, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        print(list(pool.map(generate, range(6))))
    time.sleep(0.5)
    stop_stack(stack)
    receiver.stop()
    shutil.copy(stack.trace_file, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
