"""Bulk writes: create_many, upsert_many, update_many and delete_many.

create_many on both its COPY and INSERT paths; upsert_many in one statement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import MetaData, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.crypto import KeyRing
from pgstack.db.database import Database
from pgstack.errors import ConflictError, InvalidQueryError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    Email,
    EncryptedText,
    ModelMixin,
    SoftDelete,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
    acting_as,
)
from pgstack.repository import Eq, Ge, In, Lt

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
