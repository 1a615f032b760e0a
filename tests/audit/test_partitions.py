"""Monthly partitions: made ahead by `maintain`, rows roll over at the month boundary,
old months are detached (and exported) by `archive`; the CLI verbs around them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from pgstack.audit import AuditLog, maintain, partitions
from pgstack.db.database import Database

from .conftest import Roles, cli

BOUNDARY = datetime(2031, 2, 1, tzinfo=UTC)


async def _where(conn: asyncpg.Connection, moment: datetime) -> str:
    async with conn.transaction():
        return str(
            await conn.fetchval(
                "INSERT INTO audit_log (action, occurred_at) VALUES ('clock.tick', $1) "
                "RETURNING tableoid::regclass::text",
                moment,
            )
        )


async def test_partitions_roll_over_at_the_month_boundary(roles: Roles) -> None:
    # proves: A4
    owner_db = Database(roles.settings(roles.owner))
    await owner_db.connect()
    try:
        async with owner_db.engine.begin() as conn:
            made = await maintain(
                conn, now=datetime(2031, 1, 31, 23, 59, tzinfo=UTC), months_ahead=1
            )
        assert made == ["audit_log_y2031m01", "audit_log_y2031m02"]
        async with owner_db.engine.begin() as conn:
            again = await maintain(
                conn, now=datetime(2031, 1, 31, 23, 59, tzinfo=UTC), months_ahead=1
            )
            names = [p.name for p in await partitions(conn)]
        assert again == []  # idempotent
        assert {"audit_log_y2031m01", "audit_log_y2031m02"} <= set(names)
    finally:
        await owner_db.disconnect()
    app = await roles.conn("app")
    try:
        last = await _where(app, datetime(2031, 1, 31, 23, 59, 59, 999999, tzinfo=UTC))
        first = await _where(app, BOUNDARY)
        assert (last, first) == ("audit_log_y2031m01", "audit_log_y2031m02")
        # A month nobody made is refused loudly, never silently dropped.
        with pytest.raises(asyncpg.PostgresError, match="no partition"):
            await _where(app, datetime(2031, 6, 1, tzinfo=UTC))
    finally:
        await app.close()


async def test_the_application_role_cannot_make_partitions(roles: Roles) -> None:
    # proves: A2
    app = await roles.conn("app")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("SELECT pgstack_audit_partition('2040-01-01')")
    finally:
        await app.close()


async def test_cli_maintain_archive_export_and_verify(
    roles: Roles, app_db: Database, tmp_path: Path
) -> None:
    # proves: A4
    made = cli("audit", "maintain", "--months-ahead", "2", env=roles.env)
    assert made.exit_code == 0, made.output
    owner = await roles.conn("owner")
    try:
        await owner.execute("SELECT pgstack_audit_partition('2020-05-01')")
    finally:
        await owner.close()
    app = await roles.conn("app")
    try:
        await _where(app, datetime(2020, 5, 17, tzinfo=UTC))
    finally:
        await app.close()
    await AuditLog(app_db).record("service.started")
    tail = cli("audit", "tail", "--json", env=roles.env)
    assert tail.exit_code == 0, tail.output
    actions = [row["action"] for row in json.loads(tail.output)]
    assert actions[:2] == ["service.started", "clock.tick"]

    out = tmp_path / "export"
    archived = cli(
        "audit", "archive", "--before", "2020-06-01", "--export", str(out), env=roles.env
    )
    assert archived.exit_code == 0, archived.output
    assert "detached audit_log_y2020m05" in archived.output
    lines = (out / "audit_log_y2020m05.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["clock.tick"]
    tail = cli("audit", "tail", "--json", env=roles.env)
    assert [row["action"] for row in json.loads(tail.output)] == ["service.started"]
    # The chain now starts after the archived month; what remains is unbroken.
    verified = cli("audit", "verify", env=roles.env)
    assert verified.exit_code == 0, verified.output
    assert "unbroken" in verified.output


async def test_doctor_warns_when_this_or_next_months_partition_is_missing(
    roles: Roles, app_db: Database
) -> None:
    # proves: A4
    from pgstack.db.doctor import audit_partitions, diagnose

    async def findings() -> list[tuple[str, str, str]]:
        found = await diagnose(app_db, checks=(audit_partitions,))
        return [(f.id, f.severity, f.evidence) for f in found]

    assert await findings() == []
    admin = await roles.conn("admin")
    try:
        this, following = await admin.fetchrow(
            "SELECT to_char(m, 'YYYY-MM'), to_char(m + interval '1 month', 'YYYY-MM') "
            "FROM date_trunc('month', now() AT TIME ZONE 'UTC') AS m"
        )
        names = [f"audit_log_y{m[:4]}m{m[5:]}" for m in (this, following)]
        await admin.execute(f'DROP TABLE "{names[1]}"')
        assert await findings() == [
            ("audit.partition-missing", "warn", f"no partition for next month ({following})")
        ]
        [finding] = await diagnose(app_db, checks=(audit_partitions,))
        assert "pgstack audit maintain" in finding.fix
        await admin.execute(f'DROP TABLE "{names[0]}"')
        assert [(f[1], f[2]) for f in await findings()] == [
            ("error", f"no partition for this month ({this})"),
            ("warn", f"no partition for next month ({following})"),
        ]
    finally:
        await admin.close()
    made = cli("audit", "maintain", env=roles.env)
    assert made.exit_code == 0, made.output
    assert await findings() == []
