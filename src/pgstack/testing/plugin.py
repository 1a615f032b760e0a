"""Fixtures: a PostgreSQL server (env or embedded), a scratch database, settings, a Database.

`PGSTACK_TEST_DATABASE_URL` names a server to use (its role must be allowed to create
databases); without it, one embedded server with durability off serves the whole run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL

from pgstack.config import Settings, to_asyncpg_url
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.db.embedded import EmbeddedPostgres

ENV_URL = "PGSTACK_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def pgstack_server_url() -> Iterator[URL]:
    """URL of a server the tests may create databases on."""
    raw = os.environ.get(ENV_URL)
    if raw:
        yield to_asyncpg_url(raw, ENV_URL)
        return
    data_dir = Path(os.environ.get("PGSTACK_TEST_DATA_DIR", ".pgstack/test-pgdata"))
    server = EmbeddedPostgres(data_dir, durable=False)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def pgstack_database_url(pgstack_server_url: URL) -> AsyncIterator[URL]:
    """A fresh database for this test run, dropped at the end."""
    name = f"pgstack_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(asyncpg_dsn(pgstack_server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield pgstack_server_url.set(database=name)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(pgstack_server_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def pgstack_settings(pgstack_database_url: URL) -> Settings:
    """Settings pointing at the test database, with a small pool and quick retries."""
    return Settings(
        database_url=pgstack_database_url.render_as_string(hide_password=False),
        database_pool_size=5,
        database_max_overflow=2,
        database_pool_timeout=5,
        database_connect_attempts=2,
        database_connect_backoff=0.05,
        environment="test",
        _env_file=None,
    )


@pytest.fixture
async def pgstack_db(pgstack_settings: Settings) -> AsyncIterator[Database]:
    """A connected Database; the test fails if it leaves a connection checked out."""
    db = Database(pgstack_settings)
    await db.connect()
    try:
        yield db
        leaked = db.pool_stats()["checked_out"] if db.is_connected else 0
        assert leaked == 0, f"{leaked} connection(s) still checked out at the end of the test"
    finally:
        await db.disconnect(timeout=1)
