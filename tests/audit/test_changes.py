"""Automatic entries: an audited table writes one entry per row written, with field-level
diffs and no secret, whichever path wrote it — ORM, repository bulk paths, raw SQL."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from sqlalchemy import MetaData, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.audit import AuditLog, audit_options
from pgstack.db.database import Database
from pgstack.orm import NAMING_CONVENTION, TenantScoped, UUIDPrimaryKey
from pgstack.orm.context import acting_as, request_context, tenant_context
from pgstack.repository import Repository

from .conftest import ACME, Roles


class _Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Note(UUIDPrimaryKey, TenantScoped, _Base):
    """The audited table of conftest.NOTES, as an application maps it."""

    __tablename__ = "audit_notes"

    title: Mapped[str] = mapped_column(Text)
    api_secret: Mapped[str | None] = mapped_column(Text, info={"secret": True})


class Item(UUIDPrimaryKey, _Base):
    """An audited table without tenant (and without row-level security)."""

    __tablename__ = "audit_items"

    name: Mapped[str] = mapped_column(Text)


async def _entries(db: Database, **filters: Any) -> list[dict[str, Any]]:
    with tenant_context(ACME):
        page = await AuditLog(db).entries(resource_type="audit_notes", limit=500, **filters)
    return list(reversed(page.items))


def test_audit_options_read_key_and_secret_columns_from_the_model() -> None:
    # proves: A3
    assert audit_options(Note) == {"key": ("id",), "secret": ("api_secret",)}


async def test_an_update_writes_exactly_one_entry_with_the_diff_and_no_secret(
    app_db: Database,
) -> None:
    # proves: A3
    with tenant_context(ACME), acting_as("user-7"), request_context(request_id="req-42"):
        async with app_db.transaction() as session:
            note = await Repository(session, Note).create(title="draft", api_secret="s3cr3t-A")
        async with app_db.transaction() as session:
            await Repository(session, Note).update(note.id, title="final", api_secret="s3cr3t-B")
    entries = await _entries(app_db)
    assert [e["action"] for e in entries] == ["audit_notes.insert", "audit_notes.update"]
    update = entries[1]
    assert update["changes"] == {
        "title": {"old": "draft", "new": "final"},
        "api_secret": "changed",
    }
    assert (update["actor_id"], update["request_id"]) == ("user-7", "req-42")
    assert update["resource_id"] == str(note.id) and update["tenant_id"] == ACME
    assert "s3cr3t" not in str(entries)


async def test_a_rolled_back_write_leaves_no_entry(app_db: Database) -> None:
    # proves: A3
    with tenant_context(ACME):
        try:
            async with app_db.transaction() as session:
                await Repository(session, Note).create(title="never")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
    assert await _entries(app_db) == []


async def test_every_write_path_writes_its_entries(roles: Roles, app_db: Database) -> None:
    # proves: A3
    ids = [uuid.uuid4() for _ in range(3)]
    with tenant_context(ACME), acting_as("bulk-user"):
        async with app_db.transaction() as session:
            repo = Repository(session, Note)
            # A small batch: pipelined INSERTs.
            await repo.create_many([{"id": i, "title": f"small {n}"} for n, i in enumerate(ids)])
        async with app_db.transaction() as session:
            repo = Repository(session, Note)
            await repo.upsert_many(
                [{"id": ids[0], "title": "upserted"}, {"id": uuid.uuid4(), "title": "new one"}],
                on=["id"],
                update=["title"],
            )
            await repo.delete(ids[1])
    entries = await _entries(app_db)
    inserts = [e for e in entries if e["action"] == "audit_notes.insert"]
    assert len(inserts) == 3 + 1
    assert {e["actor_id"] for e in entries} == {"bulk-user"}
    [upserted] = [e for e in entries if e["action"] == "audit_notes.update"]
    assert upserted["changes"] == {"title": {"old": "small 0", "new": "upserted"}}
    [deleted] = [e for e in entries if e["action"] == "audit_notes.delete"]
    assert deleted["resource_id"] == str(ids[1])
    assert deleted["changes"]["title"] == {"old": "small 1"}

    # Raw SQL by the application role, outside pgstack: still audited; a no-op update not.
    conn: asyncpg.Connection = await roles.conn("app")
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('pgstack.tenant_id', $1, true)", str(ACME))
            await conn.execute("UPDATE audit_notes SET title = 'raw' WHERE id = $1", ids[2])
            await conn.execute("UPDATE audit_notes SET title = title WHERE id = $1", ids[2])
    finally:
        await conn.close()
    raw = await _entries(app_db, resource_id=str(ids[2]))
    assert [e["action"] for e in raw] == ["audit_notes.insert", "audit_notes.update"]
    assert raw[1]["actor_type"] == "system" and raw[1]["actor_id"] is None
    with tenant_context(ACME):
        assert (await AuditLog(app_db).verify(ACME)).ok


async def test_copy_writes_one_entry_per_row(app_db: Database) -> None:
    # proves: A3
    with acting_as("loader"):
        async with app_db.transaction() as session:
            rows = [{"name": f"copied {n}"} for n in range(600)]  # over the COPY threshold
            assert await Repository(session, Item).create_many(rows) == 600
    page = await AuditLog(app_db).entries(resource_type="audit_items", limit=500)
    assert len(page.items) == 500 and page.next is not None
    rest = await AuditLog(app_db).entries(resource_type="audit_items", after=page.next, limit=500)
    assert len(rest.items) == 100
    assert {e["action"] for e in page.items + rest.items} == {"audit_items.insert"}
    assert {e["actor_id"] for e in page.items} == {"loader"}
    assert (await AuditLog(app_db).verify()).ok
