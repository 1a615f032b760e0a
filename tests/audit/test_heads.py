"""A chain's head within one transaction: kept for the transaction, written once at its end.

A bulk write to an audited table must not update the chain's head row once per entry (each
update left a version the next lookup stepped over: the n-th entry cost O(n)), and what the
transaction keeps must never let two entries take the same place in a chain: across
chains, savepoints, repeatable-read writers and a setting forged by the session itself."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from pgstack.audit import AuditLog
from pgstack.db.database import Database
from pgstack.orm.context import tenant_context

from .conftest import ACME, GLOBEX, Roles

_SCOPE = "SELECT set_config('pgstack.tenant_id', $1, true)"
_NOTES = (
    "INSERT INTO audit_notes (id, tenant_id, title) "
    "SELECT gen_random_uuid(), $1, 'note ' || n FROM generate_series(1, $2) AS n"
)
_HEAD_WRITES = (
    "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_xact_user_tables "
    "WHERE relname = 'audit_chain_heads'"
)


async def _verified(db: Database, *tenants: uuid.UUID) -> None:
    for tenant in tenants:
        with tenant_context(tenant):
            report = await AuditLog(db).verify(tenant)
        assert report.ok, report


async def _count(roles: Roles, tenant: uuid.UUID) -> int:
    admin = await roles.conn("admin")  # a superuser: row-level security does not hide rows
    try:
        sql = "SELECT count(*) FROM audit_log WHERE tenant_id = $1"
        return int(await admin.fetchval(sql, tenant))
    finally:
        await admin.close()


async def test_a_bulk_write_writes_the_head_twice_not_per_entry(
    roles: Roles, app_db: Database
) -> None:
    # proves: A2, A3
    conn = await roles.conn("app")
    try:
        async with conn.transaction():
            await conn.execute(_SCOPE, str(ACME))
            await conn.execute(_NOTES, ACME, 400)
            await conn.execute(_NOTES, ACME, 100)
            assert await conn.fetchval(_HEAD_WRITES) == 1  # the chain's first entry
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # what COMMIT does
            assert await conn.fetchval(_HEAD_WRITES) == 2  # the last
        head = await roles.conn("admin")
        try:
            row = await head.fetchrow(
                "SELECT seq, hash FROM audit_chain_heads WHERE chain = $1", str(ACME)
            )
            last = await head.fetchrow(
                "SELECT seq, hash FROM audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
                ACME,
            )
        finally:
            await head.close()
        assert row is not None and last is not None
        assert (row["seq"], row["hash"]) == (last["seq"], last["hash"]) and row["seq"] == 500
    finally:
        await conn.close()
    await _verified(app_db, ACME)


async def test_chains_interleaved_in_one_transaction_stay_unbroken(
    roles: Roles, app_db: Database
) -> None:
    # proves: A2
    conn = await roles.conn("admin")  # writes both tenants' notes in one transaction
    try:
        async with conn.transaction():
            for tenant in (ACME, GLOBEX, ACME, GLOBEX, ACME):
                await conn.execute(_NOTES, tenant, 3)
            await conn.execute(
                "INSERT INTO audit_notes (id, tenant_id, title) VALUES "
                "(gen_random_uuid(), $1, 'a'), (gen_random_uuid(), $2, 'b'),"
                " (gen_random_uuid(), $1, 'c')",
                ACME,
                GLOBEX,
            )
    finally:
        await conn.close()
    assert await _count(roles, ACME) == 9 + 2 and await _count(roles, GLOBEX) == 6 + 1
    await _verified(app_db, ACME, GLOBEX)


async def test_a_savepoint_rolled_back_takes_its_entries_and_the_head_with_it(
    roles: Roles, app_db: Database
) -> None:
    # proves: A2
    conn = await roles.conn("app")
    try:
        async with conn.transaction():
            await conn.execute(_SCOPE, str(ACME))
            await conn.execute(_NOTES, ACME, 2)
            with pytest.raises(asyncpg.CheckViolationError):
                async with conn.transaction():  # a savepoint
                    await conn.execute(_NOTES, ACME, 3)
                    await conn.execute(
                        "INSERT INTO audit_log (tenant_id, action, category) "
                        "VALUES ($1, 'x', 'Not A Category')",
                        ACME,
                    )
            await conn.execute(_NOTES, ACME, 1)
    finally:
        await conn.close()
    assert await _count(roles, ACME) == 3
    await _verified(app_db, ACME)


async def test_a_head_set_by_the_session_is_not_taken_for_the_transactions(
    roles: Roles, app_db: Database
) -> None:
    # proves: A2
    conn = await roles.conn("app")
    try:
        await conn.execute(_SCOPE.replace("true", "false"), str(ACME))
        await conn.execute(_NOTES, ACME, 2)
        # A value left in the session (not this transaction's): ignored.
        fake = f"1 {ACME} 1 {'f' * 64}"
        await conn.execute("SELECT set_config('pgstack.audit_head', $1, false)", fake)
        await conn.execute(_NOTES, ACME, 2)
        await conn.execute("SELECT set_config('pgstack.audit_head', 'not a head', false)")
        await conn.execute(_NOTES, ACME, 1)
    finally:
        await conn.close()
    await _verified(app_db, ACME)


async def test_repeatable_read_writers_never_fork_a_chain(roles: Roles, app_db: Database) -> None:
    # proves: A2
    conns = [await roles.conn("app") for _ in range(6)]
    failures = 0

    async def writer(conn: asyncpg.Connection) -> None:
        nonlocal failures
        for _ in range(5):
            try:
                async with conn.transaction(isolation="repeatable_read"):
                    await conn.execute(_SCOPE, str(ACME))
                    await conn.fetchval("SELECT count(*) FROM audit_notes")  # the snapshot
                    await asyncio.sleep(0.01)
                    await conn.execute(_NOTES, ACME, 2)
            except asyncpg.SerializationError:
                failures += 1

    try:
        await asyncio.gather(*(writer(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    admin = await roles.conn("admin")
    try:
        sql = "SELECT seq FROM audit_log WHERE tenant_id = $1 ORDER BY seq"
        seqs = [row[0] for row in await admin.fetch(sql, ACME)]
    finally:
        await admin.close()
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 2 * (30 - failures)
    await _verified(app_db, ACME)


async def test_a_stale_snapshot_is_refused_not_chained(roles: Roles, app_db: Database) -> None:
    # proves: A2
    stale, fresh = await roles.conn("app"), await roles.conn("app")
    try:
        await fresh.execute(_SCOPE.replace("true", "false"), str(ACME))
        await fresh.execute(_NOTES, ACME, 1)
        with pytest.raises(asyncpg.SerializationError):
            async with stale.transaction(isolation="repeatable_read"):
                await stale.execute(_SCOPE, str(ACME))
                await stale.fetchval("SELECT count(*) FROM audit_notes")  # takes the snapshot
                await fresh.execute(_NOTES, ACME, 1)  # the head moves after it
                await stale.execute(_NOTES, ACME, 1)
    finally:
        await stale.close()
        await fresh.close()
    assert await _count(roles, ACME) == 2
    await _verified(app_db, ACME)
