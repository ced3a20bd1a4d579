"""POST /, /generate, /generate_stream, /invocations: TGI's native generation routes (/vertex: vertex.py)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from tgi_async.api import protocol as p
from tgi_async.api.body import read_json
from tgi_async.api.errors import error_response
from tgi_async.api.generation import generate_response, stream_responses
from tgi_async.api.openapi import ROUTES
from tgi_async.api.routes.common import json_response, serving, sse_bytes, until_disconnect
from tgi_async.api.sse import SSEResponse
from tgi_async.scheduler.request import InferError

router = APIRouter()


async def _generate(request: Request, body: p.GenerateRequest, as_list: bool = False) -> Response:
    try:
        result = await generate_response(serving(request), body)
    except InferError as error:
        return error_response(error)
    return json_response([result.response] if as_list else result.response, result.headers)


def _stream(request: Request, body: p.GenerateRequest) -> Response:
    headers, items = stream_responses(serving(request), body)
    return SSEResponse(sse_bytes(items), headers)


@router.post("/generate", **ROUTES["generate"])
async def generate(request: Request) -> Response:
    body = await read_json(request, p.GenerateRequest)
    return await until_disconnect(request, _generate(request, body))


@router.post("/generate_stream", **ROUTES["generate_stream"])
async def generate_stream(request: Request) -> Response:
    return _stream(request, await read_json(request, p.GenerateRequest))


@router.post("/", **ROUTES["compat_generate"])
async def compat_generate(request: Request) -> Response:
    body = await read_json(request, p.CompatGenerateRequest)
    if body.parameters.return_full_text is None:
        body.parameters.return_full_text = serving(request).config.compat_return_full_text
    if body.stream:
        return _stream(request, body.to_generate_request())
    return await until_disconnect(request, _generate(request, body.to_generate_request(), as_list=True))


@router.post("/invocations", **ROUTES["sagemaker_compatibility"])
async def invocations(request: Request) -> Response:
    # NOTE: routes.invocations.InvocationsDispatch sends chat/completion bodies elsewhere before this runs
    return await compat_generate(request)
