"""A dropped connection during repository work.

Reads that open their transaction are retried once; anything else surfaces as
DatabaseUnavailableError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.orm import DeclarativeBase, Mapped

from pgstack import Repository
from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.db.session import Session
from pgstack.errors import DatabaseUnavailableError
from pgstack.orm import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, BigIntPrimaryKey, ModelMixin

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class RetryBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Thing(BigIntPrimaryKey, RetryBase):
    __tablename__ = "retry_things"
    name: Mapped[str]


@pytest.fixture
async def fragile_db(
    pgstack_settings: Settings, create_tables: CreateTables
) -> AsyncIterator[Database]:
    """One pooled connection and no pre-ping, so a killed connection is handed out again.

    The read lane is off: every read here runs on the session's pooled connection (the
    lane's own retry is tested in tests/db/test_lane.py).
    """
    await create_tables(RetryBase.metadata)
    db = Database(
        pgstack_settings.model_copy(
            update={
                "database_pool_size": 1,
                "database_max_overflow": 0,
                "database_pool_pre_ping": False,
                "database_read_pool_size": 0,
            }
        )
    )
    await db.connect()
    async with db.transaction() as session:
        await Repository(session, Thing).create(name="one")
    yield db
    await db.disconnect()


async def kill_backend(admin: Database, session: Session) -> None:
    """Terminate the server process behind the session's pooled connection."""
    pid = await session.scalar(text("SELECT pg_backend_pid()"))
    await session.commit()  # the session holds no transaction now
    async with admin.session() as other:
        killed = await other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert killed


@pytest.mark.not_through_pooler(
    "it ends its own backend by pid, which a transaction pooler reassigns"
)
async def test_a_read_after_a_dropped_connection_is_retried_once(
    pgstack_db: Database, fragile_db: Database
) -> None:
    # proves: R6
    async with fragile_db.session() as session:
        await kill_backend(pgstack_db, session)
        repo = Repository(session, Thing)
        assert [t.name for t in await repo.list()] == ["one"]
        # The retry found a new connection; the session works on.
        assert await repo.count() == 1
        await kill_backend(pgstack_db, session)
        assert (await repo.get_by(name="one")).name == "one"
        await kill_backend(pgstack_db, session)
        assert (await repo.page()).total == 1


async def test_a_read_inside_a_transaction_is_not_retried(
    pgstack_db: Database, fragile_db: Database
) -> None:
    # proves: R6
    async with fragile_db.session() as session:
        repo = Repository(session, Thing)
        await repo.create(name="two")  # work in the transaction that the drop would lose
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        async with pgstack_db.session() as other:
            await other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DatabaseUnavailableError, match="not committed; retry it") as info:
            await repo.count()
        assert info.value.status_code == 503
        await session.rollback()
        assert await repo.count() == 1  # "two" was never committed


@pytest.mark.not_through_pooler(
    "it ends its own backend by pid, which a transaction pooler reassigns"
)
async def test_a_write_on_a_dropped_connection_is_one_clear_error(
    pgstack_db: Database, fragile_db: Database
) -> None:
    # proves: R6
    async with fragile_db.session() as session:
        await kill_backend(pgstack_db, session)
        with pytest.raises(DatabaseUnavailableError):
            await Repository(session, Thing).update_many({"name": "x"}, all_rows=True)
        await session.rollback()
        assert (await Repository(session, Thing).get_by(name="one")).name == "one"


async def test_a_copy_on_a_dropped_connection_is_one_clear_error(
    pgstack_db: Database, fragile_db: Database
) -> None:
    # proves: R6, R4
    async with fragile_db.session() as session:
        repo = Repository(session, Thing)
        assert await repo.count() == 1  # a transaction is open on the pooled connection
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        async with pgstack_db.session() as other:
            await other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DatabaseUnavailableError, match="lost during a COPY"):
            await repo.create_many([{"name": f"n{i}"} for i in range(500)])
        await session.rollback()
        # The dead connection was thrown away, not handed out again.
        assert await repo.count() == 1
