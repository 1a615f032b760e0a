"""Bulk writes: create_many, upsert_many, update_many and delete_many.

create_many on both its COPY and INSERT paths; upsert_many in one statement, with and
without returning objects, for column types that travel as arrays and for those that cannot.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    CHAR,
    JSON,
    Enum,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    func,
    literal_column,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.crypto import KeyRing
from pgstack.db.database import Database
from pgstack.errors import ConflictError, EncryptionError, InvalidQueryError, TenantScopeError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    Email,
    EncryptedText,
    ModelMixin,
    SoftDelete,
    TenantScoped,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
    acting_as,
    all_tenants,
    tenant_context,
)
from pgstack.repository import Eq, Ge, In, Lt
from pgstack.testing import assert_max_queries

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class BulkBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Reading(UUIDPrimaryKey, Timestamped, Audited, SoftDelete, Versioned, BulkBase):
    __tablename__ = "bulk_readings"
    sensor: Mapped[str] = mapped_column(String(40), unique=True)
    value: Mapped[int]
    unit: Mapped[str] = mapped_column(default="C")
    owner: Mapped[str | None] = mapped_column(Email())
    note: Mapped[str | None] = mapped_column(EncryptedText())
    meta: Mapped[dict[str, Any] | None]


class Readings(Repository[Reading]):
    model = Reading


class Mood(enum.Enum):
    calm = "c"
    stormy = "s"


class Gadget(UUIDPrimaryKey, Timestamped, BulkBase):
    """Column types that need converting on the way in: each must arrive as a VALUES row's."""

    __tablename__ = "bulk_gadgets"
    code: Mapped[str] = mapped_column(String(12), unique=True)
    grade: Mapped[str | None] = mapped_column(CHAR(3))
    contact: Mapped[str | None] = mapped_column(Email())
    secret: Mapped[str | None] = mapped_column(EncryptedText())
    spec: Mapped[dict[str, Any] | None]
    parts: Mapped[list[Any] | None]
    loose: Mapped[Any] = mapped_column(JSON, nullable=True)
    mood: Mapped[Mood | None] = mapped_column(Enum(Mood, name="bulk_mood"))
    label: Mapped[Mood | None] = mapped_column(Enum(Mood, native_enum=False))
    price: Mapped[Decimal | None] = mapped_column(Numeric(8, 2))
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    seen: Mapped[datetime | None]


class Tagged(UUIDPrimaryKey, BulkBase):
    """An ARRAY column, which cannot travel inside an array parameter."""

    __tablename__ = "bulk_tagged"
    code: Mapped[str] = mapped_column(String(8), unique=True)
    tags: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    extra: Mapped[dict[str, Any] | None]


def _doubled(context: Any) -> int:
    return int(context.get_current_parameters()["value"]) * 2


def _tenant_seen(context: Any) -> str:
    return str(context.get_current_parameters()["tenant_id"])


class Tally(TenantScoped, BulkBase):
    """Tenant-scoped, keys given by the rows, only constant defaults (one of them converted)."""

    __tablename__ = "bulk_tally"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    count: Mapped[int]
    kind: Mapped[str] = mapped_column(default="plain")
    contact: Mapped[str | None] = mapped_column(Email(), default="Desk@Example.COM")


class Count(BulkBase):
    """Keys given by the rows, one constant default and no converted column."""

    __tablename__ = "bulk_count"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    count: Mapped[int]
    kind: Mapped[str] = mapped_column(default="plain")


class Ledger(UUIDPrimaryKey, TenantScoped, BulkBase):
    """Tenant-scoped, with defaults that read the row being inserted."""

    __tablename__ = "bulk_ledger"
    entry: Mapped[str] = mapped_column(String(20))
    value: Mapped[int]
    doubled: Mapped[int] = mapped_column(default=_doubled)
    tenant_seen: Mapped[str] = mapped_column(default=_tenant_seen)


ACME, GLOBEX = uuid.uuid4(), uuid.uuid4()


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(BulkBase.metadata)


def rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"sensor": f"s{i}", "value": i % 100} for i in range(start, start + count)]


