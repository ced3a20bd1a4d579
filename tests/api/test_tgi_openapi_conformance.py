"""Schemathesis over TGI v3.3.7's openapi.json against a real router + bundled shard (tiny model), over HTTP.

Every operation TGI documents (and /vertex, see tgi_openapi.py) gets the document's examples, schemathesis'
coverage cases (boundary values, missing and wrong-typed fields) and a bounded number of fuzzed bodies, valid
and invalid. Each response must: not be a 5xx, have a documented status and content type, match the
documented schema (SSE events included, each event's JSON), and name no internal path or exception
(`no_internal_detail`). Bounded for CI: few examples per operation, a fixed seed, short generations
(the router's --max-total-tokens), a few minutes on 2 cores.
"""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import httpx
import pytest

from tests.api.tgi_openapi import tgi_openapi
from tests.conftest import SCHEDULERS

schemathesis = pytest.importorskip("schemathesis")  # NOTE: schemathesis needs Python >= 3.11

FUZZED_BODIES_PER_OPERATION = 8
SEED = 16
# short prompts and generations keep every case fast; longer prompts get the validator's 422
ROUTER_FLAGS = ("--max-input-tokens", "64", "--max-total-tokens", "96")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# what only our process could put in a body: a traceback, a source path, the shard's socket
LEAK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages", '.py", line', "unix:/")
ERROR_KEYS = ["error", "error_type"]


@pytest.fixture(scope="module")
def conformance_router(start_router, scheduler_name: str) -> str:
    if scheduler_name != SCHEDULERS[0]:
        # NOTE: the routes, bodies and errors under test are the HTTP layer's, the same over both schedulers
        # (whose HTTP behaviour the other tests compare); one run keeps CI within a few minutes.
        pytest.skip(f"run once, under the {SCHEDULERS[0]} scheduler")
    return start_router(*ROUTER_FLAGS)


@pytest.fixture(scope="module")
def served_model_id(conformance_router: str) -> str:
    return httpx.get(f"{conformance_router}/info", timeout=30).json()["model_id"]


@pytest.fixture(scope="module")
def cases_seen() -> Counter[str]:
    return Counter()


@pytest.fixture(scope="module")
def tgi_schema(conformance_router: str):
    config = schemathesis.Config.from_dict(
        {
            "base-url": conformance_router,
            "seed": SEED,
            "request-timeout": 60,
            "generation": {
                "mode": "all",
                "max-examples": FUZZED_BODIES_PER_OPERATION,
                "deterministic": True,
                "database": "none",
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )
    return schemathesis.openapi.from_dict(tgi_openapi(), config=config)


def no_internal_detail(model_id: str):
    """A check: no traceback, source path or socket in any body; error bodies in TGI's JSON shape."""

    def check(ctx, response, case) -> None:
        text = response.text.replace(model_id, "<model>")
        leaked = [marker for marker in LEAK_MARKERS if marker in text]
        assert not leaked, f"{case.operation.label} answered {leaked}: {text[:500]}"
        content_type = response.headers.get("content-type", [""])[0]
        if response.status_code >= 400 and content_type == "application/json":
            assert list(response.json()) == ERROR_KEYS, text[:500]

    return check


schema = schemathesis.pytest.from_fixture("tgi_schema")


@schema.parametrize()
def test_tgi_openapi_conformance(case, served_model_id, cases_seen):
    cases_seen[case.operation.label] += 1
    case.call_and_validate(additional_checks=[no_internal_detail(served_model_id)])


def test_every_documented_operation_was_exercised(tgi_schema, cases_seen):
    """Guards the run above against passing vacuously (an operation schemathesis could not generate for)."""
    operations = {result.ok().label for result in tgi_schema.get_all_operations()}
    assert len(operations) == 13
    assert set(cases_seen) == operations, operations - set(cases_seen)
    print(f"schemathesis cases per operation: {dict(cases_seen)}; total {sum(cases_seen.values())}")


@pytest.mark.parametrize(
    ("status", "body", "flagged"),
    [
        (424, b'{"error":"Request failed during generation: unix:/tmp/t/shard-0: connect failed"}', True),
        (500, b'{"error":"x","error_type":"y","trace":"Traceback (most recent call last):"}', True),
        (422, b'{"error":"Input validation error","error_type":"validation","detail":1}', True),
        (422, b'{"error":"Input validation error","error_type":"validation"}', False),
        (200, b'{"model_id":"/models/m"}', False),  # the served model's own path is no leak
    ],
)
def test_no_internal_detail_check(status, body, flagged):
    """The check above can fail: on a socket path, a traceback, an error body not in TGI's shape."""
    response = SimpleNamespace(
        status_code=status,
        text=body.decode(),
        headers={"content-type": ["application/json"]},
        json=lambda: json.loads(body),
    )
    case = SimpleNamespace(operation=SimpleNamespace(label="POST /generate"))
    check = no_internal_detail("/models/m")
    if flagged:
        with pytest.raises(AssertionError):
            check(None, response, case)
    else:
        check(None, response, case)
