"""`verify` trusts nothing in the database: it recomputes hashes in Python, and checks what
remains after `archive` against the anchor archive recorded."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from pgstack.audit import AuditLog, archive
from pgstack.db.database import Database
from pgstack.orm.context import acting_as, request_context, tenant_context

from .conftest import ACME, Roles

# Everything the canonical form must escape or keep exactly as PostgreSQL prints it.
HOSTILE = {
    "quote": 'say "hi"',
    "backslash": "C:\\temp\\new",
    "controls": "tab\there\nline\r\x01\x1f\b\f",
    "unicode": "ünïcödé € 日本 😀",
    "slash": "</script>",
    "numbers": [1, 1.0, 1e3, -0.5, 12345678901234567890, 0.1],
    "nested": {"null": None, "list": [None, True, False, {"": ""}], "z": {}, "a": []},
    "long key name that sorts late": 1,
    "b": 2,
}


async def test_python_hashes_match_the_database_on_hostile_content(app_db: Database) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    with acting_as('ro"ot\\'), request_context(request_id="r-1", ip="::1", user_agent="ü\x7f"):
        await audit.record(
            'weird "action" \\ \n',
            description="\x02 control",
            request_data=HOSTILE,
            response_data=[HOSTILE, None, "x"],
            changes={"title": {"old": None, "new": "é"}},
        )
        await audit.record("json.null", request_data=None, response_data={"v": None})
    with tenant_context(ACME):
        await audit.record("tenant.entry", outcome="partial", error="x" * 5000)
    assert (await audit.verify()).ok
    report = await audit.verify(ACME)
    assert report.ok and report.checked == 1


async def test_a_replaced_hash_function_does_not_hide_an_altered_row(
    roles: Roles, app_db: Database
) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    for n in range(4):
        await audit.record("service.tick", resource_id=str(n))
    admin = await roles.conn("admin")
    try:
        # The attacker makes the database vouch for any row, then changes one.
        await admin.execute(
            "CREATE OR REPLACE FUNCTION pgstack_audit_hash(e audit_log) RETURNS text "
            "LANGUAGE sql STABLE AS $$ SELECT e.hash $$"
        )
        await admin.execute("SET session_replication_role = replica")
        target = await admin.fetchval(
            "UPDATE audit_log SET actor_id = 'someone-else' "
            "WHERE tenant_id IS NULL AND seq = 2 RETURNING id"
        )
        fooled = await admin.fetchval(
            "SELECT bool_and(hash = pgstack_audit_hash(e)) FROM audit_log e"
        )
        assert fooled is True  # a check done by the database would pass
    finally:
        await admin.close()
    report = await audit.verify()
    assert not report.ok
    assert (report.broken_id, report.broken_seq) == (target, 2)
    assert report.reason is not None and "altered" in report.reason


async def test_a_reforged_link_is_found(roles: Roles, app_db: Database) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    for n in range(3):
        await audit.record("service.tick", resource_id=str(n))
    admin = await roles.conn("admin")
    try:
        await admin.execute("SET session_replication_role = replica")
        # Entry 3 is pointed at a made-up predecessor and re-hashed so its own hash fits.
        await admin.execute(
            "UPDATE audit_log SET prev_hash = repeat('a', 64) WHERE tenant_id IS NULL AND seq = 3"
        )
        await admin.execute(
            "UPDATE audit_log e SET hash = pgstack_audit_hash(e) "
            "WHERE tenant_id IS NULL AND seq = 3"
        )
    finally:
        await admin.close()
    report = await audit.verify()
    assert not report.ok and report.broken_seq == 3
    assert report.reason == "it does not link to the entry before it"


async def _archive(roles: Roles) -> list[str]:
    owner_db = Database(roles.settings(roles.owner))
    await owner_db.connect()
    try:
        async with owner_db.engine.begin() as conn:
            return [p.name for p in await archive(conn, before=datetime(2020, 6, 1, tzinfo=UTC))]
    finally:
        await owner_db.disconnect()


async def test_archive_records_an_anchor_and_verify_checks_the_first_remaining_entry(
    roles: Roles, app_db: Database
) -> None:
    # proves: A2
    await roles.old_month(3)
    audit = AuditLog(app_db)
    for n in range(3):
        await audit.record("service.tick", resource_id=str(n))
    assert await _archive(roles) == ["audit_log_y2020m05"]
    admin = await roles.conn("admin")
    try:
        anchor = await admin.fetchrow("SELECT chain, seq, archived_from FROM audit_anchors")
        assert tuple(anchor) == ("global", 3, "audit_log_y2020m05")
    finally:
        await admin.close()
    report = await audit.verify()
    assert report.ok, report
    assert (report.checked, report.first_seq, report.last_seq) == (3, 4, 6)

    # The first remaining entry removed: its successor now comes first, and without the
    # anchor nothing would say that #4 ever existed.
    admin = await roles.conn("admin")
    try:
        await admin.execute("SET session_replication_role = replica")
        await admin.execute("DELETE FROM audit_log WHERE tenant_id IS NULL AND seq = 4")
        fifth = await admin.fetchval("SELECT id FROM audit_log WHERE tenant_id IS NULL AND seq = 5")
    finally:
        await admin.close()
    report = await audit.verify()
    assert not report.ok
    assert (report.broken_id, report.broken_seq) == (fifth, 5)
    assert report.reason is not None and "last archived entry is #3" in report.reason


async def test_first_remaining_entry_relinked_is_found(roles: Roles, app_db: Database) -> None:
    # proves: A2
    await roles.old_month(2)
    audit = AuditLog(app_db)
    await audit.record("service.tick")
    await _archive(roles)
    admin = await roles.conn("admin")
    try:
        await admin.execute("SET session_replication_role = replica")
        await admin.execute(
            "UPDATE audit_log SET prev_hash = repeat('0', 64) WHERE tenant_id IS NULL AND seq = 3"
        )
        await admin.execute(
            "UPDATE audit_log e SET hash = pgstack_audit_hash(e) "
            "WHERE tenant_id IS NULL AND seq = 3"
        )
    finally:
        await admin.close()
    report = await audit.verify()
    assert not report.ok and report.broken_seq == 3
    assert report.reason is not None and "last archived entry" in report.reason


async def test_a_chain_cut_short_without_an_anchor_is_found(roles: Roles, app_db: Database) -> None:
    # proves: A2
    audit = AuditLog(app_db)
    for n in range(3):
        await audit.record("service.tick", resource_id=str(n))
    admin = await roles.conn("admin")
    try:
        await admin.execute("SET session_replication_role = replica")
        await admin.execute("DELETE FROM audit_log WHERE tenant_id IS NULL AND seq = 1")
    finally:
        await admin.close()
    report = await audit.verify()
    assert not report.ok and report.broken_seq == 2
    assert report.reason is not None and "no archive anchor" in report.reason


@pytest.mark.parametrize("who", ["app", "owner"])
async def test_anchors_cannot_be_changed(roles: Roles, who: str) -> None:
    # proves: A2
    await roles.old_month(1)
    await _archive(roles)
    conn = await roles.conn(who)
    try:
        for statement in (
            "UPDATE audit_anchors SET hash = repeat('0', 64)",
            "DELETE FROM audit_anchors",
            "TRUNCATE audit_anchors",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        if who == "app":
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO audit_anchors (chain, seq, hash, archived_from) "
                    "VALUES ('global', 99, 'x', 'forged')"
                )
        assert await conn.fetchval("SELECT count(*) FROM audit_anchors") == 1
    finally:
        await conn.close()
