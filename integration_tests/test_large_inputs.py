"""1 MB requests beside running streams, on the launched stack: the streams keep going, the answers are TGI's.

Before tokenization left the event loop, one 1 MB /tokenize stopped every stream for ~4 s (16 s on a busy
2-core machine). The bound here is generous (1 s): the test is about the stall, not about timing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration_tests.conftest import OWN_EVENT_LOOP, launch
from tgi_async.launcher.processes import ChildProcess

pytestmark = OWN_EVENT_LOOP

MAX_GAP_S = 1.0
SIZE = 1_000_000
TEXT = ("The quick brown fox jumps over the lazy dog. " * (SIZE // 45 + 1))[:SIZE]


@pytest.fixture(scope="module")
def launched_stack(tiny_model_dir: Path) -> Iterator[tuple[ChildProcess, str]]:
    child, url = launch(tiny_model_dir, "--shard", "bundled")
    yield child, url
    assert child.stop(timeout=30) == 0, child.log_tail()


@pytest.fixture(scope="module")
def stack(launched_stack: tuple[ChildProcess, str]) -> str:
    return launched_stack[1]


def descendants(pid: int) -> Iterator[int]:
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            yield int(child)
            yield from descendants(int(child))


def router_rss_mb(launcher: ChildProcess) -> float:
    """Resident MB of the launcher's router process (not its tokenizer workers)."""
    for pid in descendants(launcher.popen.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"router" in argv:
            status = Path(f"/proc/{pid}/status").read_text()
            return (
                int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024
            )
    raise AssertionError("no router process under the launcher")


async def token_times(client: httpx.AsyncClient, stop: asyncio.Event) -> list[list[float]]:
    """Streams, one after another until `stop`: the arrival time of each token event, per stream."""
    streams = []
    body = {"inputs": "a stream beside large requests", "parameters": {"max_new_tokens": 200}}
    while not stop.is_set():
        times: list[float] = []
        streams.append(times)
        async with client.stream("POST", "/generate_stream", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    times.append(time.perf_counter())
    return streams


def post_large(url: str, path: str, body: dict) -> tuple[float, float, httpx.Response]:
    """POST from a thread: only raw bytes on the way (the 32 MB answer is parsed after the streams end)."""
    sent = time.perf_counter()
    response = httpx.post(f"{url}{path}", json=body, timeout=300)
    return sent, time.perf_counter(), response


async def test_streams_keep_going_while_1mb_requests_arrive(stack: str, tiny_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=stack, timeout=120) as client:
        max_total_tokens = (await client.get("/info")).json()["max_total_tokens"]
        streaming = [asyncio.ensure_future(token_times(client, stop)) for _ in range(4)]
        await asyncio.sleep(1.0)
        sent, _, tokenized = await asyncio.to_thread(post_large, stack, "/tokenize", {"inputs": TEXT})
        generate = {"inputs": TEXT, "parameters": {"max_new_tokens": 1}}
        _, done, refused = await asyncio.to_thread(post_large, stack, "/generate", generate)
        await asyncio.sleep(0.3)
        stop.set()
        streams = [times for result in await asyncio.gather(*streaming) for times in result]

    gaps = [b - a for times in streams for a, b in itertools.pairwise(times) if a < done and b > sent]
    assert len(gaps) > 50, "the streams did not run while the large requests did"
    assert max(gaps) < MAX_GAP_S, f"a stream stalled {max(gaps):.2f} s"

    ids = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).encode(TEXT).ids
    assert tokenized.status_code == 200
    tokens = json.loads(tokenized.content)
    assert [t["id"] for t in tokens] == ids
    raw = TEXT.encode()
    assert all(raw[t["start"] : t["stop"]].decode() == t["text"] for t in tokens[1:])
    assert refused.status_code == 422
    assert refused.json() == {
        "error": f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {max_total_tokens}. "
        f"Given: {len(ids)} `inputs` tokens and 1 `max_new_tokens`",
        "error_type": "validation",
    }


async def test_router_memory_returns_after_1mb_requests(launched_stack: tuple[ChildProcess, str]) -> None:
    """Five 1 MB /tokenize (32 MB answers each) leave the router's RSS where it was (before: +80-135 MB)."""
    launcher, url = launched_stack
    before = router_rss_mb(launcher)
    for _ in range(5):
        *_, response = await asyncio.to_thread(post_large, url, "/tokenize", {"inputs": TEXT})
        assert response.status_code == 200
        del response
    await asyncio.sleep(2.0)
    grown = router_rss_mb(launcher) - before
    assert grown < 40, f"the router kept {grown:.0f} MB"
