"""POST /vertex: TGI's `vertex_compatibility` (router/src/vertex.rs), served whatever the build.

An instance is a generate request (`inputs`, of whose `parameters` only `max_new_tokens` and `seed` count)
or a chat request (`messages`), tried in that order like serde's untagged `VertexInstance`. All instances
run at once; the predictions are their generated texts, in order.

One deliberate difference from TGI: an instance that fails validation (an empty `inputs`, too many tokens)
answers what /generate answers for it, 422 with the validator's message; TGI answers 500 "Incomplete
generation" for every failed instance, a client error reported as a server fault. Other failures keep
TGI's 500.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tgi_async.api import openapi
from tgi_async.api import protocol as p
from tgi_async.api.body import DATA_PREFIX, UNSUPPORTED_MEDIA_TYPE, BodyRejection, is_json_content_type
from tgi_async.api.body import rejection_from_errors as serde_rejection
from tgi_async.api.errors import JSON_HEADERS, error_response
from tgi_async.api.generation import generate_all
from tgi_async.api.openai_requests import ChatRequest
from tgi_async.api.routes.chat import chat_generate_request
from tgi_async.api.routes.common import json_response, serving, until_disconnect
from tgi_async.scheduler.request import InferError

router = APIRouter()
NO_VARIANT = "data did not match any variant of untagged enum VertexInstance"


class GenerateVertexInstance(p._Strict):
    inputs: str
    parameters: p.GenerateParameters | None = None


VertexInstance = Annotated[GenerateVertexInstance | ChatRequest, Field(union_mode="left_to_right")]
_VARIANTS = {GenerateVertexInstance.__name__, ChatRequest.__name__}


class VertexRequest(p._Strict):
    instances: list[VertexInstance]


class VertexResponse(p.BaseModel):
    predictions: list[str]


def parse_vertex_request(body: bytes) -> VertexRequest:
    """The request, or serde's rejection; an instance matching neither variant is serde's untagged error."""
    try:
        return VertexRequest.model_validate_json(body, context={"from_client": True})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    for error in errors:
        loc = error.get("loc", ())
        if len(loc) >= 3 and loc[0] == "instances" and loc[2] in _VARIANTS:
            raise BodyRejection(422, f"{DATA_PREFIX}instances[{loc[1]}]: {NO_VARIANT}") from None
    raise serde_rejection(errors) from None


def _vertex_error(status: int, message: str) -> Response:
    body = p.ErrorResponse(error=message, error_type=message)
    return Response(p.to_json(body), status_code=status, headers=JSON_HEADERS)


async def _generate_request(
    request: Request, instance: GenerateVertexInstance | ChatRequest
) -> p.GenerateRequest:
    if isinstance(instance, ChatRequest):
        generate, _ = await chat_generate_request(request, instance)  # NOTE: TGI answers vertex as text
        return generate
    given = instance.parameters or p.GenerateParameters()
    parameters = p.GenerateParameters(
        do_sample=True,
        max_new_tokens=given.max_new_tokens,
        seed=given.seed,
        details=True,
        decoder_input_details=True,
    )
    return p.GenerateRequest(inputs=instance.inputs, parameters=parameters)


@router.post(
    "/vertex",
    # NOTE: as TGI's `google` build documents it (its default build has no /vertex)
    **openapi.route(
        "vertex_compatibility",
        "Generate tokens from Vertex request",
        {200: {"model": VertexResponse, "description": "Generated Text"}, **openapi.errors()},
        body="VertexRequest",
    ),
)
async def vertex(request: Request) -> Response:
    if not is_json_content_type(request.headers.get("content-type")):
        raise BodyRejection(415, UNSUPPORTED_MEDIA_TYPE)
    body = parse_vertex_request(await request.body())
    if not body.instances:
        return _vertex_error(422, "Input validation error")
    try:
        # NOTE: a chat instance's template or tool error answers as such, before anything runs (TGI's `?`)
        requests = [await _generate_request(request, instance) for instance in body.instances]
    except InferError as error:
        return error_response(error)
    try:
        results = await until_disconnect(request, generate_all(serving(request), requests))
    except InferError as error:
        if error.error_type == "validation":
            return error_response(error)
        return _vertex_error(500, "Incomplete generation")
    if isinstance(results, Response):
        return results
    return json_response(VertexResponse(predictions=[r.response.generated_text for r in results]))
