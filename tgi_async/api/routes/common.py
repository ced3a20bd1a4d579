"""Small helpers the route modules share: app state access, JSON responses, client-disconnect handling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from tgi_async.api.errors import CLIENT_CLOSED_REQUEST
from tgi_async.api.protocol import StreamResponse, to_json
from tgi_async.api.serving import Serving
from tgi_async.api.sse import sse_error, sse_event
from tgi_async.scheduler.request import InferError

T = TypeVar("T")


def serving(request: Request) -> Serving:
    return request.app.state.serving


def json_response(model: BaseModel | list[Any], headers: Mapping[str, str] | None = None) -> Response:
    """`Json(model)` as axum sends it: compact serde-style bytes, `content-type: application/json`."""
    if isinstance(model, list):
        body = b"[" + b",".join(to_json(m) for m in model) + b"]"
    else:
        body = to_json(model)
    return Response(body, headers={**(headers or {}), "content-type": "application/json"})


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | Response:
    """Await `work`, cancelling it if the client disconnects first (axum drops the handler then)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return Response(b"", status_code=CLIENT_CLOSED_REQUEST)
    return task.result()


async def sse_bytes(items: AsyncIterator[StreamResponse | InferError]) -> AsyncIterator[bytes]:
    """`StreamResponse`s and `InferError`s as SSE events; closes `items` when closed."""
    try:
        async for item in items:
            yield sse_error(item) if isinstance(item, InferError) else sse_event(item)
    finally:
        await items.aclose()  # type: ignore[attr-defined]
