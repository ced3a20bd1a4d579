"""POST /, /generate, /generate_stream, /invocations: TGI's native generation routes (/vertex: vertex.py)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from tgi_async.api import protocol as p
from tgi_async.api.body import read_json
from tgi_async.api.errors import error_response
from tgi_async.api.generation import generate_response, stream_responses
from tgi_async.api.routes.common import json_response, serving, sse_bytes, until_disconnect
from tgi_async.api.sse import SSEResponse
from tgi_async.scheduler.request import InferError

router = APIRouter()
TAG = "Text Generation Inference"
ERRORS = {
    422: {"model": p.ErrorResponse, "description": "Input validation error"},
    424: {"model": p.ErrorResponse, "description": "Generation Error"},
    429: {"model": p.ErrorResponse, "description": "Model is overloaded"},
    500: {"model": p.ErrorResponse, "description": "Incomplete generation"},
}


def _body(model: type) -> dict:
    """OpenAPI request body for routes that parse their JSON themselves (see body.py)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _generate(request: Request, body: p.GenerateRequest, as_list: bool = False) -> Response:
    try:
        result = await generate_response(serving(request), body)
    except InferError as error:
        return error_response(error)
    return json_response([result.response] if as_list else result.response, result.headers)


def _stream(request: Request, body: p.GenerateRequest) -> Response:
    headers, items = stream_responses(serving(request), body)
    return SSEResponse(sse_bytes(items), headers)


@router.post(
    "/generate",
    tags=[TAG],
    summary="Generate tokens",
    responses={200: {"model": p.GenerateResponse, "description": "Generated Text"}, **ERRORS},
    openapi_extra=_body(p.GenerateRequest),
)
async def generate(request: Request) -> Response:
    body = await read_json(request, p.GenerateRequest)
    return await until_disconnect(request, _generate(request, body))


@router.post(
    "/generate_stream",
    tags=[TAG],
    summary="Generate a stream of token using Server-Sent Events",
    responses={200: {"model": p.StreamResponse, "description": "Generated Text"}, **ERRORS},
    openapi_extra=_body(p.GenerateRequest),
)
async def generate_stream(request: Request) -> Response:
    return _stream(request, await read_json(request, p.GenerateRequest))


@router.post(
    "/",
    tags=[TAG],
    summary="Generate tokens if `stream == false` or a stream of token if `stream == true`",
    responses={200: {"model": list[p.GenerateResponse], "description": "Generated Text"}, **ERRORS},
    openapi_extra=_body(p.CompatGenerateRequest),
)
async def compat_generate(request: Request) -> Response:
    body = await read_json(request, p.CompatGenerateRequest)
    if body.parameters.return_full_text is None:
        body.parameters.return_full_text = serving(request).config.compat_return_full_text
    if body.stream:
        return _stream(request, body.to_generate_request())
    return await until_disconnect(request, _generate(request, body.to_generate_request(), as_list=True))


@router.post(
    "/invocations",
    tags=[TAG],
    summary="Generate tokens from Sagemaker request",
    responses={200: {"model": list[p.GenerateResponse], "description": "Generated Text"}, **ERRORS},
    openapi_extra=_body(p.CompatGenerateRequest),
)
async def invocations(request: Request) -> Response:
    # NOTE: routes.invocations.InvocationsDispatch sends chat/completion bodies elsewhere before this runs
    return await compat_generate(request)
