"""Errors as TGI's router sends them: `{"error", "error_type"}` with its status codes and message prefixes.

`InferError.message` is the bare reason (e.g. "`top_p` must be > 0.0 and < 1.0"); the error's type adds
TGI's prefix ("Input validation error: ..."). The exception handlers registered by `install_handlers` make
sure no request ever gets a stack trace: unknown routes and methods get TGI's empty 404/405, request
bodies that do not parse get axum's plain-text rejections (see body.py), anything unexpected a 500. What a
client does (a bad body, leaving before its body arrived) is never logged with a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from tgi_async.api.body import BodyRejection, rejection_from_errors
from tgi_async.api.protocol import ErrorResponse, to_json
from tgi_async.scheduler.request import InferError

log = logging.getLogger(__name__)

STATUS_BY_TYPE = {
    "validation": 422,
    "generation": 424,
    "overloaded": 429,
    "incomplete_generation": 500,
    "incomplete_generation_stream": 500,
    "template_error": 422,
    "missing_template_variable": 422,
    "tool_error": 422,
    "stream_serialization_error": 500,
}
_PREFIX_BY_TYPE = {
    "validation": "Input validation error: ",
    "generation": "Request failed during generation: ",
    "template_error": "Template error: ",
    "missing_template_variable": "Missing template vatiable: ",  # NOTE: TGI's spelling, kept on purpose
    "tool_error": "Tool error: ",
}
_FIXED_MESSAGE_BY_TYPE = {
    "overloaded": "Model is overloaded",
    "incomplete_generation": "Incomplete generation",
    "incomplete_generation_stream": "Incomplete generation stream",
    "stream_serialization_error": "Stream event serialization error",
}

JSON_HEADERS = {"content-type": "application/json"}
CLIENT_CLOSED_REQUEST = 499  # never seen by the client: it is gone


def error_message(error: InferError) -> str:
    """The `error` string TGI would send for this error."""
    fixed = _FIXED_MESSAGE_BY_TYPE.get(error.error_type)
    if fixed is not None:
        return fixed
    prefix = _PREFIX_BY_TYPE.get(error.error_type, "")
    return error.message if error.message.startswith(prefix) else prefix + error.message


def error_body(error: InferError) -> ErrorResponse:
    return ErrorResponse(error=error_message(error), error_type=error.error_type)


def error_status(error: InferError) -> int:
    return STATUS_BY_TYPE.get(error.error_type, 500)


def error_response(error: InferError) -> Response:
    """`(status, Json(ErrorResponse))` as TGI's handlers return it."""
    return Response(to_json(error_body(error)), status_code=error_status(error), headers=JSON_HEADERS)


def validation_error(message: str) -> InferError:
    return InferError(message, "validation")


def plain_text(status: int, text: str) -> Response:
    return Response(text, status_code=status, media_type="text/plain; charset=utf-8")


async def _on_infer_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferError)
    return error_response(exc)


async def _on_body_rejection(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyRejection)
    return plain_text(exc.status, exc.text)


async def _on_request_validation(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    rejection = rejection_from_errors(list(exc.errors()))
    return plain_text(rejection.status, rejection.text)


async def _on_http_exception(_request: Request, exc: Exception) -> Response:
    # NOTE: axum answers unknown paths (404) and wrong methods (405) with an empty body.
    assert isinstance(exc, StarletteHTTPException)
    return Response(b"", status_code=exc.status_code, headers=exc.headers)


async def _on_client_disconnect(request: Request, exc: Exception) -> Response:
    # NOTE: a client leaving mid-body is its business, not an error of ours: one debug line, no traceback
    # (a client that does this in a loop would otherwise fill the disk with two tracebacks per request).
    assert isinstance(exc, ClientDisconnect)
    client = request.client
    log.debug("client left before its request body arrived", extra={"client": client and client.host})
    return Response(b"", status_code=CLIENT_CLOSED_REQUEST)


async def _on_unexpected(_request: Request, exc: Exception) -> Response:
    log.exception("unhandled error in request", exc_info=exc)
    body = ErrorResponse(error="Internal server error", error_type="internal")
    return Response(to_json(body), status_code=500, headers=JSON_HEADERS)


def install_handlers(app: FastAPI) -> None:
    """Register the handlers above on `app`."""
    app.add_exception_handler(InferError, _on_infer_error)
    app.add_exception_handler(BodyRejection, _on_body_rejection)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(Exception, _on_unexpected)
