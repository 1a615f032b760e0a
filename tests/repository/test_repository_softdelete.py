"""Soft delete: a deleted row is invisible to every read, and restore brings it back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.orm import DeclarativeBase, Mapped

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import InvalidQueryError, NotFoundError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    BigIntPrimaryKey,
    ModelMixin,
    SoftDelete,
    Timestamped,
    Versioned,
)
from pgstack.repository import Eq

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class SoftBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Note(BigIntPrimaryKey, Timestamped, SoftDelete, Versioned, SoftBase):
    __tablename__ = "soft_notes"
    body: Mapped[str]


class Plain(BigIntPrimaryKey, SoftBase):
    __tablename__ = "soft_plain"
    body: Mapped[str]


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(SoftBase.metadata)


async def test_soft_deleted_row_is_hidden_and_restore_brings_it_back(pgstack_db: Database) -> None:
    # proves: R1, M2
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Note)
        kept = await repo.create(body="kept")
        gone = await repo.create(body="gone")
        await repo.delete(gone.id)

    async with pgstack_db.session() as session:
        repo = Repository(session, Note)
        assert await repo.get_or_none(gone.id) is None
        with pytest.raises(NotFoundError):
            await repo.get(gone.id)
        assert [n.id for n in await repo.list()] == [kept.id]
        assert await repo.count() == 1 and not await repo.exists(body="gone")
        assert (await repo.page()).total == 1
        assert [n.id for n in (await repo.page_after()).items] == [kept.id]
        assert await repo.get_by_or_none(body="gone") is None
        # Still in the table, and visible on request.
        assert await session.scalar(text("SELECT count(*) FROM soft_notes")) == 2
        deleted = await repo.get(gone.id, include_deleted=True)
        assert deleted.deleted_at is not None and deleted.is_deleted
        assert await repo.count(include_deleted=True) == 2

    async with pgstack_db.transaction() as session:
        restored = await Repository(session, Note).restore(gone.id)
        assert restored.deleted_at is None and restored.body == "gone"

    async with pgstack_db.session() as session:
        repo = Repository(session, Note)
        assert (await repo.get(gone.id)).body == "gone"
        assert await repo.count() == 2


async def test_deleting_twice_is_not_found_and_restore_is_idempotent(
    pgstack_db: Database,
) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Note)
        note = await repo.create(body="x")
        await repo.delete(note.id)
        with pytest.raises(NotFoundError):
            await repo.delete(note.id)
        with pytest.raises(NotFoundError):
            await repo.update(note.id, body="y")
        first = await repo.restore(note.id)
        again = await repo.restore(note.id)
        assert first.version == again.version  # restoring a live row changes nothing
        with pytest.raises(NotFoundError):
            await repo.restore(note.id + 1000)


async def test_soft_delete_moves_updated_at_and_version(pgstack_db: Database) -> None:
    # proves: M2
    async with pgstack_db.transaction() as session:
        note = await Repository(session, Note).create(body="x")
    async with pgstack_db.transaction() as session:
        await Repository(session, Note).delete(note.id)
    async with pgstack_db.session() as session:
        deleted = await Repository(session, Note).get(note.id, include_deleted=True)
        assert deleted.version == 2 and deleted.updated_at > note.updated_at


async def test_delete_many_is_soft_and_restorable(pgstack_db: Database) -> None:
    # proves: R4, M2
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Note)
        for body in ("a", "a", "b"):
            await repo.create(body=body)
        assert await repo.delete_many(Eq("body", "a")) == 2
        assert await repo.count() == 1 and await repo.count(include_deleted=True) == 3


async def test_restore_on_a_model_without_soft_delete_is_refused(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Plain)
        row = await repo.create(body="x")
        with pytest.raises(InvalidQueryError, match="no SoftDelete"):
            await repo.restore(row.id)
