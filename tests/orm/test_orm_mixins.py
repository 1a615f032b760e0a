"""Mixins: keys, timestamps, actors, to_dict() and a repr without secrets.

UUIDv7 and identity keys; database-set timestamps that move on every kind of update and are
readable at once; actors from context.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData, event, insert, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.crypto import KeyRing
from pgstack.db.database import Database
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    BigIntPrimaryKey,
    EncryptedText,
    ModelMixin,
    SoftDelete,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
    acting_as,
    current_actor,
    new_uuid7,
)

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class MixinBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Doc(UUIDPrimaryKey, Timestamped, Audited, SoftDelete, Versioned, MixinBase):
    __tablename__ = "mixin_docs"
    title: Mapped[str]
    token: Mapped[str | None] = mapped_column(EncryptedText())
    password_hash: Mapped[str | None] = mapped_column(info={"secret": True})


class Row(BigIntPrimaryKey, Timestamped, MixinBase):
    __tablename__ = "mixin_rows"
    label: Mapped[str]


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(MixinBase.metadata)


@pytest.fixture
def statements(pgstack_db: Database) -> Iterator[list[str]]:
    log: list[str] = []

    def record(*args: Any) -> None:
        log.append(args[2])

    engine = pgstack_db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    yield log
    event.remove(engine, "before_cursor_execute", record)


def test_uuid7_keys_are_time_ordered() -> None:
    # proves: M2
    keys = [new_uuid7() for _ in range(1000)]
    assert all(isinstance(k, uuid.UUID) and k.version == 7 for k in keys)
    assert keys == sorted(keys)


async def test_keys_are_made_on_the_client_or_by_identity(pgstack_db: Database) -> None:
    # proves: M2
    async with pgstack_db.transaction() as session:
        doc = Doc(title="t")
        assert doc.id is None
        session.add(doc)
        await session.flush()
        assert doc.id.version == 7
        rows = [Row(label=str(i)) for i in range(3)]
        session.add_all(rows)
        await session.flush()
        assert [r.id for r in rows] == [rows[0].id, rows[0].id + 1, rows[0].id + 2]
        ddl = await session.scalar(
            text(
                "SELECT is_identity FROM information_schema.columns "
                "WHERE table_name = 'mixin_rows' AND column_name = 'id'"
            )
        )
        assert ddl == "YES"


async def test_timestamps_are_set_by_the_database_and_readable_at_once(
    pgstack_db: Database, statements: list[str]
) -> None:
    # proves: M2, D1
    async with pgstack_db.transaction() as session:
        doc = Doc(title="draft")
        session.add(doc)
        await session.flush()
        db_now = await session.scalar(text("SELECT now()"))
        assert doc.created_at == doc.updated_at == db_now
        assert doc.created_at.tzinfo is not None and doc.created_at.utcoffset().total_seconds() == 0
    async with pgstack_db.transaction() as session:
        loaded = await Repository(session, Doc).get(doc.id)
        statements.clear()
        loaded.title = "final"
        await session.flush()
        # One UPDATE, which brought the new updated_at (and version) back with it.
        assert len(statements) == 1 and "RETURNING" in statements[0]
        assert loaded.updated_at > doc.updated_at and loaded.version == 2
        assert loaded.created_at == doc.created_at
        assert len(statements) == 1


async def test_updated_at_moves_on_core_and_orm_bulk_updates(pgstack_db: Database) -> None:
    # proves: M2
    async with pgstack_db.transaction() as session:
        await session.execute(insert(Row), [{"label": "a"}, {"label": "b"}])
    async with pgstack_db.session() as session:
        before = dict(
            (await session.execute(text("SELECT label, updated_at FROM mixin_rows"))).all()
        )
    async with pgstack_db.transaction() as session:
        await session.execute(update(Row).where(Row.label == "a").values(label="a2"))
        await session.execute(
            update(Row.__table__).where(Row.__table__.c.label == "b").values(label="b2")
        )
    async with pgstack_db.session() as session:
        after = dict(
            (await session.execute(text("SELECT label, updated_at FROM mixin_rows"))).all()
        )
    assert after["a2"] > before["a"] and after["b2"] > before["b"]


async def test_actors_come_from_the_context(pgstack_db: Database) -> None:
    # proves: M2
    assert current_actor() is None
    with acting_as(uuid.UUID(int=1)):
        async with pgstack_db.transaction() as session:
            doc = await Repository(session, Doc).create(title="x")
    assert doc.created_by == doc.updated_by == str(uuid.UUID(int=1))
    with acting_as("reviewer"):
        async with pgstack_db.transaction() as session:
            loaded = await Repository(session, Doc).get(doc.id)
            loaded.title = "y"
            await session.flush()
            assert loaded.updated_by == "reviewer" and loaded.created_by == str(uuid.UUID(int=1))
    async with pgstack_db.transaction() as session:
        anonymous = await Repository(session, Doc).create(title="nobody")
        assert anonymous.created_by is None


async def test_concurrent_tasks_keep_their_own_actor(pgstack_db: Database) -> None:
    # proves: M2
    async def write(actor: str) -> str | None:
        with acting_as(actor):
            await asyncio.sleep(0)
            async with pgstack_db.transaction() as session:
                await asyncio.sleep(0)
                return (await Repository(session, Doc).create(title=actor)).created_by

    assert await asyncio.gather(*(write(f"user-{i}") for i in range(8))) == [
        f"user-{i}" for i in range(8)
    ]


async def test_to_dict_and_repr_never_show_secrets(
    pgstack_db: Database, encryption_ring: KeyRing
) -> None:
    # proves: M2
    async with pgstack_db.transaction() as session:
        doc = await Repository(session, Doc).create(
            title="deal", token="tok-SECRET-123", password_hash="$argon2id$SECRET"
        )
    shown = repr(doc)
    assert "SECRET" not in shown and "token=***" in shown and "password_hash=***" in shown
    assert "title='deal'" in shown and str(doc.id) in shown
    data = doc.to_dict()
    assert "token" not in data and "password_hash" not in data
    assert data["title"] == "deal" and data["version"] == 1 and data["deleted_at"] is None
    assert doc.to_dict(include_secrets=True)["token"] == "tok-SECRET-123"
    assert set(doc.to_dict(exclude=("title", "id"))) & {"title", "id"} == set()


async def test_to_dict_and_repr_load_nothing(pgstack_db: Database) -> None:
    # proves: M2, D1
    async with pgstack_db.transaction() as session:
        doc = await Repository(session, Doc).create(title="lazy")
        session.expire(doc, ["title"])
        assert "title" not in doc.to_dict() and "title" not in repr(doc)
