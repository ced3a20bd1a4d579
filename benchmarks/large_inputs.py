"""The largest gap between streamed tokens while 1 MB requests arrive on every route, before and after.

    python -m benchmarks.large_inputs [--baseline main] [--streams 16] [--size 1000000]
    python -m benchmarks.large_inputs --rss /tokenize      # RSS only: 5 large requests per route, 2 s idle

Two routers in turn, each on its own bundled shard: the code of `--baseline` (a git ref, unpacked with
`git archive` into a temporary directory and run with PYTHONPATH pointing there), then this checkout.
While `--streams` clients stream /generate_stream (each sends its next request when one ends), one request
of `--size` characters goes to each route in turn, from another process (reading a 32 MB /tokenize answer
must not delay the clients' clock). Reported: the streams' inter-token gaps in a quiet window and while the
large requests run (p50/p99/p99.9/max), per route its status, time and the largest gap overlapping it, and
the router's RSS (and its worker processes') before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import multiprocessing
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.harness import Stream, percentile, pin_this_process, router_process, shard_process, stream
from benchmarks.harness import tiny_model as tiny_model_dir
from benchmarks.sse_client import SSEClient

ROOT = Path(__file__).resolve().parents[1]
ROUTES = (
    "/generate",
    "/generate_stream",
    "/tokenize",
    "/chat_tokenize",
    "/v1/chat/completions",
    "/v1/completions",
    "/",
    "/vertex",
    "/invocations",
)
SENTENCE = "The quick brown fox jumps over the lazy dog. "


def large_text(size: int) -> str:
    return (SENTENCE * (size // len(SENTENCE) + 1))[:size]


def body_for(path: str, text: str) -> dict:
    """A request of `path` carrying `text` (asking one new token where it generates)."""
    generate = {"inputs": text, "parameters": {"max_new_tokens": 1}}
    chat = {"messages": [{"role": "user", "content": text}], "max_tokens": 1}
    return {
        "/tokenize": {"inputs": text},
        "/chat_tokenize": {"messages": chat["messages"]},
        "/v1/chat/completions": chat,
        "/v1/completions": {"prompt": text, "max_tokens": 1},
        "/vertex": {"instances": [generate]},
    }.get(path, generate)


def send_large(url: str, path: str, size: int) -> tuple[float, float, int, int]:
    """POST one large request (in a process of its own): sent and done (perf_counter), status, bytes."""
    import json

    payload = json.dumps(body_for(path, large_text(size))).encode()
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    sent = time.perf_counter()
    connection.request("POST", path, payload, {"content-type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    done = time.perf_counter()
    connection.close()
    return sent, done, response.status, len(answer)


@dataclass
class Run:
    records: list[Stream] = field(default_factory=list)
    quiet: tuple[float, float] = (0.0, 0.0)
    routes: list[tuple[str, float, float, int, int]] = field(default_factory=list)  # path, sent, done, ...
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (router, workers) per measure

    def gaps(self, start: float, end: float) -> list[float]:
        """Inter-token gaps that overlap [start, end]."""
        return [
            b - a
            for record in self.records
            for a, b in itertools.pairwise(record.token_times)
            if a < end and b > start
        ]


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident MB of the process and, summed, of its children (the tokenizer workers)."""

    def rss(p: int) -> float:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return rss(pid), sum(rss(c) for c in children)


async def measure(url: str, pid: int, args: argparse.Namespace, sender: ProcessPoolExecutor) -> Run:
    run = Run()
    stop = asyncio.Event()

    async def keep_streaming(client: SSEClient, index: int) -> None:
        while not stop.is_set():
            run.records.append(await stream(client, f"stream {index} beside large requests", 200))

    async with SSEClient(url) as client:
        await client.open(args.streams)
        clients = [asyncio.ensure_future(keep_streaming(client, i)) for i in range(args.streams)]
        await asyncio.sleep(1.0)  # warm
        quiet_start = time.perf_counter()
        await asyncio.sleep(args.quiet)
        run.quiet = (quiet_start, time.perf_counter())
        run.rss_mb.append(rss_mb(pid))
        loop = asyncio.get_running_loop()
        for path in ROUTES:
            sent, done, status, size = await loop.run_in_executor(sender, send_large, url, path, args.size)
            run.routes.append((path, sent, done, status, size))
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
    await asyncio.sleep(1.0)
    run.rss_mb.append(rss_mb(pid))
    return run