async def test_create_many_of_100000_rows_fills_every_default(
    pgstack_db: Database, sql_log: list[str]
) -> None:
    # proves: R4, M2
    async with pgstack_db.transaction() as session:
        with acting_as("loader"):
            assert await Readings(session).create_many(rows(100_000)) == 100_000
    # COPY, not 100,000 INSERTs.
    assert not any(s.lstrip().upper().startswith("INSERT") for s in sql_log)
    async with pgstack_db.session() as session:
        summary = (
            await session.execute(
                text(
                    "SELECT count(*), count(DISTINCT id), min(version), max(version), "
                    "count(*) FILTER (WHERE unit = 'C'), count(*) FILTER (WHERE created_by = "
                    "'loader' AND updated_by = 'loader'), count(created_at), count(updated_at), "
                    "count(*) FILTER (WHERE deleted_at IS NULL), bool_and(created_at = now() "
                    "OR created_at < now()) FROM bulk_readings"
                )
            )
        ).one()
        assert tuple(summary) == (
            100_000,
            100_000,
            1,
            1,
            100_000,
            100_000,
            100_000,
            100_000,
            100_000,
            True,
        )
        # Client-side UUIDv7 keys follow insertion order.
        first, last = (
            await session.execute(
                text(
                    "SELECT (array_agg(id ORDER BY id))[1], (array_agg(id ORDER BY id))[100000] "
                    "FROM bulk_readings"
                )
            )
        ).one()
        assert first.version == 7 and first < last
        assert (await Readings(session).get_by(sensor="s99999")).value == 99


async def test_copy_applies_column_types_and_joins_the_transaction(
    pgstack_db: Database, encryption_ring: KeyRing
) -> None:
    # proves: R4, M4
    big = [
        {**row, "owner": "Mixed.Case@Example.COM", "note": "secret", "meta": {"k": [1]}}
        for row in rows(300)
    ]
    with pytest.raises(RuntimeError, match="abandon"):
        async with pgstack_db.transaction() as session:
            await Readings(session).create_many(big)
            assert await Readings(session).count() == 300
            raise RuntimeError("abandon")
    async with pgstack_db.session() as session:
        assert await Readings(session).count() == 0  # the COPY was rolled back with the rest
    async with pgstack_db.transaction() as session:
        await Readings(session).create_many(big)
    async with pgstack_db.session() as session:
        stored = await Readings(session).get_by(sensor="s5")
        assert (stored.owner, stored.note, stored.meta) == (
            "mixed.case@example.com",
            "secret",
            {"k": [1]},
        )
        raw = await session.scalar(text("SELECT note FROM bulk_readings LIMIT 1"))
        assert "secret" not in raw


async def test_small_batches_are_inserts_and_can_return_rows(
    pgstack_db: Database, sql_log: list[str]
) -> None:
    # proves: R4
    async with pgstack_db.transaction() as session:
        repo = Readings(session)
        assert await repo.create_many(rows(5)) == 5
        assert any(s.lstrip().upper().startswith("INSERT") for s in sql_log)
        created = await repo.create_many(rows(3, start=10), returning=True)
        assert [r.sensor for r in created] == ["s10", "s11", "s12"]
        assert all(r.created_at is not None and r.version == 1 for r in created)
        assert await repo.create_many([]) == 0


async def test_create_many_conflict_is_a_conflict_error(pgstack_db: Database) -> None:
    # proves: R4
    for count in (3, 200):  # INSERT path and COPY path
        with pytest.raises(ConflictError, match="uq_bulk_readings_sensor"):
            async with pgstack_db.transaction() as session:
                await Readings(session).create_many(rows(count) + rows(1))


