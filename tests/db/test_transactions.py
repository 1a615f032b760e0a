"""Transactions: commit and rollback, savepoints, read-only, isolation, retry on real conflicts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from pgstack.config import Settings
from pgstack.db.database import Database, Isolation
from pgstack.db.metrics import sqlstate_of
from pgstack.db.session import Session
from pgstack.errors import ConfigurationError, TransactionRetryError


@pytest.fixture
async def table(pgstack_db: Database) -> AsyncIterator[str]:
    """A scratch table `(id serial, label text, value int)` of this test only."""
    name = f"tx_{uuid.uuid4().hex[:10]}"
    async with pgstack_db.engine.begin() as conn:
        await conn.execute(
            text(f"CREATE TABLE {name} (id serial PRIMARY KEY, label text, value int)")
        )
    yield name
    async with pgstack_db.engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE {name}"))


async def labels(db: Database, table: str) -> list[str]:
    """The labels in `table`, read in a fresh session (what other requests see)."""
    async with db.session() as session:
        rows = await session.scalars(text(f"SELECT label FROM {table} ORDER BY id"))
        return list(rows)


def retries_counted(sqlstate: str) -> float:
    return (
        REGISTRY.get_sample_value("pgstack_transaction_retries_total", {"sqlstate": sqlstate})
        or 0.0
    )


async def test_commit_on_success(pgstack_db: Database, table: str) -> None:
    # proves: C3
    async with pgstack_db.transaction() as session:
        await session.execute(text(f"INSERT INTO {table} (label) VALUES ('kept')"))
        # Not visible to anyone else before the commit.
        assert await labels(pgstack_db, table) == []
    assert await labels(pgstack_db, table) == ["kept"]


async def test_rollback_on_error(pgstack_db: Database, table: str) -> None:
    # proves: C3
    boom = RuntimeError("boom")
    with pytest.raises(RuntimeError) as info:
        async with pgstack_db.transaction() as session:
            await session.execute(text(f"INSERT INTO {table} (label) VALUES ('lost')"))
            raise boom
    assert info.value is boom
    assert await labels(pgstack_db, table) == []


async def test_failed_statement_rolls_back_earlier_writes(pgstack_db: Database, table: str) -> None:
    # proves: C3
    with pytest.raises(sa_exc.IntegrityError):
        async with pgstack_db.transaction() as session:
            await session.execute(text(f"INSERT INTO {table} (id, label) VALUES (1, 'a')"))
            await session.execute(text(f"INSERT INTO {table} (id, label) VALUES (1, 'b')"))
    assert await labels(pgstack_db, table) == []


async def test_nested_savepoint_rolls_back_only_the_inner_part(
    pgstack_db: Database, table: str
) -> None:
    # proves: C3
    async with pgstack_db.transaction() as session:
        await session.execute(text(f"INSERT INTO {table} (label) VALUES ('outer-before')"))
        with pytest.raises(ValueError):
            async with session.begin_nested():
                await session.execute(text(f"INSERT INTO {table} (label) VALUES ('inner')"))
                raise ValueError("undo the inner part")
        async with session.begin_nested():
            await session.execute(text(f"INSERT INTO {table} (label) VALUES ('inner-kept')"))
        await session.execute(text(f"INSERT INTO {table} (label) VALUES ('outer-after')"))
    assert await labels(pgstack_db, table) == ["outer-before", "inner-kept", "outer-after"]


async def test_readonly_transaction_refuses_writes(pgstack_db: Database, table: str) -> None:
    # proves: C3
    async with pgstack_db.transaction(readonly=True) as session:
        assert await session.scalar(text(f"SELECT count(*) FROM {table}")) == 0
        assert await session.scalar(text("SHOW transaction_read_only")) == "on"
    with pytest.raises(sa_exc.DBAPIError) as info:
        async with pgstack_db.transaction(readonly=True) as session:
            await session.execute(text(f"INSERT INTO {table} (label) VALUES ('nope')"))
    assert sqlstate_of(info.value) == "25006"  # read_only_sql_transaction
    assert await labels(pgstack_db, table) == []


@pytest.mark.parametrize(
    ("isolation", "shown"),
    [
        (None, "read committed"),
        ("read_committed", "read committed"),
        ("repeatable_read", "repeatable read"),
        ("serializable", "serializable"),
    ],
)
async def test_isolation_level_applies(
    pgstack_db: Database, isolation: Isolation | None, shown: str
) -> None:
    # proves: C3
    async with pgstack_db.transaction(isolation=isolation) as session:
        assert await session.scalar(text("SELECT current_setting('transaction_isolation')")) == (
            shown
        )


async def test_unknown_isolation_is_a_clear_error(pgstack_db: Database) -> None:
    # proves: C3
    with pytest.raises(ConfigurationError, match="serializable"):
        async with pgstack_db.transaction(isolation=cast(Any, "chaos")):
            pass


async def test_readonly_and_isolation_do_not_stick_to_the_pooled_connection(
    pgstack_settings: Settings, table: str
) -> None:
    # proves: C3
    one_connection = pgstack_settings.model_copy(
        update={"database_pool_size": 1, "database_max_overflow": 0}
    )
    async with Database(one_connection) as db:
        async with db.transaction(readonly=True, isolation="serializable") as session:
            first_pid = await session.scalar(text("SELECT pg_backend_pid()"))
        async with db.transaction() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) == first_pid
            assert await session.scalar(text("SHOW transaction_isolation")) == "read committed"
            await session.execute(text(f"INSERT INTO {table} (label) VALUES ('writable')"))
        assert await labels(db, table) == ["writable"]


async def test_run_in_transaction_commits_and_returns(pgstack_db: Database, table: str) -> None:
    # proves: C3
    async def create(session: Session) -> int:
        return int(
            await session.scalar(text(f"INSERT INTO {table} (label) VALUES ('made') RETURNING id"))
        )

    new_id = await pgstack_db.run_in_transaction(create)
    assert new_id > 0
    assert await labels(pgstack_db, table) == ["made"]


async def write_skew(
    db: Database, table: str, retries: int
) -> tuple[list[int | BaseException], list[str]]:
    """Two serializable transactions that each read the table's sum, then insert sum + 1.

    Both read before either writes, so serially they cannot both commit as read: one of them
    gets a serialization failure (40001). Returns each caller's result and every attempt made.
    """
    has_read = {"a": asyncio.Event(), "b": asyncio.Event()}
    attempts: list[str] = []

    def job(me: str, other: str) -> Callable[[Session], Awaitable[int]]:
        async def fn(session: Session) -> int:
            attempts.append(me)
            total = int(await session.scalar(text(f"SELECT coalesce(sum(value), 0) FROM {table}")))
            has_read[me].set()
            await has_read[other].wait()
            await session.execute(
                text(f"INSERT INTO {table} (label, value) VALUES (:label, :value)"),
                {"label": me, "value": total + 1},
            )
            return total + 1

        return fn

    results = await asyncio.wait_for(
        asyncio.gather(
            db.run_in_transaction(job("a", "b"), isolation="serializable", retries=retries),
            db.run_in_transaction(job("b", "a"), isolation="serializable", retries=retries),
            return_exceptions=True,
        ),
        timeout=15,
    )
    return list(results), attempts


async def test_run_in_transaction_retries_a_real_serialization_failure(
    pgstack_db: Database, table: str
) -> None:
    # proves: C3, C7
    counted_before = retries_counted("40001")
    results, attempts = await write_skew(pgstack_db, table, retries=3)
    committed = sorted(r for r in results if isinstance(r, int))
    # Both committed, and the re-run saw the other's row: the values are 1 and 2, never 1 and 1.
    assert committed == [1, 2], results
    async with pgstack_db.session() as session:
        values = list(await session.scalars(text(f"SELECT value FROM {table} ORDER BY value")))
    assert values == [1, 2]
    assert len(attempts) == 3
    assert retries_counted("40001") >= counted_before + 1


async def test_run_in_transaction_retries_a_real_deadlock(pgstack_db: Database, table: str) -> None:
    # proves: C3
    async with pgstack_db.transaction() as session:
        await session.execute(text(f"INSERT INTO {table} (id, value) VALUES (1, 0), (2, 0)"))
    locked = {"a": asyncio.Event(), "b": asyncio.Event()}
    attempts: list[str] = []

    def job(me: str, first: int, second: int, other: str) -> Callable[[Session], Awaitable[None]]:
        async def fn(session: Session) -> None:
            attempts.append(me)
            update = text(f"UPDATE {table} SET value = value + 1 WHERE id = :id")
            await session.execute(update, {"id": first})
            locked[me].set()
            await locked[other].wait()
            await session.execute(update, {"id": second})

        return fn

    counted_before = retries_counted("40P01")
    # PostgreSQL looks for deadlocks after deadlock_timeout (1 s by default).
    results = await asyncio.wait_for(
        asyncio.gather(
            pgstack_db.run_in_transaction(job("a", 1, 2, "b"), isolation="read_committed"),
            pgstack_db.run_in_transaction(job("b", 2, 1, "a"), isolation="read_committed"),
            return_exceptions=True,
        ),
        timeout=20,
    )
    assert list(results) == [None, None]
    assert len(attempts) == 3
    assert retries_counted("40P01") >= counted_before + 1
    async with pgstack_db.session() as session:
        values = list(await session.scalars(text(f"SELECT value FROM {table} ORDER BY id")))
    assert values == [2, 2]  # every update applied exactly once per committed transaction


async def test_retries_exhausted_raise_transaction_retry_error(
    pgstack_db: Database, table: str
) -> None:
    # proves: C3
    results, attempts = await write_skew(pgstack_db, table, retries=0)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1, results
    error = errors[0]
    assert isinstance(error, TransactionRetryError)
    assert "40001" in str(error)
    assert sqlstate_of(error.__cause__) == "40001"
    assert len(attempts) == 2  # nobody re-ran
    async with pgstack_db.session() as session:
        assert await session.scalar(text(f"SELECT count(*) FROM {table}")) == 1


async def test_non_retryable_errors_propagate_unchanged(pgstack_db: Database, table: str) -> None:
    # proves: C3
    calls = 0
    counted_before = retries_counted("22012")

    async def divide(session: Session) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text(f"INSERT INTO {table} (label) VALUES ('partial')"))
        await session.execute(text("SELECT 1 / 0"))

    with pytest.raises(sa_exc.DBAPIError) as info:
        await pgstack_db.run_in_transaction(divide)
    assert sqlstate_of(info.value) == "22012"
    assert calls == 1
    assert retries_counted("22012") == counted_before
    assert await labels(pgstack_db, table) == []

    mistake = KeyError("not a database error")

    async def broken(session: Session) -> None:
        nonlocal calls
        calls += 1
        raise mistake

    calls = 0
    with pytest.raises(KeyError) as key_info:
        await pgstack_db.run_in_transaction(broken)
    assert key_info.value is mistake
    assert calls == 1
