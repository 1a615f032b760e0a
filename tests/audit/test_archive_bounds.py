"""`archive` detaches only months that have ended: this month's partition takes every new
entry, so detaching it would make every audited write fail. Its export folder, an empty
archive, and `tail`/`verify` given a filter that matches nothing each say what happened."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from pgstack.audit import AuditLog, archive, partitions
from pgstack.audit.service import add_months, month_start
from pgstack.db.database import Database
from pgstack.errors import InvalidInputError

from .conftest import GLOBEX, Roles, cli


def _this_month() -> date:
    return month_start(datetime.now(UTC))


async def _attached(roles: Roles) -> list[str]:
    owner = await roles.conn("owner")
    try:
        rows = await owner.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'audit_log'::regclass ORDER BY 1"
        )
        return [r["relname"] for r in rows]
    finally:
        await owner.close()


async def _still_writes_and_verifies(roles: Roles, app_db: Database) -> None:
    """An audited write (by the service, and by an audited table's trigger) still works."""
    await AuditLog(app_db).record("service.after_archive")
    app = await roles.conn("app")
    try:
        await app.execute("INSERT INTO audit_items (id, name) VALUES ($1, 'kept')", uuid.uuid4())
    finally:
        await app.close()
    verified = cli("audit", "verify", env=roles.env)
    assert verified.exit_code == 0, verified.output
    assert "unbroken" in verified.output
    assert (await AuditLog(app_db).verify()).ok


async def test_cli_archive_refuses_this_month_and_later_and_writes_go_on(
    roles: Roles, app_db: Database
) -> None:
    await roles.old_month(action="clock.tick")
    await AuditLog(app_db).record("service.started")
    before = await _attached(roles)
    this_month = _this_month()
    for late in (
        add_months(this_month, 1).isoformat(),
        this_month.replace(day=2).isoformat(),
        "9999-12-31",
    ):
        refused = cli("audit", "archive", "--before", late, env=roles.env)
        assert refused.exit_code == 1, refused.output
        lines = refused.output.strip().splitlines()
        assert len(lines) == 1, refused.output
        assert lines[0].startswith("error: Refusing to archive before"), refused.output
        assert f"--before {this_month.isoformat()} or earlier" in lines[0]
        assert "detached" not in refused.output
        assert await _attached(roles) == before
    await _still_writes_and_verifies(roles, app_db)

    # Up to the first day of this month still archives every month that has ended.
    archived = cli("audit", "archive", "--before", this_month.isoformat(), env=roles.env)
    assert archived.exit_code == 0, archived.output
    assert archived.output.splitlines() == ["detached audit_log_y2020m05 (2020-05)"]
    assert await _attached(roles) == [name for name in before if name != "audit_log_y2020m05"]
    await _still_writes_and_verifies(roles, app_db)


async def test_python_archive_refuses_a_before_later_than_its_clocks_month(
    roles: Roles, app_db: Database
) -> None:
    await roles.old_month(action="clock.tick")
    owner_db = Database(roles.settings(roles.owner))
    await owner_db.connect()
    try:
        # A fixed clock: mid-June 2020, so May 2020 has ended and June has not.
        june = datetime(2020, 6, 15, 12, tzinfo=UTC)
        for late in (
            date(2020, 7, 1),
            date(2020, 6, 2),
            datetime(2020, 6, 1, 0, 0, 1, tzinfo=UTC),
            date(9999, 12, 31),
        ):
            async with owner_db.engine.begin() as conn:
                with pytest.raises(InvalidInputError, match="2020-06-01 or earlier"):
                    await archive(conn, before=late, now=june)
        # Without a clock: the current time.
        async with owner_db.engine.begin() as conn:
            with pytest.raises(InvalidInputError, match="this month"):
                await archive(conn, before=add_months(_this_month(), 1))
        async with owner_db.engine.begin() as conn:
            assert len(await partitions(conn)) == 3
        async with owner_db.engine.begin() as conn:
            done = await archive(conn, before=date(2020, 6, 1), now=june)
        assert [p.name for p in done] == ["audit_log_y2020m05"]
    finally:
        await owner_db.disconnect()
    await _still_writes_and_verifies(roles, app_db)


async def test_cli_archive_export_path_it_cannot_use_detaches_nothing(
    roles: Roles, app_db: Database, tmp_path: Path
) -> None:
    await roles.old_month(action="clock.tick")
    before = await _attached(roles)
    a_file = tmp_path / "taken"
    a_file.write_text("keep me\n")
    cases = {
        str(a_file): "is a file, not a folder",
        str(a_file / "sub" / "dir"): "cannot make that folder",
    }
    for export, says in cases.items():
        result = cli(
            "audit", "archive", "--before", "2020-06-01", "--export", export, env=roles.env
        )
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --export"), result.output
        assert says in lines[0] and "unexpected" not in lines[0]
        assert await _attached(roles) == before
    assert a_file.read_text() == "keep me\n"

    # An earlier export of the month is never overwritten.
    folder = tmp_path / "kept"
    folder.mkdir()
    (folder / "audit_log_y2020m05.jsonl").write_text("earlier\n")
    result = cli(
        "audit", "archive", "--before", "2020-06-01", "--export", str(folder), env=roles.env
    )
    assert result.exit_code == 1, result.output
    assert "exists already" in result.output
    assert (folder / "audit_log_y2020m05.jsonl").read_text() == "earlier\n"
    assert await _attached(roles) == before

    # Missing parent folders are made, as `db backup` makes them.
    nested = tmp_path / "new" / "audit"
    result = cli(
        "audit", "archive", "--before", "2020-06-01", "--export", str(nested), env=roles.env
    )
    assert result.exit_code == 0, result.output
    assert "detached audit_log_y2020m05" in result.output
    lines = (nested / "audit_log_y2020m05.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["clock.tick"]
    await _still_writes_and_verifies(roles, app_db)


async def test_cli_archive_with_nothing_to_detach_says_so(roles: Roles) -> None:
    before = await _attached(roles)
    result = cli("audit", "archive", "--before", "0001-01-01", env=roles.env)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("nothing detached: no partition ends by 0001-01-01")
    assert f"the oldest, {before[0]}" in result.output
    assert await _attached(roles) == before


async def test_a_bad_category_is_refused_and_verify_says_a_chain_is_empty(
    roles: Roles, app_db: Database
) -> None:
    # proves: A4, A2
    for bad in ("Bogus", "1x", "has space", "x" * 64):
        result = cli("audit", "tail", "--category", bad, env=roles.env)
        assert result.exit_code == 1, result.output
        assert "is not a category name" in result.output
    none = cli("audit", "tail", "--category", "bogus", env=roles.env)
    assert none.exit_code == 0, none.output
    assert none.output.strip() == "0 entries in category bogus"

    # The service refuses it too, where entries are read and where they are written.
    audit = AuditLog(app_db)
    with pytest.raises(InvalidInputError, match="is not a category name"):
        await audit.entries(category="Bogus")
    with pytest.raises(InvalidInputError, match="is not a category name"):
        await audit.record("bad.category", category="has space")

    for tenant in ("00000000-0000-0000-0000-000000000000", str(GLOBEX)):
        result = cli("audit", "verify", "--tenant", tenant, env=roles.env)
        assert result.exit_code == 0, result.output
        assert "unbroken" not in result.output
        assert "no entries to verify (none written for it, or all archived)" in result.output