async def test_copy_takes_rows_with_different_keys_and_objects_in_one_call(
    pgstack_db: Database, encryption_ring: KeyRing, sql_log: list[str]
) -> None:
    # proves: R4, M4
    mixed: list[Any] = []
    for i in range(600):
        row: Any = {"sensor": f"s{i}", "value": i}
        if i % 4 == 1:
            row = {"value": i, "sensor": f"s{i}", "unit": "K"}  # other keys, other order
        elif i % 4 == 2:
            row = {**row, "note": f"secret {i}" if i % 8 == 2 else None, "owner": "A@B.COM"}
        elif i % 4 == 3:
            row = Reading(sensor=f"s{i}", value=i, note=f"secret {i}")
        mixed.append(row)
    async with pgstack_db.transaction() as session:
        with acting_as("loader"):
            assert await Readings(session).create_many(iter(mixed)) == 600
    assert not any(s.lstrip().upper().startswith("INSERT") for s in sql_log)
    async with pgstack_db.session() as session:
        stored = {r.sensor: r for r in await Readings(session).list(limit=None)}
        assert len(stored) == 600
        for i in range(600):
            got = stored[f"s{i}"]
            assert (got.value, got.version, got.created_by) == (i, 1, "loader")
            assert got.unit == ("K" if i % 4 == 1 else "C")
            assert got.owner == ("a@b.com" if i % 4 == 2 else None)
            secret = i % 8 == 2 or i % 4 == 3
            assert got.note == (f"secret {i}" if secret else None)
        raw = await session.scalars(text("SELECT note FROM bulk_readings WHERE note IS NOT NULL"))
        assert not any("secret" in value for value in raw)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"sensor": "x", "value": 1, "bogus": 2}, "no field 'bogus'"),  # an extra key
        ({"sensor": "x", "bogus": 2}, "no field 'bogus'"),  # as many keys, one unknown
        (42, "must be mappings"),
    ],
)
async def test_copy_refuses_a_bad_row_anywhere_in_the_batch(
    pgstack_db: Database, bad: Any, message: str
) -> None:
    # proves: R4
    errors = []
    for count in (3, 600):  # INSERT path and COPY path: the same error
        batch: list[Any] = rows(count)
        batch[count - 2] = bad
        with pytest.raises(InvalidQueryError, match=message) as caught:
            async with pgstack_db.transaction() as session:
                await Readings(session).create_many(batch)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    async with pgstack_db.session() as session:
        assert await Readings(session).count() == 0


async def test_copy_stamps_the_tenant_and_refuses_other_tenants(pgstack_db: Database) -> None:
    # proves: R7, R4
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            given = [{"entry": f"a{i}", "value": i} for i in range(200)]
            given += [{"entry": f"t{i}", "value": i, "tenant_id": ACME} for i in range(200)]
            assert await Repository(session, Ledger).create_many(given) == 400
        batch: list[dict[str, Any]] = [{"entry": f"x{i}", "value": i} for i in range(300)]
        batch[150] = {"entry": "theirs", "value": 0, "tenant_id": GLOBEX}
        with pytest.raises(TenantScopeError, match="another tenant"):
            async with pgstack_db.transaction() as session:
                await Repository(session, Ledger).create_many(batch)
    with all_tenants():
        async with pgstack_db.transaction() as session:
            repo = Repository(session, Ledger)
            with pytest.raises(TenantScopeError, match="explicit tenant_id"):
                await repo.create_many([{"entry": f"n{i}", "value": i} for i in range(200)])
            await repo.create_many(
                [{"entry": f"g{i}", "value": i, "tenant_id": GLOBEX} for i in range(200)]
            )
    with pytest.raises(TenantScopeError, match="No tenant in context"):
        async with pgstack_db.transaction() as session:
            await Repository(session, Ledger).create_many(
                [{"entry": f"n{i}", "value": i} for i in range(200)]
            )
    async with pgstack_db.session() as session:
        summary = (
            await session.execute(
                text(
                    "SELECT tenant_id, count(*), bool_and(doubled = value * 2), "
                    "bool_and(tenant_seen = tenant_id::text) FROM bulk_ledger GROUP BY tenant_id"
                )
            )
        ).all()
    assert sorted(map(tuple, summary)) == sorted(
        [(ACME, 400, True, True), (GLOBEX, 200, True, True)]
    )