def report(name: str, run: Run) -> None:
    quiet = run.gaps(*run.quiet)
    loaded = run.gaps(run.routes[0][1], run.routes[-1][2])
    ms = [1000 * percentile(g, q) for g in (quiet, loaded) for q in (50, 99, 99.9, 100)]
    (router_before, workers_before), (router_after, workers_after) = run.rss_mb
    print(f"\n### {name}\n")
    print("| window | gaps | p50 ms | p99 ms | p99.9 ms | max ms |")
    print("|---|---|---|---|---|---|")
    print(f"| quiet | {len(quiet)} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[3]:.1f} |")
    print(f"| 1 MB requests | {len(loaded)} | {ms[4]:.1f} | {ms[5]:.1f} | {ms[6]:.1f} | {ms[7]:.1f} |")
    print("\n| route | status | answer bytes | seconds | largest gap ms |")
    print("|---|---|---|---|---|")
    for path, sent, done, status, size in run.routes:
        largest = max(run.gaps(sent, done), default=float("nan"))
        print(f"| {path} | {status} | {size:,} | {done - sent:.2f} | {1000 * largest:.0f} |")
    print(
        f"\nRSS MB, router (+ workers): before {router_before:.0f} (+{workers_before:.0f}), "
        f"after {router_after:.0f} (+{workers_after:.0f})"
    )


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The tree of `ref`, unpacked into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="tgia-baseline-") as directory:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
        yield Path(directory)


@contextlib.contextmanager
def stack(model: Path, code: Path | None) -> Iterator[tuple[int, str]]:
    """A bundled shard and a router running the code in `code` (None: this checkout): pid and URL."""
    env = None if code is None else {"PYTHONPATH": str(code)}
    with shard_process(model) as (_, socket_path):
        # NOTE: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
        with contextlib.chdir(code or ROOT), router_process(model, socket_path, env=env) as (child, url):
            os.chdir(ROOT)
            yield child.popen.pid, url


def measure_rss(url: str, pid: int, routes: list[str], size: int) -> str:
    """Five large requests per route, then 2 s idle: the RSS (router, workers) at start and at the end."""
    start = rss_mb(pid)
    for path in routes:
        for _ in range(5):
            send_large(url, path, size)
    time.sleep(2.0)
    end = rss_mb(pid)
    return f"{start[0]:.0f} (+{start[1]:.0f}) -> {end[0]:.0f} (+{end[1]:.0f})"


async def run(args: argparse.Namespace) -> None:
    pin_this_process()
    model = tiny_model_dir()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as sender, checkout(args.baseline) as baseline:
        runs = [(f"before ({args.baseline})", baseline), ("after", None)]
        for name, code in runs[1:] if args.after_only else runs:
            with stack(model, code) as (pid, url):
                if args.rss:
                    rss = measure_rss(url, pid, args.rss, args.size)
                    print(f"| {name} | {' '.join(args.rss)} x5 | {rss} |")
                else:
                    report(name, await measure(url, pid, args, sender))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="main", help="git ref of the code to compare with")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--size", type=int, default=1_000_000, help="characters per large request")
    parser.add_argument("--rss", nargs="+", metavar="ROUTE", help="only RSS around 5 requests per ROUTE")
    parser.add_argument("--after-only", action="store_true", help="skip the baseline")
    parser.add_argument("--quiet", type=float, default=3.0, help="seconds of streams alone")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
