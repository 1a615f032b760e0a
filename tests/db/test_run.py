"""`Database.run`: one statement by itself, committed at once, on the read lane or the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Numeric, String, Table, bindparam, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import DatabaseUnavailableError
from pgstack.testing import record_statements

metadata = MetaData()
counters = Table(
    "run_counters",
    metadata,
    Column("key", String(20), primary_key=True),
    Column("n", Integer, nullable=False),
    Column("amount", Numeric(10, 2)),
    Column("doc", JSONB),
)

TICK = (
    pg_insert(counters)
    .values(key=bindparam("key"), n=1, amount=bindparam("amount"), doc=bindparam("doc"))
    .on_conflict_do_update(index_elements=["key"], set_={"n": counters.c.n + 1})
    .returning(counters.c.n, counters.c.amount, counters.c.doc)
)


@pytest.fixture(params=["lane", "engine"])
async def db(request: pytest.FixtureRequest, pgstack_settings: Settings) -> AsyncIterator[Database]:
    """A Database with its read lane (statements run there) and one without (the engine)."""
    size = None if request.param == "lane" else 0
    database = Database(pgstack_settings.model_copy(update={"database_read_pool_size": size}))
    await database.connect()
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield database
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await database.disconnect()


def tick(key: str) -> dict[str, Any]:
    return {"key": key, "amount": Decimal("1.50"), "doc": {"tags": ["a"]}}


async def test_a_counter_counts_every_call_once_and_commits_at_once(db: Database) -> None:
    # proves: C2
    results = await asyncio.gather(*(db.run(TICK, tick("hits")) for _ in range(40)))
    assert sorted(rows[0][0] for rows in results) == list(range(1, 41))
    # Values come back as their Python types.
    assert results[0][0][1:] == (Decimal("1.50"), {"tags": ["a"]})
    async with db.session() as session:
        assert await session.scalar(select(counters.c.n).where(counters.c.key == "hits")) == 40


async def test_a_statement_without_rows_returns_none_and_one_with_returns_them(
    db: Database,
) -> None:
    # proves: C2
    assert await db.run(counters.insert().values(key="a", n=5)) == []
    assert await db.run(select(counters.c.key, counters.c.n)) == [("a", 5)]
    assert await db.run(text("SELECT CAST(:x AS int) + 1"), {"x": 41}) == [(42,)]


async def test_a_refused_statement_raises_the_engine_error_and_changes_nothing(
    db: Database,
) -> None:
    # proves: C2, R6
    await db.run(counters.insert().values(key="a", n=1))
    with record_statements(db) as log, pytest.raises(sa_exc.IntegrityError, match="pkey"):
        await db.run(counters.insert().values(key="a", n=2))
    assert len(log) == 1  # sent once: a refused statement is never sent again
    assert await db.run(select(counters.c.n)) == [(1,)]


async def test_a_statement_that_would_pass_a_second_time_fails_once(db: Database) -> None:
    # proves: C2, R6
    await db.run(text("CREATE SEQUENCE run_tries"))
    with pytest.raises(sa_exc.DBAPIError, match="division by zero"):
        await db.run(text("SELECT 1 / (nextval('run_tries') - 1)"))
    assert await db.run(text("SELECT last_value FROM run_tries")) == [(1,)]
    await db.run(text("DROP SEQUENCE run_tries"))


async def test_a_connection_lost_mid_statement_is_one_clear_error(db: Database) -> None:
    # proves: R6
    with pytest.raises(DatabaseUnavailableError, match="lost"):
        await db.run(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    assert await db.run(text("SELECT 1")) == [(1,)]  # a new connection serves the next one


async def test_statements_reach_query_listeners(db: Database) -> None:
    # proves: O4, C7
    with record_statements(db) as log:
        await db.run(TICK, tick("k"))
    assert len(log) == 1 and log[0].startswith("INSERT INTO run_counters")


async def test_python_side_column_defaults_apply(db: Database) -> None:
    # proves: C2
    stamped = Table(
        "run_stamped",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("label", String(20), default=lambda: "from-python"),
        Column("n", Integer, default=7, onupdate=lambda: 8),
    )
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(stamped.create)
        assert await db.run(stamped.insert().values(id=1).returning(stamped.c.label)) == [
            ("from-python",)
        ]
        await db.run(stamped.update().where(stamped.c.id == 1).values(label="x"))
        assert await db.run(select(stamped.c.label, stamped.c.n)) == [("x", 8)]
    finally:
        async with db.engine.begin() as conn:
            await conn.run_sync(stamped.drop)
        metadata.remove(stamped)


@pytest.mark.not_through_pooler(
    "session state is not kept behind a transaction pooler, and is not reset there"
)
async def test_session_state_a_statement_leaves_does_not_reach_the_next_one(db: Database) -> None:
    # proves: C2, R6
    # Settings, advisory locks and open transactions are reset before the connection
    # serves anyone else, as asyncpg's own pool does.
    await db.run(text("SELECT set_config('application_name', 'leaked', false)"))
    await db.run(text("SELECT pg_advisory_lock(4242)"))
    await db.run(text("BEGIN"))
    assert await db.run(text("SELECT current_setting('application_name')")) == [("pgstack",)]
    assert await db.run(text("SELECT pg_try_advisory_lock(4242)")) == [(True,)]
    await db.run(text("SELECT pg_advisory_unlock_all()"))
    await db.run(counters.insert().values(key="after", n=1))
    async with db.session() as session:  # committed, not left in an open transaction
        assert await session.scalar(select(counters.c.n).where(counters.c.key == "after")) == 1
