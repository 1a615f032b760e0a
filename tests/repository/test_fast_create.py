"""`Repository.create` by one INSERT ... RETURNING behaves like the flush it replaces.

Every test runs twice: once as is (the direct insert serves `create`, and the test checks it
did), once with it switched off (the unit of work flushes). Same defaults (client-side ids,
server timestamps, `version`, audit columns), tenant stamping, errors, and an object that is
persistent, unchanged and saves its later changes. Where a listener waits for the unit of
work's events, or the session holds pending changes, `create` flushes on both paths.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData, String, event, func, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.errors import ConflictError, InvalidQueryError, TenantScopeError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    BigIntPrimaryKey,
    ModelMixin,
    SoftDelete,
    TenantScoped,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
    acting_as,
    tenant_context,
)
from pgstack.repository import write

CreateTables = Callable[[MetaData], Awaitable[None]]


class CreateBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Part(UUIDPrimaryKey, Timestamped, Audited, SoftDelete, Versioned, CreateBase):
    __tablename__ = "create_parts"
    name: Mapped[str] = mapped_column(String(100), unique=True)
    note: Mapped[str | None]
    size: Mapped[int] = mapped_column(default=1)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    grade: Mapped[str] = mapped_column(String(10), server_default="B")


class Counter(BigIntPrimaryKey, CreateBase):
    __tablename__ = "create_counters"
    label: Mapped[str]


class Ticket(UUIDPrimaryKey, TenantScoped, CreateBase):
    __tablename__ = "create_tickets"
    title: Mapped[str]


class Watched(UUIDPrimaryKey, CreateBase):
    __tablename__ = "create_watched"
    title: Mapped[str]


SEEN: list[str] = []


@event.listens_for(Watched, "before_insert")
def _seen(mapper: Any, connection: Any, target: Watched) -> None:
    SEEN.append(target.title)


ACME, GLOBEX = uuid.uuid4(), uuid.uuid4()


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(CreateBase.metadata)


@pytest.fixture(params=["direct", "flush"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Which way `create` inserts; yields whether each create took the direct insert."""
    taken: list[bool] = []
    original = write.insert_directly

    def spy(session: Any, info: Any) -> bool:
        allowed = request.param == "direct" and original(session, info)
        taken.append(allowed)
        return allowed

    monkeypatch.setattr(write, "insert_directly", spy)
    yield taken
    if request.param == "flush":
        assert not any(taken)


def columns(obj: Any) -> dict[str, Any]:
    return {a.key: getattr(obj, a.key) for a in inspect(type(obj)).column_attrs}


async def test_defaults_audit_columns_and_the_object_returned(
    pgstack_db: Database, path: list[bool], sql_log: list[str]
) -> None:
    with acting_as("user:7"):
        async with pgstack_db.transaction() as session:
            part = await Repository(session, Part).create(name="bolt", note=None)
            state = inspect(part)
            # Persistent in this session, loaded and unchanged, as after a flush.
            assert state.persistent and part in session and not session.dirty
            assert not state.expired_attributes
            made = columns(part)
    assert path == [True] or path == [False]
    if path == [True]:
        assert sum(s.startswith("INSERT") for s in sql_log) == 1
    assert made["id"].version == 7  # UUIDv7, made on the client
    assert made["size"] == 1 and made["data"] == {} and made["version"] == 1
    assert made["grade"] == "B" and made["note"] is None and made["deleted_at"] is None
    assert made["created_by"] == "user:7" and made["updated_by"] == "user:7"
    assert made["created_at"] is not None and made["created_at"] == made["updated_at"]
    async with pgstack_db.session() as session:
        stored = await Repository(session, Part).get(made["id"])
        assert columns(stored) == made


async def test_the_object_saves_later_changes_and_keeps_its_version(
    pgstack_db: Database, path: list[bool]
) -> None:
    async with pgstack_db.transaction() as session:
        part = await Repository(session, Part).create({"name": "nut", "size": 3})
        part.note = "changed"
        await session.flush()
        assert part.version == 2
    async with pgstack_db.session() as session:
        stored = await Repository(session, Part).get(part.id)
    assert (stored.note, stored.size, stored.version) == ("changed", 3, 2)
    assert path[0] is True or path == [False]


