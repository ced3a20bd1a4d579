"""GET /, /health, /ping, /info, /metrics and POST /tokenize."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from tgi_async import metrics
from tgi_async.api import protocol as p
from tgi_async.api.body import read_json
from tgi_async.api.errors import JSON_HEADERS, error_response
from tgi_async.api.openapi import ROUTES
from tgi_async.api.routes.common import json_response, serving
from tgi_async.scheduler.request import InferError

router = APIRouter()
UNHEALTHY = p.to_json(p.ErrorResponse(error="unhealthy", error_type="healthcheck"))


def metrics_response() -> Response:
    """The Prometheus exposition (also served on --prometheus-port by the router CLI)."""
    return Response(metrics.render(), media_type="text/plain; charset=utf-8")


async def _health(request: Request) -> Response:
    if await serving(request).health():
        return Response(b"")
    return Response(UNHEALTHY, status_code=503, headers=JSON_HEADERS)


router.add_api_route("/health", _health, methods=["GET"], **ROUTES["health"])
router.add_api_route("/ping", _health, methods=["GET"], include_in_schema=False)
router.add_api_route("/", _health, methods=["GET"], include_in_schema=False)


@router.get("/info", **ROUTES["get_model_info"])
async def info(request: Request) -> Response:
    return json_response(request.app.state.info)


@router.get("/metrics", **ROUTES["metrics"])
async def get_metrics() -> Response:
    return metrics_response()


@router.post("/tokenize", **ROUTES["tokenize"])
async def tokenize(request: Request) -> Response:
    body = await read_json(request, p.GenerateRequest)
    try:
        tokens = await serving(request).validator.tokenize(body.inputs, body.add_special_tokens)
    except InferError as error:
        return error_response(error)
    return Response(tokens, headers=JSON_HEADERS)
