"""The audit log refuses changes, chains every entry and `verify` finds tampering."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pgstack.audit import AuditLog
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.orm.context import acting_as, tenant_context

from .conftest import ACME, GLOBEX, Roles, cli

REFUSALS = [
    "UPDATE audit_log SET action = 'forged'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
]


async def _partitions(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'audit_log'::regclass ORDER BY 1"
    )
    return [r["relname"] for r in rows]


@pytest.mark.parametrize("who", ["app", "owner"])
async def test_update_delete_truncate_refused_on_table_and_partitions(
    roles: Roles, app_db: Database, who: str
) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    await audit.record("test.written", description="first")
    conn = await roles.conn(who)
    try:
        parts = await _partitions(conn)
        assert len(parts) == 2  # this month and the next, made by the migration
        targets = ["audit_log", *parts]
        for target in targets:
            for statement in REFUSALS:
                sql = statement.replace("audit_log", f'"{target}"')
                with pytest.raises(asyncpg.PostgresError) as caught:
                    await conn.execute(sql)
                assert caught.value.sqlstate == "42501", sql
        # Nothing changed: the one entry is still there, as written.
        row = await conn.fetchrow("SELECT action, description FROM audit_log")
        if who == "app":
            assert row is not None and tuple(row) == ("test.written", "first")
    finally:
        await conn.close()


async def test_application_role_has_only_insert_and_select(roles: Roles) -> None:
    # proves: A2
    conn = await roles.conn("admin")
    try:
        app = roles.app.username
        rights = await conn.fetch(
            "SELECT p.privilege FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE',"
            "'TRUNCATE','REFERENCES','TRIGGER']) AS p(privilege) "
            "WHERE has_table_privilege($1, 'audit_log', p.privilege)",
            app,
        )
        assert sorted(r["privilege"] for r in rights) == ["INSERT", "SELECT"]
        for part in await _partitions(conn):
            direct = await conn.fetchval(
                "SELECT has_table_privilege($1, $2::regclass, 'SELECT')", app, part
            )
            assert direct is False, part  # partitions are reached through audit_log only
        heads = await conn.fetch(
            "SELECT p FROM unnest(ARRAY['INSERT','UPDATE','DELETE','TRUNCATE']) AS p "
            "WHERE has_table_privilege($1, 'audit_chain_heads', p)",
            app,
        )
        assert heads == []
    finally:
        await conn.close()


async def test_sealing_never_gives_a_role_a_right_it_did_not_hold(roles: Roles) -> None:
    # proves: A2 (a role that could only read the log must not come out able to write it)
    reader = f"pgstack_reader_{roles.app.username.rsplit('_', 1)[-1]}"
    admin = await roles.conn("admin")
    owner = await roles.conn("owner")
    try:
        await admin.execute(f'CREATE ROLE "{reader}"')
        await owner.execute(f'GRANT SELECT ON audit_log, audit_chain_heads TO "{reader}"')
        await owner.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON audit_log TO "{roles.app.username}"'
        )
        await owner.execute("SELECT pgstack_audit_seal('audit_log', 'SELECT, INSERT')")
        await owner.execute("SELECT pgstack_audit_seal('audit_chain_heads', 'SELECT')")
        check = (
            "SELECT array_agg(p ORDER BY p) FROM unnest(ARRAY['SELECT','INSERT','UPDATE',"
            "'DELETE','TRUNCATE']) AS p WHERE has_table_privilege($1, $2::regclass, p)"
        )
        assert await admin.fetchval(check, reader, "audit_log") == ["SELECT"]
        assert await admin.fetchval(check, reader, "audit_chain_heads") == ["SELECT"]
        assert await admin.fetchval(check, roles.app.username, "audit_log") == [
            "INSERT",
            "SELECT",
        ]
        forged = "INSERT INTO audit_log (action, category) VALUES ('forged', 'security')"
        await admin.execute(f'SET ROLE "{reader}"')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await admin.execute(forged)
        await admin.execute("RESET ROLE")
    finally:
        await owner.close()
        await admin.execute(f'DROP OWNED BY "{reader}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{reader}"')
        await admin.close()


async def test_verify_names_the_row_altered_by_a_superuser(roles: Roles, app_db: Database) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    with tenant_context(ACME):
        for n in range(5):
            await audit.record("note.touched", resource_id=str(n))
    assert (await audit.verify(ACME)).ok
    admin = await roles.conn("admin")
    try:
        target = await admin.fetchrow(
            "SELECT id, seq FROM audit_log WHERE tenant_id = $1 AND seq = 3", ACME
        )
        await admin.execute("SET session_replication_role = replica")  # triggers off
        await admin.execute(
            "UPDATE audit_log SET description = 'nothing happened' WHERE id = $1", target["id"]
        )
    finally:
        await admin.close()
    report = await audit.verify(ACME)
    assert not report.ok
    assert report.broken_id == target["id"] and report.broken_seq == 3
    assert report.reason is not None and "altered" in report.reason
    # Another tenant's chain is untouched by it.
    with tenant_context(GLOBEX):
        await audit.record("note.touched")
    assert (await audit.verify(GLOBEX)).ok


async def test_verify_finds_a_removed_entry(roles: Roles, app_db: Database) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    for n in range(4):
        await audit.record("service.tick", resource_id=str(n))
    admin = await roles.conn("admin")
    try:
        await admin.execute("SET session_replication_role = replica")
        await admin.execute("DELETE FROM audit_log WHERE tenant_id IS NULL AND seq = 2")
        third = await admin.fetchval("SELECT id FROM audit_log WHERE tenant_id IS NULL AND seq = 3")
        await admin.execute("DELETE FROM audit_log WHERE tenant_id IS NULL AND seq = 4")
    finally:
        await admin.close()
    report = await audit.verify()
    assert not report.ok and report.broken_seq == 3 and report.broken_id == third
    assert report.reason is not None and "missing" in report.reason


async def test_verify_finds_entries_removed_from_the_end(roles: Roles, app_db: Database) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    for n in range(3):
        await audit.record("service.tick", resource_id=str(n))
    admin = await roles.conn("admin")
    try:
        await admin.execute("SET session_replication_role = replica")
        await admin.execute("DELETE FROM audit_log WHERE tenant_id IS NULL AND seq = 3")
    finally:
        await admin.close()
    report = await audit.verify()
    assert not report.ok and report.broken_seq == 3


async def test_twenty_concurrent_writers_make_one_unbroken_chain(
    roles: Roles, app_db: Database
) -> None:
    # proves: A2
    audit = AuditLog(app_db)

    async def writer(n: int) -> None:
        with tenant_context(ACME), acting_as(f"user-{n}"):
            for step in range(5):
                await audit.record("note.written", resource_id=f"{n}-{step}")

    await asyncio.gather(*(writer(n) for n in range(20)))
    report = await audit.verify(ACME)
    assert report.ok, report
    assert (report.checked, report.first_seq, report.last_seq) == (100, 1, 100)
    conn = await roles.conn("admin")
    try:
        forks = await conn.fetchval(
            "SELECT count(*) FROM (SELECT prev_hash FROM audit_log WHERE tenant_id = $1 "
            "GROUP BY prev_hash HAVING count(*) > 1) f",
            ACME,
        )
        assert forks == 0
    finally:
        await conn.close()


async def test_chain_hash_does_not_depend_on_the_session_time_zone(
    roles: Roles, app_db: Database
) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    await audit.record("service.tick")
    conn = await roles.conn("app")
    try:
        await conn.execute("SET TimeZone = 'Pacific/Chatham'")
        ok = await conn.fetchval("SELECT bool_and(hash = pgstack_audit_hash(e)) FROM audit_log e")
        assert ok is True
    finally:
        await conn.close()


async def test_a_tenant_sees_only_its_own_entries(app_db: Database) -> None:
    # proves: A4
    audit = AuditLog(app_db)
    with tenant_context(ACME):
        await audit.record("note.written", description="acme's")
    with tenant_context(GLOBEX):
        await audit.record("note.written", description="globex's")
        page = await audit.entries()
    assert [e["description"] for e in page.items] == ["globex's"]
    assert [e["description"] for e in (await audit.entries(tenant_id=ACME)).items] == ["acme's"]


async def test_a_tenant_cannot_write_into_another_tenants_chain(roles: Roles) -> None:
    # proves: A2
    conn = await roles.conn("app")
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('pgstack.tenant_id', $1, true)", str(GLOBEX))
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO audit_log (tenant_id, action) VALUES ($1, 'forged')", ACME
                )
    finally:
        await conn.close()


_RIGHTS = (
    "SELECT p FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE','REFERENCES',"
    "'TRIGGER']) AS p WHERE has_table_privilege($1, $2::regclass, p) ORDER BY p"
)


async def test_db_init_run_again_leaves_the_audit_tables_append_only(roles: Roles) -> None:
    # proves: A2
    for _ in range(2):
        again = cli("db", "init", "--admin-url", asyncpg_dsn(roles.admin), env=roles.env)
        assert again.exit_code == 0, again.output
    conn = await roles.conn("admin")
    try:
        app = roles.app.username

        async def rights(table: str) -> list[str]:
            return [r["p"] for r in await conn.fetch(_RIGHTS, app, table)]

        assert await rights("audit_log") == ["INSERT", "SELECT"]
        assert await rights("audit_chain_heads") == ["SELECT"]
        assert await rights("audit_anchors") == ["SELECT"]
        for part in await _partitions(conn):
            assert await rights(part) == [], part
        # The other tables keep their data rights.
        assert await rights("tenants") == ["DELETE", "INSERT", "SELECT", "UPDATE"]
        assert "append-only" in again.output
    finally:
        await conn.close()
    # And the application role really cannot change an entry.
    conn = await roles.conn("app")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit_log SET action = 'forged'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit_chain_heads SET seq = 0")
    finally:
        await conn.close()
