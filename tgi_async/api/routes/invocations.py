"""POST /invocations (SageMaker): the body decides the route, as TGI's untagged `SagemakerRequest` does.

A generate request (`inputs`, optional `parameters`, `stream`) is served by POST /, a chat request
(`messages`) by /v1/chat/completions, a completion request (`prompt`) by /v1/completions. Implemented as
ASGI middleware that rewrites the path and replays the body, so each target route runs unchanged.
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import from_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tgi_async.api.body import DATA_PREFIX, BodyRejection, is_json_content_type
from tgi_async.api.protocol import CompatGenerateRequest

PATH = "/invocations"
NO_VARIANT = DATA_PREFIX + "data did not match any variant of untagged enum SagemakerRequest"


def target_path(content_type: str | None, body: bytes) -> str | None:
    """Where an /invocations body goes; None when it matches no variant (422)."""
    if not is_json_content_type(content_type):
        return "/"  # answers 415 like any JSON route
    try:
        # NOTE: the parser the routes use (pydantic's), so its nesting limit comes first: json.loads would
        # raise RecursionError on 1,000 levels instead of a ValueError.
        data = from_json(body)
    except ValueError:
        return "/"  # answers 400 with the parser's message
    try:
        CompatGenerateRequest.model_validate(data, context={"from_client": True})
        return "/"
    except ValidationError:
        pass
    if isinstance(data, dict) and "messages" in data:
        return "/v1/chat/completions"
    if isinstance(data, dict) and "prompt" in data:
        return "/v1/completions"
    return None


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class InvocationsDispatch:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        chunks = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # client left
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except BodyRejection as rejection:
            await _plain(send, rejection.status, rejection.text)
            return
        body = b"".join(chunks)
        content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), None)
        path = target_path(content_type, body)
        if path is None:
            await _plain(send, 422, NO_VARIANT)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "path": path, "raw_path": path.encode()}, replay, send)