async def test_copy_fills_constant_defaults_and_the_tenant_of_rows_read_as_sent(
    pgstack_db: Database, sql_log: list[str]
) -> None:
    # proves: R4, R7
    with tenant_context(ACME):
        async with pgstack_db.transaction() as session:
            repo = Repository(session, Tally)
            # The tenant and the converted default follow each row's values ...
            assert await repo.create_many([{"id": i, "count": i} for i in range(200)]) == 200
            # ... as do the tenant and a constant default alone, or nothing at all.
            given = [{"id": i, "count": i, "contact": None} for i in range(200, 400)]
            assert await repo.create_many(given) == 200
            every = [
                {"id": i, "count": i, "contact": "A@B.COM", "kind": "full", "tenant_id": ACME}
                for i in range(400, 600)
            ]
            assert await repo.create_many(every) == 200
    async with pgstack_db.transaction() as session:
        counts = Repository(session, Count)
        assert await counts.create_many([{"id": i, "count": i} for i in range(200)]) == 200
        full = [{"id": i, "count": i, "kind": "full"} for i in range(200, 400)]
        assert await counts.create_many(full) == 200
    assert not any(s.lstrip().upper().startswith("INSERT") for s in sql_log)
    async with pgstack_db.session() as session:
        stored = (
            await session.execute(
                text("SELECT id, count, kind, contact, tenant_id FROM bulk_tally ORDER BY id")
            )
        ).all()
    assert [tuple(row) for row in stored] == [
        (i, i, "plain", "desk@example.com", ACME) for i in range(200)
    ] + [(i, i, "plain", None, ACME) for i in range(200, 400)] + [
        (i, i, "full", "a@b.com", ACME) for i in range(400, 600)
    ]
    async with pgstack_db.session() as session:
        counted = await session.execute(text("SELECT id, count, kind FROM bulk_count ORDER BY id"))
    assert [tuple(row) for row in counted] == [(i, i, "plain") for i in range(200)] + [
        (i, i, "full") for i in range(200, 400)
    ]


async def test_upsert_many_is_one_statement_and_returns_rows_in_order(
    pgstack_db: Database, sql_log: list[str]
) -> None:
    # proves: R4
    async with pgstack_db.transaction() as session:
        repo = Readings(session)
        await repo.create_many(rows(3))
        sql_log.clear()
        batch = [{"sensor": f"s{i}", "value": 500 + i} for i in (4, 1, 3, 0)]
        upserted = await repo.upsert_many(batch, on=["sensor"])
        assert len([s for s in sql_log if "ON CONFLICT" in s]) == 1
        assert not any(s.lstrip().upper().startswith("SELECT") for s in sql_log)
        assert [(r.sensor, r.value) for r in upserted] == [(b["sensor"], b["value"]) for b in batch]
        versions = {r.sensor: r.version for r in upserted}
        assert versions == {"s4": 1, "s1": 2, "s3": 1, "s0": 2}
        assert await repo.count() == 5


async def test_upsert_many_refuses_duplicate_keys_and_uneven_rows(pgstack_db: Database) -> None:
    # proves: R4
    with pytest.raises(InvalidQueryError, match="same Reading key twice"):
        async with pgstack_db.transaction() as session:
            await Readings(session).upsert_many(
                [{"sensor": "a", "value": 1}, {"sensor": "a", "value": 2}], on=["sensor"]
            )
    async with pgstack_db.transaction() as session:
        with pytest.raises(InvalidQueryError, match="same fields"):
            await Readings(session).upsert_many(
                [{"sensor": "a", "value": 1}, {"sensor": "b"}], on=["sensor"]
            )


async def test_update_many_moves_updated_at_version_and_actor(pgstack_db: Database) -> None:
    # proves: R4, M2
    async with pgstack_db.transaction() as session:
        await Readings(session).create_many(rows(10))
    async with pgstack_db.session() as session:
        before = {r.sensor: r for r in await Readings(session).list()}
    async with pgstack_db.transaction() as session:
        with acting_as("bulk-editor"):
            changed = await Readings(session).update_many({"unit": "F"}, Lt("value", 4))
        assert changed == 4
    async with pgstack_db.session() as session:
        for reading in await Readings(session).list():
            old = before[reading.sensor]
            if reading.value < 4:
                assert reading.unit == "F" and reading.version == 2
                assert reading.updated_at > old.updated_at
                assert reading.updated_by == "bulk-editor"
            else:
                assert reading.unit == "C" and reading.version == 1
                assert reading.updated_at == old.updated_at


