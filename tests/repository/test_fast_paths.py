"""The fast path of reads (get, get_by, list, page, page_after) behaves like the ordinary one.

Every test runs twice: once as is (a fresh session's first read takes the fast path, and the
test checks it did), once with the fast path switched off. Same rows, same errors, same
objects.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Float, MetaData, Numeric, String, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import (
    ConcurrentSessionUseError,
    InvalidQueryError,
    NotFoundError,
    TenantScopeError,
)
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    EncryptedText,
    ModelMixin,
    SoftDelete,
    TenantScoped,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
    tenant_context,
)
from pgstack.repository import Gt, In, fast

CreateTables = Callable[[MetaData], Awaitable[None]]


class FastBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Gadget(UUIDPrimaryKey, Timestamped, Audited, SoftDelete, Versioned, FastBase):
    __tablename__ = "fast_gadgets"
    name: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(default=1)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secret: Mapped[str | None] = mapped_column(EncryptedText, nullable=True)


class Booking(UUIDPrimaryKey, TenantScoped, FastBase):
    __tablename__ = "fast_bookings"
    title: Mapped[str]


class Meter(UUIDPrimaryKey, FastBase):
    __tablename__ = "fast_meters"
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    ratio: Mapped[float] = mapped_column(Float)
    approx: Mapped[float] = mapped_column(Numeric(10, 3, asdecimal=False))
    exact: Mapped[Decimal] = mapped_column(Float(asdecimal=True))


ACME, GLOBEX = uuid.uuid4(), uuid.uuid4()


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables, encryption_ring: Any) -> None:
    await create_tables(FastBase.metadata)


@pytest.fixture(params=["fast", "ordinary"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Which path `get` takes; yields the fast path's outcomes (True: it served the read)."""
    served: list[bool] = []
    if request.param == "ordinary":
        monkeypatch.setattr(fast, "session_is_fresh", lambda session: False)
        yield served
        assert served == []
        return
    original = fast.fetch_all

    async def spy(*args: Any) -> tuple[bool, Any]:
        done, rows = await original(*args)
        served.append(done)
        return done, rows

    monkeypatch.setattr(fast, "fetch_all", spy)
    yield served
    assert served and served[0], "the fast path did not serve the first read"


async def make(db: Database, **values: Any) -> Gadget:
    async with db.transaction() as session:
        return await Repository(session, Gadget).create(**values)


async def book(db: Database, *, a1_a3: bool) -> None:
    """Bookings a1, a2 (and a3) for ACME and g1 for GLOBEX."""
    acme = ["a1", "a2", "a3"] if a1_a3 else ["a1", "a2"]
    for tenant, titles in ((ACME, acme), (GLOBEX, ["g1"])):
        with tenant_context(tenant):
            async with db.transaction() as session:
                for title in titles:
                    await Repository(session, Booking).create(title=title)


