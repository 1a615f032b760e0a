"""Optimistic locking with Versioned models.

A stale version is a ConflictError, and concurrent read-modify-write loops that retry on
conflict lose no update.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase, Mapped

from pgstack import Repository
from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import ConflictError, InvalidQueryError, NotFoundError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    BigIntPrimaryKey,
    ModelMixin,
    SoftDelete,
    Timestamped,
    Versioned,
)

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class LockBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Counter(BigIntPrimaryKey, Timestamped, Versioned, LockBase):
    __tablename__ = "lock_counters"
    value: Mapped[int]


class Unversioned(BigIntPrimaryKey, LockBase):
    __tablename__ = "lock_unversioned"
    value: Mapped[int]


class SoftUnversioned(BigIntPrimaryKey, SoftDelete, LockBase):
    __tablename__ = "lock_soft_unversioned"
    value: Mapped[int]


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(LockBase.metadata)


async def test_a_stale_expected_version_is_a_conflict(pgstack_db: Database) -> None:
    # proves: R5
    async with pgstack_db.transaction() as session:
        counter = await Repository(session, Counter).create(value=0)
    async with pgstack_db.transaction() as session:
        await Repository(session, Counter).update(counter.id, value=1, expected_version=1)
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Counter)
        with pytest.raises(ConflictError, match="at version 2, not 1") as info:
            await repo.update(counter.id, value=5, expected_version=1)
        assert info.value.status_code == 409
        with pytest.raises(ConflictError):
            await repo.delete(counter.id, expected_version=1)
        with pytest.raises(ConflictError):
            await repo.update(counter.id, {}, expected_version=1)
        with pytest.raises(NotFoundError):
            await repo.update(counter.id + 99, value=5, expected_version=1)
        assert (await repo.get(counter.id)).value == 1
        assert (await repo.update(counter.id, value=2, expected_version=2)).version == 3


async def test_a_stale_orm_flush_is_a_conflict_too(pgstack_db: Database) -> None:
    # proves: R5
    async with pgstack_db.transaction() as session:
        counter = await Repository(session, Counter).create(value=0)
    async with pgstack_db.session() as first, pgstack_db.session() as second:
        mine = await Repository(first, Counter).get(counter.id)
        theirs = await Repository(second, Counter).get(counter.id)
        theirs.value = 10
        await second.commit()
        mine.value = 20
        with pytest.raises(ConflictError, match="changed or deleted by someone else"):
            await first.commit()
        await first.rollback()
    async with pgstack_db.session() as session:
        assert (await Repository(session, Counter).get(counter.id)).value == 10


async def test_expected_version_needs_a_versioned_model(pgstack_db: Database) -> None:
    # proves: R5
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Unversioned)
        row = await repo.create(value=1)
        with pytest.raises(InvalidQueryError, match="not Versioned"):
            await repo.update(row.id, value=2, expected_version=1)
        for write in (repo.update, repo.delete, repo.hard_delete):
            with pytest.raises(InvalidQueryError, match="not Versioned"):
                await write(row.id, expected_version=1)
        # Without expected_version, an update with nothing to change returns the row as it is.
        assert (await repo.update(row.id)).value == 1
        soft = Repository(session, SoftUnversioned)
        kept = await soft.create(value=1)
        with pytest.raises(InvalidQueryError, match="not Versioned"):
            await soft.delete(kept.id, expected_version=1)


@pytest.fixture
async def wide_db(pgstack_settings: Settings) -> AsyncIterator[Database]:
    """A Database whose pool lets 16 writers hold a connection each."""
    db = Database(pgstack_settings.model_copy(update={"database_pool_size": 16}))
    await db.connect()
    yield db
    await db.disconnect()


async def test_sixteen_writers_incrementing_lose_no_update(
    pgstack_db: Database, wide_db: Database
) -> None:
    # proves: R5
    async with pgstack_db.transaction() as session:
        counter = await Repository(session, Counter).create(value=0)
    conflicts = 0
    start = asyncio.Event()

    async def writer() -> None:
        nonlocal conflicts
        await start.wait()
        for _ in range(10):
            while True:
                async with wide_db.transaction() as session:
                    repo = Repository(session, Counter)
                    current = await repo.get(counter.id)
                    # Give the other writers a chance to interleave between read and write.
                    await asyncio.sleep(0)
                    try:
                        await repo.update(
                            counter.id, value=current.value + 1, expected_version=current.version
                        )
                        break
                    except ConflictError:
                        conflicts += 1
                # A short random pause before retrying, as a real retry loop would take.
                await asyncio.sleep(random.random() / 500)

    tasks = [asyncio.create_task(writer()) for _ in range(16)]
    start.set()
    await asyncio.gather(*tasks)
    async with pgstack_db.session() as session:
        final = await Repository(session, Counter).get(counter.id)
    assert final.value == 160
    assert final.version == 161
    assert conflicts > 0  # the writers really did race