async def test_bulk_verbs_without_filters_need_all_rows(pgstack_db: Database) -> None:
    # proves: R4
    async with pgstack_db.transaction() as session:
        repo = Readings(session)
        await repo.create_many(rows(4))
        with pytest.raises(InvalidQueryError, match="all_rows=True"):
            await repo.update_many({"unit": "K"})
        with pytest.raises(InvalidQueryError, match="all_rows=True"):
            await repo.delete_many()
        assert await repo.update_many({"unit": "K"}, all_rows=True) == 4
        assert await repo.delete_many(In("sensor", ["s0", "s1"]), hard=True) == 2
        assert await repo.delete_many(Ge("value", 0)) == 2  # soft
        assert await repo.count() == 0 and await repo.count(include_deleted=True) == 2
        assert await repo.delete_many(Eq("sensor", "s2"), hard=True) == 1
        assert await repo.count(include_deleted=True) == 1


def gadget_rows(prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "code": f"{prefix}-full",
            "grade": "ab",
            "contact": "  Ada@Example.COM ",
            "secret": "open sesame",
            "spec": {"size": [1, None, {"deep": True}]},
            "parts": [[1, 2], "x"],
            "loose": None,
            "mood": Mood.stormy,
            "label": Mood.calm,
            "price": Decimal("12.345"),
            "blob": b"\x00\xff",
            "seen": datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))),
        },
        {
            "code": f"{prefix}-nulls",
            "grade": None,
            "contact": None,
            "secret": None,
            "spec": None,
            "parts": [],
            "loose": [1, "two"],
            "mood": None,
            "label": None,
            "price": None,
            "blob": None,
            "seen": None,
        },
    ]


GADGET_FIELDS = ("grade", "contact", "secret", "spec", "parts", "loose")
GADGET_FIELDS += ("mood", "label", "price", "blob", "seen")


def gadget_values(gadget: Gadget) -> tuple[Any, ...]:
    return tuple(getattr(gadget, name) for name in GADGET_FIELDS)


async def stored_gadgets(db: Database) -> dict[str, tuple[Any, ...]]:
    """What the table holds, read back as text, by code without its prefix."""
    async with db.session() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT code, grade, contact, spec::text, parts::text, loose::text, "
                    "loose IS NULL, mood::text, label, price::text, blob, seen "
                    "FROM bulk_gadgets"
                )
            )
        ).all()
    return {row[0].split("-", 1)[1]: tuple(row[1:]) for row in rows}


@pytest.mark.parametrize("returning", [False, True])
async def test_upsert_many_stores_every_column_type_as_a_single_upsert_does(
    pgstack_db: Database, encryption_ring: KeyRing, sql_log: list[str], returning: bool
) -> None:
    # proves: R4, M4
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Gadget)
        for row in gadget_rows("one"):
            await repo.upsert(row, on=["code"])  # the multi-row VALUES statement, one row
    expected = await stored_gadgets(pgstack_db)
    async with pgstack_db.transaction() as session:
        await session.execute(text("DELETE FROM bulk_gadgets"))
    sql_log.clear()
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Gadget)
        result = await repo.upsert_many(gadget_rows("many"), on=["code"], returning=returning)
        if returning:
            assert isinstance(result, list)
            assert [g.code for g in result] == ["many-full", "many-nulls"]
            made = {g.code: gadget_values(g) for g in result}
        else:
            assert result == 2
    assert [s for s in sql_log if "ON CONFLICT" in s] == [s for s in sql_log if "unnest(" in s]
    assert len([s for s in sql_log if "unnest(" in s]) == 1
    assert await stored_gadgets(pgstack_db) == expected
    async with pgstack_db.transaction() as session:
        read = {g.code: gadget_values(g) for g in await Repository(session, Gadget).list()}
        raw = await session.scalar(text("SELECT secret FROM bulk_gadgets WHERE code = 'many-full'"))
    assert "sesame" not in raw
    assert read["many-full"][:3] == ("ab ", "ada@example.com", "open sesame")
    assert read["many-full"][-1] == datetime(2024, 5, 1, 10, tzinfo=UTC)
    if returning:
        assert made == read  # the objects hold what the database holds


