"""Fixtures for the operations tests: a database of the test's own, and a superuser line to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.testing.plugin import settings_for


@pytest.fixture
async def admin(pgstack_empty_url: URL) -> AsyncIterator[asyncpg.Connection]:
    """A connection, as the test server's role, to this test's empty database."""
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_empty_url))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def service(pgstack_empty_url: URL) -> AsyncIterator[Database]:
    """The service's Database on this test's database (pool 5 + overflow 2, read lane 5)."""
    db = Database(settings_for(pgstack_empty_url))
    await db.connect()
    try:
        yield db
    finally:
        await db.disconnect(timeout=1)


Eventually = Callable[[asyncpg.Connection, str, str], Awaitable[Any]]


@pytest.fixture
def eventually() -> Eventually:
    """Poll a query on a connection until it returns something truthy.

    Statistics reach the shared views when a backend goes idle, so the connection first
    asks for its own counters to be flushed without the usual one-second wait.
    """
    return _eventually


async def _eventually(conn: asyncpg.Connection, sql: str, what: str, within: float = 20.0) -> Any:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    deadline = time.monotonic() + within
    while True:
        value = await conn.fetchval(sql)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests run only when asked for (`-m browser`): CI gives them their own step."""
    if "browser" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="a browser test: run with -m browser")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)
