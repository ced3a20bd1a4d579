"""The FastAPI application: TGI's routes, middleware and OpenAPI document for one model and scheduler.

Middleware, outermost first: CORS, API key (generation routes), memory release after large bodies, body
limit (413), /invocations dispatch.
The OpenAPI document is at /api-doc/openapi.json with Swagger UI at /docs, as in TGI.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tgi_async import metrics
from tgi_async.api import docs, openapi
from tgi_async.api import protocol as p
from tgi_async.api.config import ApiConfig
from tgi_async.api.errors import install_handlers
from tgi_async.api.middleware import ApiKey, BodyLimit, Cors, ReleaseMemoryAfterLargeBodies
from tgi_async.api.routes import generate, info, vertex
from tgi_async.api.routes.invocations import InvocationsDispatch
from tgi_async.api.serving import Serving
from tgi_async.api.validation import Validator
from tgi_async.scheduler.base import Scheduler
from tgi_async.telemetry import http as tracing

log = logging.getLogger(__name__)
OPENAPI_URL = "/api-doc/openapi.json"
OPENAI_ROUTES = "tgi_async.api.routes.openai_compat"
# Request bodies parsed by hand (body.py) still documented in the OpenAPI components.
REQUEST_MODELS = (p.GenerateRequest, p.CompatGenerateRequest, vertex.VertexRequest)
LARGE_BODY_BYTES = 256 * 1024  # after a request this large the router returns freed memory to the OS


def build_info(config: ApiConfig, extra_info: dict[str, Any] | None = None) -> p.Info:
    """GET /info's body; `extra_info` keys are appended after TGI's fields."""
    return p.Info(
        model_id=config.model_id,
        model_sha=config.model_sha,
        model_pipeline_tag=config.model_pipeline_tag,
        max_concurrent_requests=config.max_concurrent_requests,
        max_best_of=config.max_best_of,
        max_stop_sequences=config.max_stop_sequences,
        max_input_tokens=config.max_input_tokens,
        max_total_tokens=config.max_total_tokens,
        validation_workers=config.validation_workers,
        max_client_batch_size=config.max_client_batch_size,
        router=config.router,
        version=config.version,
        sha=config.sha,
        docker_label=config.docker_label,
        **(extra_info or {}),
    )


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title,
            version=app.version,
            description="Text Generation Webserver",
            routes=app.routes,
            tags=[
                {
                    "name": "Text Generation Inference",
                    "description": "Hugging Face Text Generation Inference API",
                }
            ],
            license_info={"name": "Apache 2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        )
        _, defs = models_json_schema(
            [(m, "validation") for m in REQUEST_MODELS], ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in defs.get("$defs", {}).items():
            components.setdefault(name, definition)
        components.update(openapi.component_schemas())
        schema["components"]["schemas"] = dict(sorted(openapi.renamed(components).items()))
        app.openapi_schema = schema
    return app.openapi_schema


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """The routes of `router`, as routes of the app itself.

    NOTE: not `include_router`: FastAPI matches an included router's routes through a per-request layer of
    scope bookkeeping, ~15 µs per request here; ours need no prefix, tags or dependencies from an include."""
    app.router.routes.extend(router.routes)


def _answer_head(app: FastAPI) -> None:
    """HEAD on every GET route, as axum answers it (the server sends the GET's headers, no body).

    NOTE: routes of their own, out of the document: utoipa does not list HEAD either."""
    for route in list(app.router.routes):
        if isinstance(route, APIRoute) and "GET" in route.methods:
            app.router.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False)


def create_app(
    config: ApiConfig, scheduler: Scheduler, tokenizer: Any, *, extra_info: dict[str, Any] | None = None
) -> FastAPI:
    """TGI's HTTP API over `scheduler`, validating with `tokenizer` (a transformers fast tokenizer or a
    `tokenizers.Tokenizer`). State for other route modules: `app.state.serving`, `.config`, `.tokenizer`,
    `.validator`, `.info`."""
    metrics.configure(config.max_input_tokens, config.max_total_tokens)
    validator = Validator(tokenizer, config)
    app = FastAPI(
        title="Text Generation Inference",
        version=config.version,
        openapi_url=OPENAPI_URL,
        docs_url=None,  # routes.docs: Swagger UI from a local bundle
        redoc_url=None,
        # NOTE: TGI answers 404 for `/generate/`; Starlette's slash redirect would echo the client's Host
        # header in its Location.
        redirect_slashes=False,
        # NOTE: our own spans (tgi_async.telemetry) cover the routes; FastAPI's built-in telemetry would
        # duplicate them whenever an OpenTelemetry provider exists.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.config = config
    app.state.tokenizer = tokenizer
    app.state.validator = validator
    app.state.serving = Serving(config, scheduler, validator, tokenizer)
    app.state.info = build_info(config, extra_info)
    install_handlers(app)
    _add_routes(app, docs.router)
    _add_routes(app, info.router)
    _add_routes(app, generate.router)
    _add_routes(app, vertex.router)
    try:
        openai_compat = importlib.import_module(OPENAI_ROUTES)
    except ModuleNotFoundError as exc:
        if exc.name is None or not OPENAI_ROUTES.startswith(exc.name):
            raise
        log.info("OpenAI-compatible routes not available")
    else:
        _add_routes(app, openai_compat.router)
    _answer_head(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # add_middleware wraps: the last added runs first
    app.add_middleware(InvocationsDispatch)
    app.add_middleware(BodyLimit, limit=config.payload_limit)
    app.add_middleware(ReleaseMemoryAfterLargeBodies, threshold=LARGE_BODY_BYTES)
    app.add_middleware(ApiKey, api_key=config.api_key)
    app.add_middleware(Cors, allow_origins=config.cors_allow_origin)
    tracing.install(app)  # outermost: route spans (no-op unless tracing is on)
    return app


def metrics_app() -> ASGIApp:
    """An ASGI app answering every HTTP request with the metrics (TGI's --prometheus-port listener)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        response: Response = info.metrics_response()
        await response(scope, receive, send)

    return app


def print_schema() -> str:
    """The OpenAPI document, pretty-printed (`tgi-async router print-schema`)."""
    config = ApiConfig(model_id="", max_input_tokens=1024, max_total_tokens=2048)
    app = create_app(config, scheduler=None, tokenizer=None)  # type: ignore[arg-type]
    app.state.validator.close()
    return json.dumps(app.openapi(), indent=2)