async def test_upsert_many_without_returning_counts_a_half_new_batch_in_one_statement(
    pgstack_db: Database, encryption_ring: KeyRing, sql_log: list[str]
) -> None:
    # proves: R4, M2
    async with pgstack_db.transaction() as session:
        with acting_as("loader"):
            await Readings(session).create_many(rows(750))
    before = await stamps(pgstack_db)
    batch = [
        {
            "sensor": f"s{i}",
            "value": 1_000 + i,
            "owner": f"Owner{i}@Example.COM",
            "note": f"note {i}",
            "meta": {"i": i, "tags": ["a", None]},
        }
        for i in range(1_500)
    ]
    sql_log.clear()
    async with pgstack_db.transaction() as session:
        with acting_as("merger"), assert_max_queries(pgstack_db, 1):
            assert (
                await Readings(session).upsert_many(batch, on=["sensor"], returning=False) == 1_500
            )
    assert len(sql_log) == 1 and "unnest(" in sql_log[0] and "RETURNING" not in sql_log[0]
    async with pgstack_db.session() as session:
        stored = {r.sensor: r for r in await Readings(session).list(limit=None)}
    assert len(stored) == 1_500
    for i, given in enumerate(batch):
        reading = stored[given["sensor"]]
        assert (reading.value, reading.owner, reading.note, reading.meta) == (
            given["value"],
            given["owner"].lower(),
            given["note"],
            given["meta"],
        )
        assert reading.updated_by == "merger" and reading.unit == "C"
        if i < 750:  # existed: updated in place
            created_at, created_by = before[given["sensor"]]
            assert (reading.version, reading.created_by) == (2, created_by)
            assert reading.created_at == created_at < reading.updated_at
        else:  # new
            assert (reading.version, reading.created_by) == (1, "merger")
            assert reading.created_at == reading.updated_at


async def stamps(db: Database) -> dict[str, tuple[datetime, str | None]]:
    async with db.session() as session:
        return {r.sensor: (r.created_at, r.created_by) for r in await Readings(session).list()}


async def test_upsert_many_of_more_than_1000_rows_returns_objects_from_one_statement(
    pgstack_db: Database, sql_log: list[str]
) -> None:
    # proves: R4
    async with pgstack_db.transaction() as session:
        await Readings(session).create_many(rows(600))
    batch = [{"sensor": f"s{i}", "value": i % 7} for i in reversed(range(1_200))]
    sql_log.clear()
    async with pgstack_db.transaction() as session:
        repo = Readings(session)
        with assert_max_queries(pgstack_db, 1):
            upserted = await repo.upsert_many(batch, on=["sensor"])
        assert len(sql_log) == 1 and "unnest(" in sql_log[0]
        assert [(r.sensor, r.value) for r in upserted] == [(b["sensor"], b["value"]) for b in batch]
        assert {r.version for r in upserted[:600]} == {1}  # s1199 .. s600 are new
        assert {r.version for r in upserted[600:]} == {2}
        assert await repo.count() == 1_200


@pytest.mark.parametrize("returning", [False, True])
async def test_upsert_many_brings_soft_deleted_rows_back(
    pgstack_db: Database, returning: bool
) -> None:
    # proves: R4
    async with pgstack_db.transaction() as session:
        repo = Readings(session)
        await repo.create_many(rows(4))
        assert await repo.delete_many(In("sensor", ["s1", "s2"])) == 2
        result = await repo.upsert_many(
            [{"sensor": f"s{i}", "value": 70 + i} for i in range(5)],
            on=["sensor"],
            returning=returning,
        )
        assert (len(result) if isinstance(result, list) else result) == 5
    async with pgstack_db.session() as session:
        visible = {r.sensor: r for r in await Readings(session).list()}
    assert sorted(visible) == ["s0", "s1", "s2", "s3", "s4"]
    assert all(r.deleted_at is None and r.value == 70 + int(s[1:]) for s, r in visible.items())
    assert visible["s1"].version == 3  # deleted (2), then restored by the upsert (3)