async def test_get_returns_the_row_as_a_loaded_object(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: R1, M4
    made = await make(pgstack_db, name="anvil", size=3, data={"a": [1]}, secret="s3cret")
    async with pgstack_db.session() as session:
        got = await Repository(session, Gadget).get(str(made.id))
        assert (got.id, got.name, got.size, got.data, got.secret) == (
            made.id,
            "anvil",
            3,
            {"a": [1]},
            "s3cret",
        )
        assert got.created_at == made.created_at and got.created_at.tzinfo is not None
        assert got.version == 1 and got.deleted_at is None
        state = inspect(got)
        assert state.persistent and not state.modified and got in session
        assert not session.dirty
        assert "s3cret" not in repr(got)


async def test_numbers_come_back_as_their_python_types(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: M4, R1
    async with pgstack_db.transaction() as session:
        made = await Repository(session, Meter).create(
            amount=Decimal("12.34"), ratio=0.25, approx=1.5, exact=Decimal("2.5")
        )
    async with pgstack_db.session() as session:
        got = await Repository(session, Meter).get(made.id)
        values = (got.amount, got.ratio, got.approx, got.exact)
        assert values == (Decimal("12.34"), 0.25, 1.5, Decimal("2.5"))
        assert [type(v) for v in values] == [Decimal, float, float, Decimal]


async def test_a_fetched_object_saves_its_changes_like_any_other(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: R1, D1
    made = await make(pgstack_db, name="anvil", data={"tags": ["x"]})
    async with pgstack_db.session() as session:
        got = await Repository(session, Gadget).get(made.id)
        got.name = "hammer"
        got.data["tags"].append("y")  # an in-place JSON change is tracked, too
        await session.commit()
        assert got.version == 2
    async with pgstack_db.transaction() as session:
        again = await Repository(session, Gadget).get(made.id)
        assert (again.name, again.data, again.version) == ("hammer", {"tags": ["x", "y"]}, 2)


async def test_missing_rows_and_bad_ids_give_the_same_errors(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: R1, R2
    await make(pgstack_db, name="anvil")
    missing = uuid.uuid4()
    async with pgstack_db.session() as session:
        with pytest.raises(NotFoundError, match=f"Gadget {missing} was not found"):
            await Repository(session, Gadget).get(missing)
    async with pgstack_db.session() as session:
        assert await Repository(session, Gadget).get_or_none(uuid.uuid4()) is None
    async with pgstack_db.session() as session:
        with pytest.raises(InvalidQueryError, match="takes a UUID"):
            await Repository(session, Gadget).get("not-a-uuid")
    if path:
        assert path == [True, True]  # "not found" came from the fast path too


async def test_soft_deleted_rows_stay_hidden_unless_asked_for(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: M2, R1
    made = await make(pgstack_db, name="anvil")
    async with pgstack_db.transaction() as session:
        await Repository(session, Gadget).delete(made.id)
    async with pgstack_db.session() as session:
        assert await Repository(session, Gadget).get_or_none(made.id) is None
    async with pgstack_db.session() as session:
        got = await Repository(session, Gadget).get(made.id, include_deleted=True)
        assert got.deleted_at is not None


async def test_tenant_scoping_holds(pgstack_db: Database, path: list[bool]) -> None:
    # proves: R7
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            booking = await Repository(session, Booking).create(title="kickoff")
        async with pgstack_db.session() as session:
            got = await Repository(session, Booking).get(booking.id)
            assert (got.title, got.tenant_id) == ("kickoff", ACME)
    with tenant_context(GLOBEX):
        async with pgstack_db.session() as session:
            with pytest.raises(NotFoundError):
                await Repository(session, Booking).get(booking.id)
    async with pgstack_db.session() as session:
        with pytest.raises(TenantScopeError):
            await Repository(session, Booking).get(booking.id)


async def test_a_session_used_by_two_tasks_at_once_is_refused(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: D2
    made = await make(pgstack_db, name="anvil")
    async with pgstack_db.session() as session:
        repo = Repository(session, Gadget)
        results = await asyncio.gather(repo.get(made.id), repo.get(made.id), return_exceptions=True)
        refused = [r for r in results if isinstance(r, ConcurrentSessionUseError)]
        served = [r for r in results if isinstance(r, Gadget)]
        assert len(refused) == 1 and "another task" in str(refused[0])
        assert len(served) == 1 and served[0].name == "anvil"


async def test_reads_reach_query_listeners(
    pgstack_db: Database, path: list[bool], sql_log: list[str]
) -> None:
    # proves: C7, O4
    made = await make(pgstack_db, name="anvil")
    sql_log.clear()
    async with pgstack_db.session() as session:
        await Repository(session, Gadget).get(made.id)
    assert len([s for s in sql_log if "FROM fast_gadgets" in s]) == 1


async def test_a_later_read_sees_the_current_row(pgstack_db: Database, path: list[bool]) -> None:
    # proves: R1
    made = await make(pgstack_db, name="anvil")
    async with pgstack_db.session() as session:
        repo = Repository(session, Gadget)
        first = await repo.get(made.id)
        async with pgstack_db.transaction() as other:
            await Repository(other, Gadget).update(made.id, name="hammer")
        second = await repo.get(made.id)
        assert second is first and second.name == "hammer" and second.version == 2


@pytest.fixture
async def fragile_db(pgstack_settings: Settings) -> AsyncIterator[Database]:
    """One connection per pool and no pre-ping, so a killed connection is handed out again."""
    db = Database(
        pgstack_settings.model_copy(
            update={
                "database_pool_size": 1,
                "database_max_overflow": 0,
                "database_pool_pre_ping": False,
                "database_read_pool_size": 1,
            }
        )
    )
    await db.connect()
    yield db
    await db.disconnect()


@pytest.mark.not_through_pooler(
    "it ends its own backend by pid, which a transaction pooler reassigns"
)
async def test_a_dropped_connection_is_retried(
    pgstack_db: Database, fragile_db: Database, path: list[bool]
) -> None:
    # proves: R6
    made = await make(pgstack_db, name="anvil")
    async with fragile_db.session() as session:
        await Repository(session, Gadget).get(made.id)
        assert await session.scalar(text("SELECT 1")) == 1
    # Every connection of this database but the one asking: the session pool's and the lane's.
    async with pgstack_db.session() as admin:
        killed = await admin.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        assert killed >= 1 + len(path)  # the lane holds one more on the fast path
    await asyncio.sleep(0.05)
    async with fragile_db.session() as session:
        got = await Repository(session, Gadget).get(made.id)
        assert got.name == "anvil"
    if path:
        # The fast path served both reads: the lane replaced its dead connection.
        assert path == [True, True]
    else:
        # The ordinary path met the dead pooled connection, and it was replaced.
        async with fragile_db.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1


async def test_lists_filter_sort_and_hide_deleted_rows(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: R1, R2, M2
    made = [await make(pgstack_db, name=f"g{i}", size=i % 3) for i in range(6)]
    async with pgstack_db.transaction() as session:
        await Repository(session, Gadget).delete(made[5].id)
    async with pgstack_db.session() as session:
        repo = Repository(session, Gadget)
        listed = await repo.list(Gt("size", 0), sort=["-size", "name"])
        assert [g.name for g in listed] == ["g2", "g1", "g4"]
        assert all(inspect(g).persistent and not inspect(g).modified for g in listed)
        # A second read in the same session returns the same objects, as the ORM would.
        again = await repo.list(In("name", ["g1", "g2"]), sort="name")
        assert again == [listed[1], listed[0]]
        assert await repo.get_by(name="g0") is not None
        with pytest.raises(NotFoundError):
            await repo.get_by(name="g5")
    async with pgstack_db.session() as session:
        with pytest.raises(InvalidQueryError, match="more than one"):
            await Repository(session, Gadget).get_by(size=0)
    async with pgstack_db.session() as session:
        # IN lists are rendered per call: this one goes the ordinary way on either path.
        listed = await Repository(session, Gadget).list(In("name", ["g1", "g5"]))
        assert [g.name for g in listed] == ["g1"]


async def test_keyset_pages_visit_every_row_once(pgstack_db: Database, path: list[bool]) -> None:
    # proves: R3
    names = {f"g{i:02}" for i in range(7)}
    for name in sorted(names):
        await make(pgstack_db, name=name)
    seen: list[str] = []
    cursor = None
    while True:
        async with pgstack_db.session() as session:
            page = await Repository(session, Gadget).page_after(
                cursor=cursor, sort="-name", limit=3
            )
        seen += [g.name for g in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(names, reverse=True)


async def test_lists_are_scoped_to_the_tenant(pgstack_db: Database, path: list[bool]) -> None:
    # proves: R7
    await book(pgstack_db, a1_a3=False)
    with tenant_context(ACME):
        async with pgstack_db.session() as session:
            listed = await Repository(session, Booking).list(sort="title")
            assert [b.title for b in listed] == ["a1", "a2"]
    async with pgstack_db.session() as session:
        with pytest.raises(TenantScopeError):
            await Repository(session, Booking).list()


async def test_offset_pages_count_and_hide_deleted_rows(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: R3, M2
    made = [await make(pgstack_db, name=f"g{i:02}", size=i % 2) for i in range(7)]
    async with pgstack_db.transaction() as session:
        await Repository(session, Gadget).delete(made[3].id)
    async with pgstack_db.session() as session:
        page = await Repository(session, Gadget).page(sort="name", limit=2, offset=2)
        assert [g.name for g in page.items] == ["g02", "g04"]
        assert (page.total, page.limit, page.offset, page.has_more) == (6, 2, 2, True)
        assert page.total.__class__ is int
        got = page.items[0]
        assert got.created_at.tzinfo is not None and got.data == {} and got.version == 1
        state = inspect(got)
        assert state.persistent and not state.modified and got in session
    async with pgstack_db.session() as session:
        page = await Repository(session, Gadget).page(sort="-name", size=1, limit=5)
        assert [g.name for g in page.items] == ["g05", "g01"] and page.total == 2
    async with pgstack_db.session() as session:
        page = await Repository(session, Gadget).page(sort="name", include_deleted=True, limit=3)
        assert [g.name for g in page.items] == ["g00", "g01", "g02"] and page.total == 7
    async with pgstack_db.session() as session:
        beyond = await Repository(session, Gadget).page(sort="name", limit=2, offset=10)
        assert beyond.items == [] and beyond.total == 6
    async with pgstack_db.session() as session:
        with pytest.raises(InvalidQueryError):
            await Repository(session, Gadget).page(sort="nope")


async def test_offset_pages_are_scoped_to_the_tenant(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: R7
    await book(pgstack_db, a1_a3=True)
    with tenant_context(ACME):
        async with pgstack_db.session() as session:
            page = await Repository(session, Booking).page(sort="title", limit=2)
            assert [b.title for b in page.items] == ["a1", "a2"] and page.total == 3
    with tenant_context(GLOBEX):
        async with pgstack_db.session() as session:
            page = await Repository(session, Booking).page(sort="title")
            assert [b.title for b in page.items] == ["g1"] and page.total == 1
    async with pgstack_db.session() as session:
        with pytest.raises(TenantScopeError):
            await Repository(session, Booking).page()


def _fields(obj: Any) -> dict[str, Any]:
    return {a.key: getattr(obj, a.key) for a in inspect(type(obj)).column_attrs}


async def test_plain_pages_hold_what_the_objects_hold(
    pgstack_db: Database, path: list[bool]
) -> None:
    # proves: R3, M2, M4
    made = [
        await make(pgstack_db, name=f"g{i:02}", size=i, data={"n": [i]}, secret=f"s{i}")
        for i in range(7)
    ]
    async with pgstack_db.transaction() as session:
        await Repository(session, Gadget).delete(made[3].id)
    async with pgstack_db.session() as session:
        objects = await Repository(session, Gadget).page(sort="-name", limit=3, offset=1)
        expected = [_fields(g) for g in objects.items]
    async with pgstack_db.session() as session:
        plain = await Repository(session, Gadget).page(sort="-name", limit=3, offset=1, plain=True)
        if path:  # the fast path makes no object: the session holds nothing
            assert len(session.sync_session.identity_map) == 0
    assert all(type(item) is dict for item in plain.items)
    assert plain.items == expected and [i["name"] for i in plain.items] == ["g05", "g04", "g02"]
    assert (plain.total, plain.has_more) == (objects.total, objects.has_more) == (6, True)
    first = plain.items[0]
    assert first["created_at"].tzinfo is not None and first["secret"] == "s5"
    assert first["data"] == {"n": [5]} and first["deleted_at"] is None
    async with pgstack_db.session() as session:
        none = await Repository(session, Gadget).page(sort="name", total="none", plain=True)
        assert [i["name"] for i in none.items] == ["g00", "g01", "g02", "g04", "g05", "g06"]
        assert none.total is None and not none.has_more
    # Keyset pages: the same rows, and the cursors of either kind walk the other.
    seen: list[str] = []
    cursor = None
    for plain_page in [True, False, True, False, True]:
        async with pgstack_db.session() as session:
            step = await Repository(session, Gadget).page_after(
                cursor=cursor, sort="-size", limit=2, plain=plain_page
            )
        seen += [i["name"] if plain_page else i.name for i in step.items]
        cursor = step.next_cursor
        if cursor is None:
            break
    assert seen == ["g06", "g05", "g04", "g02", "g01", "g00"]
    async with pgstack_db.session() as session:
        walked = await Repository(session, Gadget).page_after(
            Gt("size", 4), sort="name", limit=5, plain=True
        )
        assert [i["name"] for i in walked.items] == ["g05", "g06"]
        assert walked.items[0] == expected[0] and walked.next_cursor is None


async def test_plain_pages_are_scoped_to_the_tenant(pgstack_db: Database, path: list[bool]) -> None:
    # proves: R7
    await book(pgstack_db, a1_a3=True)
    with tenant_context(GLOBEX):
        async with pgstack_db.session() as session:
            page = await Repository(session, Booking).page(sort="title", plain=True)
            assert [b["title"] for b in page.items] == ["g1"] and page.total == 1
            assert page.items[0]["tenant_id"] == GLOBEX
        async with pgstack_db.session() as session:
            after = await Repository(session, Booking).page_after(sort="title", plain=True)
            assert [b["title"] for b in after.items] == ["g1"]
    async with pgstack_db.session() as session:
        with pytest.raises(TenantScopeError):
            await Repository(session, Booking).page_after(plain=True)
