"""The app the fault tests drive: pgstack's `create_app` with a write, a count and a sleep."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.web import create_app
from pgstack.web.deps import SessionDep, TransactionDep

ROWS = "CREATE TABLE acked (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"


async def create_rows_table(url: URL) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(ROWS)
    finally:
        await conn.close()


async def stored_ids(url: URL) -> set[int]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {row["id"] for row in await conn.fetch("SELECT id FROM acked")}
    finally:
        await conn.close()


router = APIRouter()


@router.post("/rows/{row_id}", status_code=201)
async def write_row(row_id: int, session: TransactionDep) -> dict[str, int]:
    await session.execute(text("INSERT INTO acked (id) VALUES (:id)"), {"id": row_id})
    return {"id": row_id}


@router.get("/rows/count")
async def count_rows(session: SessionDep) -> dict[str, int]:
    count = await session.scalar(text("SELECT count(*) FROM acked"))
    return {"count": int(count or 0)}


@router.get("/sleep")
async def sleep(seconds: float, session: SessionDep) -> dict[str, Any]:
    await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return {"slept": seconds}


def settings(url: URL, **values: Any) -> Settings:
    """Settings for a fault test: pooler mode when `url` is PgBouncer's, quick retries."""
    base: dict[str, Any] = {
        "database_url": url.render_as_string(hide_password=False),
        "database_pool_size": 5,
        "database_max_overflow": 0,
        "database_pool_timeout": 2,
        "database_connect_timeout": 2,
        "database_connect_attempts": 1,
        "environment": "test",
        "_env_file": None,
    }
    return Settings(**{**base, **values})


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with the fault routes on `settings`, lifespan run, a 500 an answer not a raise."""
    app: FastAPI = create_app(settings, monitor_interval=None, routers=[router])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client,
        app.router.lifespan_context(app),
    ):
        yield client