@pytest.mark.parametrize("returning", [False, True])
async def test_upsert_many_refuses_bad_input_alike_in_both_modes(
    pgstack_db: Database, encryption_ring: KeyRing, returning: bool
) -> None:
    # proves: R4
    with pytest.raises(InvalidQueryError, match="same Reading key twice"):
        async with pgstack_db.transaction() as session:
            await Readings(session).upsert_many(
                [{"sensor": "a", "value": 1}, {"sensor": "a", "value": 2}],
                on=["sensor"],
                returning=returning,
            )
    async with pgstack_db.transaction() as session:
        repo = Readings(session)
        with pytest.raises(InvalidQueryError, match="same fields"):
            await repo.upsert_many(
                [{"sensor": "a", "value": 1}, {"sensor": "b"}], on=["sensor"], returning=returning
            )
        with pytest.raises(InvalidQueryError, match="no field 'colour'"):
            await repo.upsert_many([{"sensor": "a", "colour": 1}], returning=returning)
        with pytest.raises(InvalidQueryError, match="no field 'serial'"):
            await repo.upsert_many(
                [{"sensor": "a", "value": 1}], on=["serial"], returning=returning
            )
        assert await repo.upsert_many([], returning=returning) == ([] if returning else 0)
    with pytest.raises(DBAPIError, match="value too long"):  # never cut short silently
        async with pgstack_db.transaction() as session:
            await Readings(session).upsert_many(
                [{"sensor": "x" * 41, "value": 1}], on=["sensor"], returning=returning
            )
    with pytest.raises(EncryptionError, match="stores text"):
        async with pgstack_db.transaction() as session:
            await Readings(session).upsert_many(
                [{"sensor": "a", "value": 1, "note": 42}], on=["sensor"], returning=returning
            )
    async with pgstack_db.session() as session:
        assert await Readings(session).count() == 0


@pytest.mark.parametrize("returning", [False, True])
async def test_upsert_many_sends_values_rows_for_array_columns(
    pgstack_db: Database, sql_log: list[str], returning: bool
) -> None:
    # proves: R4
    async with pgstack_db.transaction() as session:
        repo = Repository(session, Tagged)
        await repo.create(code="old", tags=[1], extra={"v": 1})
        sql_log.clear()
        result = await repo.upsert_many(
            [
                {"code": "old", "tags": [[1, 2], [3, 4]], "extra": {"v": [2]}},
                {"code": "new", "tags": None, "extra": None},
            ],
            on=["code"],
            returning=returning,
        )
        assert (len(result) if isinstance(result, list) else result) == 2
        assert not any("unnest(" in s for s in sql_log)
    async with pgstack_db.session() as session:
        stored = {t.code: (t.tags, t.extra) for t in await Repository(session, Tagged).list()}
    assert stored == {"old": ([[1, 2], [3, 4]], {"v": [2]}), "new": (None, None)}


@pytest.mark.parametrize("count", [3, 150])  # the INSERT path, and COPY declining the batch
@pytest.mark.parametrize("returning", [False, True])
async def test_create_many_takes_sql_expression_values(
    pgstack_db: Database, count: int, returning: bool
) -> None:
    # proves: R4
    batch = rows(count)
    batch[0]["value"] = literal_column("40 + 2")
    batch[-1]["unit"] = func.upper(literal_column("'k'"))
    async with pgstack_db.transaction() as session:
        created = await Readings(session).create_many(batch, returning=returning)
        if returning:
            assert isinstance(created, list)
            assert [r.sensor for r in created] == [row["sensor"] for row in batch]
            assert (created[0].value, created[-1].unit, created[1].unit) == (42, "K", "C")
        else:
            assert created == count
    async with pgstack_db.session() as session:
        readings = Readings(session)
        assert await readings.count() == count
        assert (await readings.get_by(sensor="s0")).value == 42
        assert (await readings.get_by(sensor=f"s{count - 1}")).unit == "K"
        assert (await readings.get_by(sensor="s1")).version == 1
