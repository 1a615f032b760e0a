"""`Database`: connect with retry, pool statistics and limits, server settings, shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.db.metrics import sqlstate_of
from pgstack.db.session import Session
from pgstack.errors import (
    ConcurrentSessionUseError,
    DatabaseUnavailableError,
    PoolExhaustedError,
    StatementTimeoutError,
)
from pgstack.testing.plugin import asyncpg_dsn

POOL_STAT_KEYS = {"size", "checked_in", "checked_out", "overflow", "max_overflow", "total"}


def closed_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "pgstack.db"
        and r.levelno == logging.WARNING
        and r.getMessage().startswith("cannot connect")
    ]


def logged_delay(record: logging.LogRecord) -> float:
    """The wait before the next attempt, as a retry warning states it."""
    assert isinstance(record.args, tuple)
    delay = record.args[-1]
    assert isinstance(delay, float)
    return delay


async def hold_sessions(stack: AsyncExitStack, db: Database, n: int) -> list[Session]:
    """Open `n` sessions that each hold a connection (a query ran in each)."""
    sessions = []
    for _ in range(n):
        session = await stack.enter_async_context(db.session())
        await session.execute(text("SELECT 1"))
        sessions.append(session)
    return sessions


async def test_connect_session_disconnect(pgstack_settings: Settings) -> None:
    # proves: C2
    db = Database(pgstack_settings)
    assert not db.is_connected
    with pytest.raises(DatabaseUnavailableError, match="connect"):
        async with db.session():
            pass
    await db.connect()
    try:
        assert db.is_connected
        assert "connected=True" in repr(db)
        async with db.session() as session:
            assert await session.scalar(text("SELECT 40 + 2")) == 42
    finally:
        await db.disconnect()
    assert not db.is_connected
    with pytest.raises(DatabaseUnavailableError):
        async with db.session():
            pass
    # The same object connects again, and works as an async context manager.
    async with db:
        assert db.is_connected
        async with db.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
    assert not db.is_connected


async def test_connect_retries_then_names_host_port_and_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # proves: C2
    port = closed_port()
    settings = Settings(
        database_url=f"postgresql://app@127.0.0.1:{port}/orders_db",
        database_connect_attempts=3,
        database_connect_backoff=0.01,
        _env_file=None,
    )
    db = Database(settings)
    caplog.set_level(logging.WARNING, logger="pgstack.db")
    with pytest.raises(DatabaseUnavailableError) as info:
        async with asyncio.timeout(10):
            await db.connect()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "orders_db" in message
    assert "after 3 attempt(s)" in message
    warnings = retry_warnings(caplog)
    assert len(warnings) == 2
    assert "attempt 1 of 3" in warnings[0].getMessage()
    assert "attempt 2 of 3" in warnings[1].getMessage()
    # Waits grow from DATABASE_CONNECT_BACKOFF (with jitter of the same order), not by seconds.
    delays = [logged_delay(w) for w in warnings]
    assert 0.01 <= delays[0] <= 0.02
    assert 0.02 <= delays[1] <= 0.03
    assert not db.is_connected


async def test_connect_retry_waits_stop_at_backoff_max(caplog: pytest.LogCaptureFixture) -> None:
    # proves: C2
    settings = Settings(
        database_url=f"postgresql://app@127.0.0.1:{closed_port()}/app",
        database_connect_attempts=4,
        database_connect_backoff=0.05,
        database_connect_backoff_max=0.06,
        _env_file=None,
    )
    caplog.set_level(logging.WARNING, logger="pgstack.db")
    with pytest.raises(DatabaseUnavailableError):
        await Database(settings).connect()
    delays = [logged_delay(w) for w in retry_warnings(caplog)]
    assert len(delays) == 3
    assert all(d <= 0.06 for d in delays)
    assert delays[-1] == pytest.approx(0.06)


async def test_missing_database_fails_fast_without_retries(
    pgstack_server_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    # proves: C2
    missing = f"no_such_db_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database_url=pgstack_server_url.set(database=missing).render_as_string(hide_password=False),
        database_connect_attempts=5,
        database_connect_backoff=1.0,
        _env_file=None,
    )
    caplog.set_level(logging.WARNING, logger="pgstack.db")
    with pytest.raises(DatabaseUnavailableError) as info:
        async with asyncio.timeout(5):
            await Database(settings).connect()
    message = str(info.value)
    assert repr(missing) in message
    assert "does not exist" in message
    assert "attempt" not in message
    assert retry_warnings(caplog) == []


async def test_pool_stats_follow_checked_out_connections(pgstack_db: Database) -> None:
    # proves: C2
    stats = pgstack_db.pool_stats()
    assert set(stats) == POOL_STAT_KEYS
    assert (stats["size"], stats["max_overflow"], stats["checked_out"]) == (5, 2, 0)

    async with AsyncExitStack() as stack:
        await hold_sessions(stack, pgstack_db, 3)
        stats = pgstack_db.pool_stats()
        assert stats["checked_out"] == 3
        assert stats["overflow"] == 0
        assert stats["total"] == stats["checked_in"] + stats["checked_out"]

        await hold_sessions(stack, pgstack_db, 3)  # 6 in all: one beyond the pool size
        stats = pgstack_db.pool_stats()
        assert stats["checked_out"] == 6
        assert stats["overflow"] == 1

    stats = pgstack_db.pool_stats()
    assert stats["checked_out"] == 0
    assert stats["checked_in"] >= 5
    assert stats["total"] == stats["checked_in"]


async def test_pool_exhaustion_raises_pgstack_error(pgstack_settings: Settings) -> None:
    # proves: C2
    settings = pgstack_settings.model_copy(
        update={
            "database_pool_size": 1,
            "database_max_overflow": 0,
            "database_pool_timeout": 0.5,
        }
    )
    async with Database(settings) as db:
        async with db.session() as holder:
            await holder.execute(text("SELECT 1"))
            async with db.session() as second:
                with pytest.raises(PoolExhaustedError, match="DATABASE_POOL_SIZE"):
                    async with asyncio.timeout(3):
                        await second.execute(text("SELECT 1"))
            with pytest.raises(PoolExhaustedError):
                async with asyncio.timeout(3), db.transaction() as tx:
                    await tx.execute(text("SELECT 1"))
        # Once the holder is done, the pool serves again.
        async with db.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
        assert db.pool_stats()["checked_out"] == 0


async def test_statement_timeout_and_application_name(pgstack_settings: Settings) -> None:
    # proves: C2
    settings = pgstack_settings.model_copy(update={"database_statement_timeout_ms": 100})
    async with Database(settings) as db, db.session() as session:
        assert await session.scalar(text("SELECT current_setting('application_name')")) == (
            "pgstack"
        )
        assert await session.scalar(text("SHOW statement_timeout")) == "100ms"
        with pytest.raises(StatementTimeoutError, match="statement timeout") as info:
            await session.execute(text("SELECT pg_sleep(1)"))
        assert sqlstate_of(info.value) == "57014"  # query_canceled by statement_timeout


async def test_no_statement_timeout_by_default(pgstack_db: Database) -> None:
    # proves: C2
    async with pgstack_db.session() as session:
        assert await session.scalar(text("SHOW statement_timeout")) == "0"


async def test_disconnect_lets_running_work_finish(pgstack_settings: Settings) -> None:
    # proves: C2
    db = Database(pgstack_settings)
    await db.connect()
    started = asyncio.Event()
    finished: list[int] = []

    async def work() -> None:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
            started.set()
            await asyncio.sleep(0.3)
            finished.append(await session.scalar(text("SELECT 2")))

    task = asyncio.create_task(work())
    await started.wait()
    assert db.pool_stats()["checked_out"] == 1
    await db.disconnect(timeout=5)
    assert finished == [2]
    await task  # no error: the connection was not pulled from under it
    assert not db.is_connected


async def test_disconnect_does_not_hang_on_a_stuck_session(
    pgstack_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # proves: C2
    db = Database(pgstack_settings)
    await db.connect()
    caplog.set_level(logging.WARNING, logger="pgstack.db")
    session = db.session()
    s = await session.__aenter__()
    await s.execute(text("SELECT 1"))
    try:
        async with asyncio.timeout(3):
            await db.disconnect(timeout=0.2)
        assert not db.is_connected
        assert any("still checked out" in r.getMessage() for r in caplog.records)
    finally:
        await session.__aexit__(None, None, None)


@pytest.mark.not_through_pooler("PgBouncer keeps its server connections open: that is its job")
async def test_disconnect_closes_server_connections(
    pgstack_settings: Settings, pgstack_database_url: URL
) -> None:
    # proves: D3
    db = Database(pgstack_settings)
    await db.connect()
    async with AsyncExitStack() as stack:
        pids = [
            int(await session.scalar(text("SELECT pg_backend_pid()")))
            for session in await hold_sessions(stack, db, 3)
        ]
    admin = await asyncpg.connect(asyncpg_dsn(pgstack_database_url))
    alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = any($1::int[])"
    try:
        # Returned to the pool, the connections stay open on the server...
        assert await admin.fetchval(alive, pids) == 3
        await db.disconnect()
        # ...until the pool is disposed.
        deadline = time.monotonic() + 5
        while await admin.fetchval(alive, pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await admin.fetchval(alive, pids) == 0
    finally:
        await admin.close()


async def test_one_session_used_by_two_tasks_raises_pgstack_error(pgstack_db: Database) -> None:
    # proves: D2
    async with pgstack_db.session() as session:
        results = await asyncio.gather(
            session.execute(text("SELECT pg_sleep(0.2)")),
            session.execute(text("SELECT pg_sleep(0.2)")),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], ConcurrentSessionUseError)
        assert "session per task" in str(errors[0])

        # One after another is fine, also from different tasks.
        assert await session.scalar(text("SELECT 1")) == 1
        assert await session.scalar(text("SELECT 2")) == 2
        assert await asyncio.create_task(session.scalar(text("SELECT 3"))) == 3


async def test_separate_sessions_run_concurrently(pgstack_db: Database) -> None:
    # proves: C2
    async def one(n: int) -> int:
        async with pgstack_db.session() as session:
            await session.execute(text("SELECT pg_sleep(0.05)"))
            return int(await session.scalar(text(f"SELECT {n}")))

    assert await asyncio.gather(*(one(n) for n in range(4))) == [0, 1, 2, 3]


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_query_latency_and_errors_are_counted(pgstack_db: Database) -> None:
    # proves: C7
    before = sample("pgstack_query_duration_seconds_count")
    errors_before = sample("pgstack_query_errors_total", {"code": "22012"})
    async with pgstack_db.session() as session:
        for n in range(3):
            await session.execute(text(f"SELECT {n}"))
    assert sample("pgstack_query_duration_seconds_count") >= before + 3

    async with pgstack_db.session() as session:
        with pytest.raises(sa_exc.DBAPIError):
            await session.execute(text("SELECT 1 / 0"))
    assert sample("pgstack_query_errors_total", {"code": "22012"}) == errors_before + 1


async def test_pool_gauges_are_exported(pgstack_settings: Settings) -> None:
    # proves: C7
    name = f"metrics-{uuid.uuid4().hex[:6]}"
    async with Database(pgstack_settings, name=name) as db:
        labels = {"pool": name}
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
            assert sample("pgstack_pool_checked_out", labels) == 1
            assert sample("pgstack_pool_size", labels) == 5
            assert sample("pgstack_pool_max_overflow", labels) == 2
        assert sample("pgstack_pool_checked_out", labels) == 0
    # A disconnected database is no longer reported.
    assert REGISTRY.get_sample_value("pgstack_pool_size", {"pool": name}) is None


async def _kill_pooled_connection(db: Database, admin: Database) -> None:
    async with db.session() as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
    async with admin.session() as other:
        assert await other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    await asyncio.sleep(0.05)


@pytest.fixture
async def one_connection_db(pgstack_settings: Settings) -> AsyncIterator[Database]:
    db = Database(
        pgstack_settings.model_copy(update={"database_pool_size": 1, "database_max_overflow": 0})
    )
    await db.connect()
    yield db
    await db.disconnect()


@pytest.mark.not_through_pooler(
    "it ends its own backend by pid, which a transaction pooler reassigns"
)
async def test_pre_ping_replaces_a_connection_that_died_while_idle(
    pgstack_db: Database, one_connection_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: C1, R6
    from pgstack.db import database

    monkeypatch.setattr(database, "_PING_SKIP_WINDOW_S", 0.0)
    await _kill_pooled_connection(one_connection_db, pgstack_db)
    async with one_connection_db.transaction() as session:
        assert await session.scalar(text("SELECT 1")) == 1


@pytest.mark.not_through_pooler(
    "it ends its own backend by pid, which a transaction pooler reassigns"
)
async def test_a_connection_given_back_a_moment_ago_is_not_pinged(
    pgstack_db: Database, one_connection_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: C1, R6
    from pgstack.db import database

    # Killed within the skip window (made wide, so a slow machine stays inside it): the first
    # statement meets the dead connection and says so clearly; the next gets a new one.
    monkeypatch.setattr(database, "_PING_SKIP_WINDOW_S", 60.0)
    await _kill_pooled_connection(one_connection_db, pgstack_db)
    with pytest.raises(DatabaseUnavailableError, match="lost"):
        async with one_connection_db.transaction() as session:
            await session.scalar(text("SELECT 1"))
    async with one_connection_db.transaction() as session:
        assert await session.scalar(text("SELECT 1")) == 1
