"""The full stack over the bundled shard with step overlap: router (async) + shard (overlap) answer what
router (sync) + shard (one forward at a time) answer, for concurrent requests ending at different steps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from integration_tests.conftest import OWN_EVENT_LOOP
from integration_tests.hang_report import client_report, dump_process_stacks, tcp_report
from tgi_async.launcher.processes import ChildProcess, start_bundled_shard, start_router

pytestmark = OWN_EVENT_LOOP

WORDS = "the batch decode prefill stream router shard queue kernel tensor cache block slot".split()


def prompt(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(2 + i % 23))


def parameters(i: int) -> dict:
    """Lengths from 1 to 40 tokens; every 5th request seeded sampling, every 7th a stop sequence."""
    chosen = {"max_new_tokens": 1 + (i * 11) % 40, "details": True, "decoder_input_details": i % 9 == 0}
    if i % 5 == 0:
        chosen.update(do_sample=True, seed=i, temperature=0.7, top_k=30)
    if i % 7 == 0:
        chosen["stop"] = ["e", "o"]  # the tiny model's text reaches one within a few tokens
    return chosen


# NOTE: 96 requests take ~1 s on an idle 2-core machine, a few seconds loaded: one unanswered after this long
# is a hang, reported with the requests left and the children's stacks, well before pytest's 300 s.
ANSWER_TIMEOUT_S = 90.0


@dataclass
class Stack:
    name: str
    url: str
    shard: ChildProcess
    router: ChildProcess

    async def hang_report(self, pending: set[asyncio.Task], client: httpx.AsyncClient) -> str:
        """Where the client's unanswered requests wait, the TCP sockets to the router, and the ends of both
        children's logs with their threads' and tasks' stacks (integration_tests/hang_report.py)."""
        port = httpx.URL(self.url).port
        assert port is not None
        first = [client_report(pending, client), tcp_report(port)]  # before the dumps change anything
        await dump_process_stacks(child.popen.pid for child in (self.shard, self.router) if child.alive())
        logs = [f"--- {c.name} log:\n{c.log_tail(3000)}" for c in (self.shard, self.router)]
        return "\n".join(first + logs)


@pytest.fixture(scope="module")
def stacks(tiny_model_dir: Path) -> Iterator[dict[str, Stack]]:
    children: list[ChildProcess] = []
    made = {}
    try:
        for name, shard_flag, scheduler in (
            ("overlap", "--overlap", "async"),
            ("plain", "--no-overlap", "sync"),
        ):
            shard, socket_path = start_bundled_shard(tiny_model_dir, shard_flag)
            children.append(shard)
            router, url = start_router(tiny_model_dir, socket_path, "--scheduler", scheduler)
            children.append(router)
            made[name] = Stack(name, url, shard, router)
        yield made
    finally:
        for child in reversed(children):
            child.stop()


async def generate_all(stack: Stack, count: int) -> list[dict]:
    """Every request's answer; fails naming the requests not answered in ANSWER_TIMEOUT_S (a hang)."""
    limits = httpx.Limits(max_connections=128)
    async with httpx.AsyncClient(timeout=ANSWER_TIMEOUT_S + 30, limits=limits) as client:

        async def one(i: int) -> dict:
            body = {"inputs": prompt(i), "parameters": parameters(i)}
            response = await client.post(f"{stack.url}/generate", json=body)
            assert response.status_code == 200, f"request {i}: {response.text}"
            return response.json()

        tasks = [asyncio.create_task(one(i)) for i in range(count)]
        first_failure = asyncio.FIRST_EXCEPTION
        done, pending = await asyncio.wait(tasks, timeout=ANSWER_TIMEOUT_S, return_when=first_failure)
        failed = [task for task in done if task.exception() is not None]
        # NOTE: the stacks before the unanswered clients leave (leaving changes what the router waits for)
        report = await stack.hang_report(pending, client) if pending and not failed else ""
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        if pending:
            unanswered = [i for i, task in enumerate(tasks) if task in pending]
            pytest.fail(
                f"{stack.name}: {len(unanswered)} of {count} requests unanswered after "
                f"{ANSWER_TIMEOUT_S:g} s: {[(i, parameters(i)) for i in unanswered[:8]]}\n{report}"
            )
        return [task.result() for task in tasks]


def essentials(answer: dict) -> tuple:
    details = answer["details"]
    tokens = tuple((t["id"], t["text"]) for t in details["tokens"])
    return answer["generated_text"], details["finish_reason"], details["generated_tokens"], tokens


async def test_async_router_and_overlapped_shard_answer_as_sync_and_one_forward_at_a_time(
    stacks: dict[str, Stack],
) -> None:
    overlapped = await generate_all(stacks["overlap"], 96)
    plain = await generate_all(stacks["plain"], 96)
    assert [essentials(a) for a in overlapped] == [essentials(a) for a in plain]
    reasons = {a["details"]["finish_reason"] for a in overlapped}
    assert "length" in reasons and "stop_sequence" in reasons  # requests ended at different steps, both ways
    # logprobs agree too (float32 sums over differently sized batches may differ in the last bits)
    for a, b in zip(overlapped, plain, strict=True):
        for x, y in zip(a["details"]["tokens"], b["details"]["tokens"], strict=True):
            assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-4)
