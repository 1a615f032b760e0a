"""The FastAPI face: lifespan, probes, metrics, problem details, session dependencies."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import text

from pgstack import Database, NotFoundError, Settings
from pgstack.web import DatabaseDep, SessionDep, TransactionDep, create_app

from .conftest import served


@pytest.fixture
async def table(pgstack_db: Database) -> AsyncIterator[str]:
    name = f"items_{uuid.uuid4().hex[:8]}"
    async with pgstack_db.transaction() as s:
        await s.execute(text(f"CREATE TABLE {name} (id int PRIMARY KEY, label text)"))
    yield name
    async with pgstack_db.transaction() as s:
        await s.execute(text(f"DROP TABLE {name}"))


class Item(BaseModel):
    id: int
    label: str


def build_app(settings: Settings, table: str = "unused") -> FastAPI:
    app = create_app(settings, monitor_interval=None)

    @app.get("/items/{item_id}")
    async def get_item(item_id: int, session: SessionDep) -> Item:
        row = (
            await session.execute(
                text(f"SELECT id, label FROM {table} WHERE id = :i"), {"i": item_id}
            )
        ).first()
        if row is None:
            raise NotFoundError(f"No item {item_id}; list the items to find one.")
        return Item(id=row.id, label=row.label)

    @app.post("/items")
    async def add_item(item: Item, session: TransactionDep) -> Item:
        await session.execute(
            text(f"INSERT INTO {table} VALUES (:i, :l)"), {"i": item.id, "l": item.label}
        )
        if item.label == "boom":
            raise RuntimeError("secret-internal-detail")
        return item

    @app.get("/stream")
    async def stream(session: SessionDep, db: DatabaseDep) -> StreamingResponse:
        await session.execute(text("SELECT 1"))

        async def body() -> AsyncIterator[bytes]:
            # By now the request's session must be closed and its connection returned.
            yield str(db.pool_stats()["checked_out"]).encode()

        return StreamingResponse(body(), media_type="text/plain")

    return app


@pytest.fixture
async def client(pgstack_settings: Settings, table: str) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(pgstack_settings, table)
    async with served(app) as c:
        c.app = app  # type: ignore[attr-defined]
        yield c


async def test_liveness_answers_without_the_database(pgstack_settings: Settings) -> None:
    # proves: C5
    app = build_app(pgstack_settings)  # lifespan not run: no database connection at all
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/health")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/health+json")
        assert response.json()["status"] == "pass"
        ready = await c.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "fail"
        startup = await c.get("/startup")
        assert startup.status_code == 503


async def test_ready_and_startup_pass_once_started(client: httpx.AsyncClient) -> None:
    # proves: C5, W1
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert ready.headers["content-type"].startswith("application/health+json")
    assert body["status"] == "pass"
    rt = body["checks"]["postgres:responseTime"][0]
    assert rt["observedUnit"] == "ms" and rt["observedValue"] >= 0
    assert set(body["checks"]) >= {
        "postgres:responseTime",
        "postgres:poolSaturation",
        "postgres:queryPerformance",
    }
    assert (await client.get("/startup")).json()["status"] == "pass"


async def test_ready_warns_over_threshold_and_fails_when_disconnected(
    pgstack_settings: Settings,
) -> None:
    # proves: C5
    settings = pgstack_settings.model_copy(update={"health_latency_warn_ms": 0.0})
    db = Database(settings)
    await db.connect()
    app = create_app(database=db, monitor_interval=None)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        warn = await c.get("/ready")
        assert warn.status_code == 200
        assert warn.json()["status"] == "warn"
        await db.disconnect()
        fail = await c.get("/ready")
        assert fail.status_code == 503
        assert fail.json()["status"] == "fail"


async def test_lifespan_connects_and_disconnects(pgstack_settings: Settings) -> None:
    # proves: W1, D3
    app = build_app(pgstack_settings)
    db: Database = app.state.pgstack_db
    assert not db.is_connected
    async with app.router.lifespan_context(app):
        assert db.is_connected
    assert not db.is_connected


async def test_metrics_expose_pool_latency_errors_and_retries(client: httpx.AsyncClient) -> None:
    # proves: C7
    await client.get("/ready")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text_body = response.text
    for name in (
        'pgstack_pool_size{pool="primary"}',
        "pgstack_pool_checked_out",
        "pgstack_query_duration_seconds_count",
        "pgstack_health_status",
    ):
        assert name in text_body, name
    assert "# TYPE pgstack_transaction_retries_total counter" in text_body
    assert "# TYPE pgstack_query_errors_total counter" in text_body


async def test_errors_are_problem_details(client: httpx.AsyncClient, table: str) -> None:
    # proves: W1
    missing = await client.get("/items/42")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    body = missing.json()
    assert body["status"] == 404 and body["title"] == "Not found"
    assert body["detail"].startswith("No item 42")
    assert body["type"] == "urn:pgstack:error:not-found"
    assert body["instance"] == "/items/42"

    invalid = await client.get("/items/not-a-number")
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    assert invalid.json()["errors"][0]["loc"] == ["path", "item_id"]

    unknown = await client.get("/no-such-route")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"


async def test_unexpected_errors_hide_their_text(client: httpx.AsyncClient) -> None:
    # proves: W1
    response = await client.post("/items", json={"id": 7, "label": "boom"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "secret-internal-detail" not in response.text


async def test_transaction_dependency_commits_or_rolls_back(
    client: httpx.AsyncClient, pgstack_db: Database, table: str
) -> None:
    # proves: C3, W1
    created = await client.post("/items", json={"id": 1, "label": "kept"})
    assert created.status_code == 200
    assert (await client.get("/items/1")).json() == {"id": 1, "label": "kept"}
    failed = await client.post("/items", json={"id": 2, "label": "boom"})
    assert failed.status_code == 500
    async with pgstack_db.session() as s:
        ids = (await s.scalars(text(f"SELECT id FROM {table} ORDER BY id"))).all()
    assert ids == [1]


async def test_session_is_released_before_streaming(client: httpx.AsyncClient) -> None:
    # proves: D4
    response = await client.get("/stream")
    assert response.status_code == 200
    assert response.text == "0"


async def test_openapi_docs(client: httpx.AsyncClient) -> None:
    # proves: W1
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert {"/health", "/ready", "/startup", "/metrics"} <= set(spec["paths"])
