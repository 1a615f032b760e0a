"""Repository verbs on one row, against PostgreSQL.

get, get_by, exists, list, count, create, update, delete, hard delete, upsert.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import MetaData, String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import ConflictError, InvalidQueryError, NotFoundError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    BigIntPrimaryKey,
    ModelMixin,
    SoftDelete,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
    acting_as,
)
from pgstack.repository import Gt, In

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class CrudBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Widget(UUIDPrimaryKey, Timestamped, Audited, SoftDelete, Versioned, CrudBase):
    __tablename__ = "crud_widgets"
    name: Mapped[str] = mapped_column(String(100), unique=True)
    color: Mapped[str | None]
    size: Mapped[int] = mapped_column(default=1)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Tag(BigIntPrimaryKey, CrudBase):
    __tablename__ = "crud_tags"
    label: Mapped[str]


class Widgets(Repository[Widget]):
    model = Widget


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(CrudBase.metadata)


async def test_create_then_get_returns_the_row_with_server_values(pgstack_db: Database) -> None:
    # proves: R1, M2
    async with pgstack_db.transaction() as session:
        created = await Widgets(session).create({"name": "anvil", "color": "black"})
        # Server-set values are there right away, without another query.
        assert created.created_at is not None and created.updated_at == created.created_at
        assert created.version == 1 and created.id.version == 7
    async with pgstack_db.session() as session:
        found = await Widgets(session).get(created.id)
        assert (found.name, found.color, found.size, found.data) == ("anvil", "black", 1, {})
        assert found.created_at == created.created_at


async def test_constructor_form_and_keyword_values(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Tag)
        tag = await repo.create(label="red")
        other = await repo.create(Tag(label="blue"))
        assert isinstance(tag.id, int) and other.id == tag.id + 1
        assert [t.label for t in await repo.list(sort="label")] == ["blue", "red"]


async def test_get_of_a_missing_row_is_not_found_with_http_404(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.session() as session:
        repo = Widgets(session)
        missing = uuid.uuid4()
        with pytest.raises(NotFoundError) as info:
            await repo.get(missing)
        assert info.value.status_code == 404 and str(missing) in info.value.message
        assert await repo.get_or_none(missing) is None
        # A UUID given as text is read as one.
        assert await repo.get_or_none(str(missing)) is None


async def test_get_by_exists_count_and_list(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Widgets(session)
        for name, size in [("a", 3), ("b", 1), ("c", 2)]:
            await repo.create({"name": name, "size": size, "color": "red"})
        assert (await repo.get_by(name="b")).size == 1
        assert await repo.get_by_or_none(name="zz") is None
        with pytest.raises(NotFoundError):
            await repo.get_by(name="zz")
        with pytest.raises(InvalidQueryError, match="more than one"):
            await repo.get_by(color="red")
        assert await repo.exists(name="c") and not await repo.exists(name="d")
        assert await repo.count() == 3 and await repo.count(Gt("size", 1)) == 2
        assert [w.name for w in await repo.list(sort="-size")] == ["a", "c", "b"]
        assert [w.name for w in await repo.list(sort="size", limit=2, offset=1)] == ["c", "a"]
        assert [w.name for w in await repo.list(In("name", ["a", "b"]), sort="name")] == ["a", "b"]


async def test_update_changes_only_the_given_fields(pgstack_db: Database) -> None:
    # proves: R1, M2
    async with pgstack_db.transaction() as session:
        created = await Widgets(session).create(
            {"name": "kettle", "color": "steel", "size": 2, "data": {"w": 1}}
        )
    async with pgstack_db.transaction() as session:
        with acting_as("editor-7"):
            updated = await Widgets(session).update(created.id, {"size": 5})
        assert (updated.name, updated.color, updated.size, updated.data) == (
            "kettle",
            "steel",
            5,
            {"w": 1},
        )
        assert updated.version == 2 and updated.updated_by == "editor-7"
        assert updated.updated_at > created.updated_at
        assert updated.created_at == created.created_at
    async with pgstack_db.session() as session:
        stored = await Widgets(session).get(created.id)
        assert (stored.size, stored.color, stored.version) == (5, "steel", 2)


async def test_update_refuses_unknown_and_managed_fields(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Widgets(session)
        widget = await repo.create({"name": "x"})
        with pytest.raises(InvalidQueryError, match="no field 'colour'"):
            await repo.update(widget.id, {"colour": "red"})
        for managed in ("version", "created_at", "deleted_at", "id"):
            with pytest.raises(InvalidQueryError, match="maintained by pgstack"):
                await repo.update(widget.id, {managed: None})
        with pytest.raises(NotFoundError):
            await repo.update(uuid.uuid4(), {"size": 1})


async def test_a_duplicate_unique_value_is_a_conflict(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        await Widgets(session).create({"name": "twin"})
    with pytest.raises(ConflictError, match="uq_crud_widgets_name") as info:
        async with pgstack_db.transaction() as session:
            await Widgets(session).create({"name": "twin"})
    assert info.value.status_code == 409


async def test_delete_without_soft_delete_removes_the_row(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Tag)
        tag = await repo.create(label="gone")
        await repo.delete(tag.id)
        assert await repo.get_or_none(tag.id) is None
        raw = await session.scalar(text("SELECT count(*) FROM crud_tags"))
        assert raw == 0
        with pytest.raises(NotFoundError):
            await repo.delete(tag.id)


async def test_hard_delete_removes_even_a_soft_deleted_row(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Widgets(session)
        widget = await repo.create({"name": "old"})
        await repo.delete(widget.id)
        await repo.hard_delete(widget.id)
        assert await repo.get_or_none(widget.id, include_deleted=True) is None
        assert await session.scalar(text("SELECT count(*) FROM crud_widgets")) == 0


async def test_upsert_is_one_insert_on_conflict_statement(
    pgstack_db: Database, sql_log: list[str]
) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Widgets(session)
        first = await repo.upsert({"name": "lamp", "color": "red"}, on=["name"])
        sql_log.clear()
        with acting_as("u2"):
            second = await repo.upsert({"name": "lamp", "color": "blue", "size": 4}, on=["name"])
        assert len(sql_log) == 1 and "ON CONFLICT (name) DO UPDATE" in sql_log[0]
        assert not sql_log[0].lstrip().upper().startswith("SELECT")
        assert second.id == first.id
        assert (second.color, second.size, second.version) == ("blue", 4, 2)
        assert second.updated_by == "u2" and second.created_at == first.created_at
        assert await repo.count() == 1


async def test_upsert_brings_a_soft_deleted_row_back(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Widgets(session)
        widget = await repo.create({"name": "phoenix"})
        await repo.delete(widget.id)
        again = await repo.upsert({"name": "phoenix", "color": "gold"}, on=["name"])
        assert again.id == widget.id and again.deleted_at is None and again.color == "gold"


async def test_reads_return_what_the_database_holds(pgstack_db: Database) -> None:
    # proves: R1
    async with pgstack_db.transaction() as session:
        repo = Widgets(session)
        widget = await repo.create({"name": "fresh", "size": 1})
        # Changed behind the session's back (another process, raw SQL, a bulk update).
        await session.execute(text("UPDATE crud_widgets SET size = 9"))
        assert (await repo.get(widget.id)).size == 9
        assert widget.size == 9  # the same object, refreshed


async def test_subclass_without_a_model_is_a_clear_error(pgstack_db: Database) -> None:
    # proves: R1
    class Nameless(Repository[Widget]):
        pass

    async with pgstack_db.session() as session:
        with pytest.raises(Exception, match="names no model"):
            Nameless(session)
        # The session is still usable; nothing was sent.
        assert (await session.execute(select(1))).scalar() == 1
