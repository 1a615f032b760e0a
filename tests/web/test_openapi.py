"""The OpenAPI document is complete: every status and content type a route can answer.

Fast checks on the document itself; tests/web/test_fuzz.py checks it against a served app.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI

from pgstack import NotFoundError, Settings
from pgstack.repository import MAX_OFFSET
from pgstack.web import Offset, create_app
from pgstack.web.modules import builtin_routers

from .conftest import served

PROBLEM = "application/problem+json"
METHODS = {"get", "put", "post", "patch", "delete"}


def app_with_modules(settings: Settings) -> FastAPI:
    extra = APIRouter(prefix="/things")

    @extra.get("/{thing_id}")
    async def get_thing(thing_id: int, offset: Offset = 0) -> dict[str, int]:
        raise NotFoundError(f"No thing {thing_id}.")

    return create_app(settings, monitor_interval=None, routers=[*builtin_routers(), extra])


@pytest.fixture
def spec(pgstack_settings: Settings) -> dict[str, Any]:
    return app_with_modules(pgstack_settings).openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_operation_documents_its_problem_responses(spec: dict[str, Any]) -> None:
    # proves: W3, W2
    probes = {"/health", "/ready", "/startup", "/metrics"}
    checked = 0
    for path, method, operation in operations(spec):
        if path in probes:
            continue
        responses = operation["responses"]
        for status in ("401", "403", "404", "409", "422", "500", "502", "503"):
            assert status in responses, (method, path, status)
            assert list(responses[status]["content"]) == [PROBLEM], (method, path, status)
        if "requestBody" in operation:
            assert PROBLEM in responses["400"]["content"]
        checked += 1
    assert checked >= 25  # identity's, the token vault's, and the app's own routes
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_probes_and_metrics_document_their_own_content_types(spec: dict[str, Any]) -> None:
    # proves: W3, C5, C7
    for path in ("/health", "/ready", "/startup"):
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert list(ok) == ["application/health+json"], path
    failed = spec["paths"]["/ready"]["get"]["responses"]["503"]["content"]
    assert set(failed) == {"application/health+json", PROBLEM}
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert {"text/plain; version=0.0.4", "application/openmetrics-text; version=1.0.0"} <= set(
        metrics
    )


def test_listing_offsets_are_bounded_in_the_schema(spec: dict[str, Any]) -> None:
    # proves: R3, W3
    offsets = [
        parameter["schema"]
        for _, _, operation in operations(spec)
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "offset"
    ]
    assert len(offsets) >= 2  # /admin/users and /things/{thing_id}
    assert all(o["maximum"] == MAX_OFFSET and o["minimum"] == 0 for o in offsets)


async def test_what_the_document_says_is_what_the_app_answers(pgstack_settings: Settings) -> None:
    # proves: W3, W2
    app = app_with_modules(pgstack_settings)
    async with served(app) as client:
        missing = await client.get("/things/7")
        assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
        huge = await client.get("/things/7", params={"offset": str(MAX_OFFSET + 1)})
        assert (huge.status_code, huge.headers["content-type"]) == (422, PROBLEM)
        garbled = await client.post(
            "/auth/login", content=b"\xff\xfe\x00", headers={"Content-Type": "application/json"}
        )
        assert (garbled.status_code, garbled.headers["content-type"]) == (400, PROBLEM)
        # A 405 names every method the path answers, as the document lists them.
        wrong = await client.put("/auth/api-keys")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, POST"
