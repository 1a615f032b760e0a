"""Fault fixtures: a primary of the test's own (and a PgBouncer before it), and a small app.

Every test module here is marked `faults` (slow: servers are created, restarted, killed,
paused); run them with `pytest -m faults tests/faults`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.web import create_app
from pgstack.web.deps import SessionDep, TransactionDep

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_harness import PgBouncer, Primary


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, the servers run as another account, which must
    # reach the folder (and a Unix socket path must stay short).
    path = Path(tempfile.mkdtemp(prefix="pgstack-faults-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def primary(base: Path) -> Iterator[Primary]:
    server = Primary(base)
    server.create()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pgbouncer(base: Path, primary: Primary) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(base, primary.port, user=primary.system_user)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


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


@pytest.fixture(params=["direct", "pgbouncer"])
def route(request: pytest.FixtureRequest, primary: Primary) -> tuple[str, URL, dict[str, Any]]:
    """How the app reaches the primary: directly, or through PgBouncer in transaction mode."""
    if request.param == "direct":
        return "direct", primary.url, {}
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    return "pgbouncer", bouncer.url, {"database_pooler": "pgbouncer-transaction"}