async def test_identity_primary_keys_come_from_the_server(
    pgstack_db: Database, path: list[bool]
) -> None:
    async with pgstack_db.transaction() as session:
        first = await Repository(session, Counter).create(label="a")
    async with pgstack_db.transaction() as session:
        second = await Repository(session, Counter).create(label="b")
    assert isinstance(first.id, int) and second.id == first.id + 1
    assert path in ([True, True], [False, False])


async def test_tenant_is_stamped_and_others_refused(pgstack_db: Database, path: list[bool]) -> None:
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            ticket = await Repository(session, Ticket).create(title="t1")
        assert ticket.tenant_id == ACME
        with pytest.raises(TenantScopeError):
            async with pgstack_db.transaction() as session:
                await Repository(session, Ticket).create(title="t2", tenant_id=GLOBEX)
    with pytest.raises(TenantScopeError):
        async with pgstack_db.transaction() as session:
            await Repository(session, Ticket).create(title="t3")
    async with pgstack_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT title, tenant_id FROM create_tickets"))).all()
    assert [tuple(r) for r in rows] == [("t1", ACME)]


async def test_errors_are_the_same(pgstack_db: Database, path: list[bool]) -> None:
    async with pgstack_db.transaction() as session:
        await Repository(session, Part).create(name="dup")
    with pytest.raises(ConflictError, match="same unique value"):
        async with pgstack_db.transaction() as session:
            await Repository(session, Part).create(name="dup")
    with pytest.raises(InvalidQueryError, match="has no field"):
        async with pgstack_db.transaction() as session:
            await Repository(session, Part).create(name="x", colour="red")
    with pytest.raises(InvalidQueryError, match="either a model instance or field values"):
        async with pgstack_db.transaction() as session:
            await Repository(session, Part).create(Part(name="y"), size=2)
    async with pgstack_db.session() as session:
        assert await Repository(session, Part).count() == 1


async def test_not_null_and_type_errors_read_the_same_on_both_ways(
    pgstack_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = write.insert_directly
    seen: dict[bool, list[tuple[type, str]]] = {}
    for direct in (True, False):
        monkeypatch.setattr(write, "insert_directly", lambda s, i, d=direct: d and original(s, i))
        errors = seen.setdefault(direct, [])
        for values in ({"size": 2}, {"name": "z", "size": "big"}):
            with pytest.raises(Exception) as caught:
                async with pgstack_db.transaction() as session:
                    await Repository(session, Part).create(values)
            errors.append((type(caught.value), str(caught.value).split("\n")[0][:60]))
    assert seen[True] == seen[False]


async def test_none_means_the_default_as_in_a_flush(
    pgstack_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = write.insert_directly
    made: dict[bool, dict[str, Any]] = {}
    for direct in (True, False):
        monkeypatch.setattr(write, "insert_directly", lambda s, i, d=direct: d and original(s, i))
        async with pgstack_db.transaction() as session:
            part = await Repository(session, Part).create(
                name=f"n{direct}", size=None, note=None, data=None, grade=None
            )
        async with pgstack_db.session() as session:
            stored = columns(await Repository(session, Part).get(part.id))
        assert columns(part) == stored
        made[direct] = {k: stored[k] for k in ("size", "note", "data", "grade")}
    assert made[True] == made[False]
    assert made[True]["size"] == 1 and made[True]["grade"] == "B"


async def test_sql_expressions_as_values_still_work(pgstack_db: Database, path: list[bool]) -> None:
    async with pgstack_db.transaction() as session:
        part = await Repository(session, Part).create(name=func.lower("LOUD"))
        # As after any flush of a SQL expression, the value is read back on request.
        await session.refresh(part, ["name"])
        assert part.name == "loud"


async def test_unit_of_work_listeners_and_pending_changes_keep_the_flush(
    pgstack_db: Database, path: list[bool]
) -> None:
    SEEN.clear()
    async with pgstack_db.transaction() as session:
        await Repository(session, Watched).create(title="w1")
    assert SEEN == ["w1"]
    async with pgstack_db.transaction() as session:
        session.add(Counter(label="pending"))
        await Repository(session, Part).create(name="after")
        labels = (await session.execute(select(Counter.label))).scalars().all()
    assert labels == ["pending"]
    assert path == [False, False]  # neither create could take the direct insert
