"""What a test that waits too long on a server reports: where each side waits, in few enough lines that CI's
output keeps them.

- the processes: every thread's stack (SIGUSR1, tgi_async/cli.py) and every event-loop task, alike tasks once
  (SIGUSR2, tgi_async/event_loop.py), written to their logs;
- the client: where its unanswered requests await, and its connection pool's connections and queue;
- the kernel: the TCP sockets to and from the server's port by state, with bytes not yet read or acknowledged
  (a request in a server socket's receive queue was sent and never read; a listening socket's receive queue
  is its accept backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import httpx

from tgi_async.event_loop import describe_tasks

TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


async def dump_process_stacks(pids: Iterable[int]) -> None:
    """Ask each process for its threads' and tasks' stacks; both are written to its log at once."""
    for pid in pids:
        for signum in (signal.SIGUSR1, signal.SIGUSR2):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    await asyncio.sleep(2.0)


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (a launcher's router and shards)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(stat.parent.name))
    return pids


def client_report(pending: set[asyncio.Task], client: httpx.AsyncClient) -> str:
    """The unanswered requests' await chains and the pool, then what else this (test) process runs: the
    other tasks of its event loop (pytest's, shared by every test of the session) and its threads."""
    lines = ["--- client: unanswered requests", *describe_tasks(pending)]
    pool = getattr(client._transport, "_pool", None)  # httpx 0.28's AsyncHTTPTransport: an httpcore pool
    if pool is not None:
        states = Counter(connection.info() for connection in pool.connections)
        queued = sum(request.is_queued() for request in getattr(pool, "_requests", ()))
        lines.append(f"pool: {queued} requests queued; connections: {dict(states)}")
        lines += read_paths(connection for connection in pool.connections if "ACTIVE" in connection.info())
    others = asyncio.all_tasks() - pending - {asyncio.current_task()}
    lines += ["--- client: the event loop's other tasks", *describe_tasks(others)]
    threads = thread_places()
    lines.append(f"--- client: {sum(threads.values())} threads")
    lines += [f"{count} x {place}" for place, count in threads.items()]
    return "\n".join(lines)


def read_paths(connections: Iterable[object]) -> list[str]:
    """For each connection, whether its socket can ever be read: the transport reading or paused, the event
    loop's selector key for its fd, and the kernel's epoll registration of that fd (/proc/self/fdinfo)."""
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    epoll_fd = selector._selector.fileno() if selector is not None else None  # type: ignore[union-attr]
    registered = _epoll_registrations(epoll_fd) if epoll_fd is not None else {}
    lines = []
    for connection in connections:
        try:
            stream = connection._connection._network_stream._stream  # type: ignore[attr-defined]
            transport, protocol = stream._transport, stream._protocol
            fd = transport.get_extra_info("socket").fileno()
            key = selector.get_map().get(fd) if selector is not None else None  # type: ignore[union-attr]
            lines.append(
                f"fd {fd}: transport reading={transport.is_reading()} closing={transport.is_closing()}, "
                f"protocol queued={len(protocol.read_queue)} event={protocol.read_event.is_set()}, "
                f"selector events={key.events if key else None}, epoll events={registered.get(fd)}"
            )
        except Exception as exc:  # a report must not fail: say what could not be read
            lines.append(f"read path unknown: {exc!r}")
    return lines


def _epoll_registrations(epoll_fd: int) -> dict[int, str]:
    """{fd: event mask} the kernel's epoll instance watches for this process."""
    registered = {}
    with contextlib.suppress(OSError):
        for row in Path(f"/proc/self/fdinfo/{epoll_fd}").read_text().splitlines():
            if row.startswith("tfd:"):
                fields = row.split()
                registered[int(fields[1])] = fields[3]
    return registered


def thread_places() -> Counter[str]:
    """This process's threads by name (numbers dropped: a pool's threads are one) and innermost frame."""
    names = {thread.ident: re.sub(r"[-_\d]+$", "", thread.name) for thread in threading.enumerate()}
    places: Counter[str] = Counter()
    for ident, frame in sys._current_frames().items():
        code, name = frame.f_code, names.get(ident, "?")
        places[f"{name} in {code.co_name} ({Path(code.co_filename).name}:{frame.f_lineno})"] += 1
    return places


def tcp_report(port: int) -> str:
    """The sockets on this host with `port` at either end, by side and state: how many, and the bytes they
    hold (sent and not acknowledged; received and not read)."""
    totals: dict[tuple[str, str], list[int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                local, remote, state, queues = row.split()[1:5]
                if int(local.rsplit(":", 1)[1], 16) == port:
                    side = "server"
                elif int(remote.rsplit(":", 1)[1], 16) == port:
                    side = "client"
                else:
                    continue
                unacked, unread = (int(value, 16) for value in queues.split(":"))
                total = totals.setdefault((side, TCP_STATES.get(state, state)), [0, 0, 0])
                total[0] += 1
                total[1] += unacked
                total[2] += unread
    lines = [f"--- TCP sockets of port {port}"]
    for (side, state), (count, unacked, unread) in sorted(totals.items()):
        lines.append(f"{side} {state}: {count} sockets, {unacked} bytes unacknowledged, {unread} unread")
    return "\n".join(lines)
