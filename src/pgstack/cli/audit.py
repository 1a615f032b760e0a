"""`pgstack audit tail|verify|maintain|archive`: the audit log from the shell."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from pgstack.cli.main import JsonOpt, expected_failures, group, on_database

audit_app: typer.Typer = group("The audit log: recent entries, chain verification, partitions.")

TenantOpt = Annotated[
    uuid.UUID | None, typer.Option("--tenant", help="A tenant's id; without it, the global chain.")
]


def _owner(work: Any) -> Any:
    """Run `work(conn)` in one transaction as the schema owner (DATABASE_MIGRATION_URL)."""
    from pgstack.config import Settings
    from pgstack.db.database import Database
    from pgstack.migrations.api import migration_settings

    async def main() -> Any:
        async with Database(migration_settings(Settings())) as db, db.engine.begin() as conn:
            return await work(conn)

    return asyncio.run(main())


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date | uuid.UUID):
        return str(value)
    return value


@audit_app.command("tail")
@expected_failures
def tail(
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many entries.")] = 20,
    category: Annotated[
        str | None, typer.Option(help="Only this category (security, data).")
    ] = None,
    failures: Annotated[bool, typer.Option("--failures", help="Only failures.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The most recent entries, newest first."""
    from pgstack.audit import AuditLog

    page = on_database(
        lambda db: AuditLog(db).entries(
            tenant_id=tenant,
            category=category,
            outcome="failure" if failures else None,
            limit=limit,
        )
    )
    rows = [{k: _plain(v) for k, v in item.items()} for item in page.items]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(
            f"{row['occurred_at']}  #{row['seq']}  {row['outcome']:<7}  {row['action']}  "
            f"actor={row['actor_id'] or '-'}  resource={row['resource_type'] or '-'}:"
            f"{row['resource_id'] or '-'}  request={row['request_id'] or '-'}"
        )
    shown = f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}"
    typer.echo(f"{shown} in category {category}" if category is not None else shown)


@audit_app.command("verify")
@expected_failures
def verify(tenant: TenantOpt = None, as_json: JsonOpt = False) -> None:
    """Walk a chain and name its first broken entry; exit code 1 when it is broken."""
    from pgstack.audit import AuditLog

    report = on_database(lambda db: AuditLog(db).verify(tenant))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "chain": report.chain,
                    "ok": report.ok,
                    "checked": report.checked,
                    "first_seq": report.first_seq,
                    "last_seq": report.last_seq,
                    "broken_id": _plain(report.broken_id),
                    "broken_seq": report.broken_seq,
                    "reason": report.reason,
                }
            )
        )
    elif report.ok and report.checked == 0:
        typer.echo(
            f"chain {report.chain}: no entries to verify (none written for it, or all archived)"
        )
    elif report.ok:
        typer.echo(f"chain {report.chain}: {report.checked} entries, unbroken")
    else:
        typer.echo(
            f"chain {report.chain}: BROKEN at entry #{report.broken_seq} "
            f"(id {report.broken_id or '-'}): {report.reason}"
        )
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("maintain")
@expected_failures
def maintain(
    months_ahead: Annotated[
        int, typer.Option(min=0, max=36, help="Make partitions this many months ahead.")
    ] = 3,
) -> None:
    """Make the monthly partitions of this month and the coming ones (as the owner role)."""
    from pgstack.audit import maintain as make

    made = _owner(lambda conn: make(conn, now=datetime.now(UTC), months_ahead=months_ahead))
    for name in made:
        typer.echo(f"made {name}")
    typer.echo(f"{len(made)} partition(s) made")


def _export_folder(export: Path) -> None:
    """Make the `--export` folder (and its missing parents), or say why it cannot be used."""
    from pgstack.errors import InvalidInputError

    if export.exists() and not export.is_dir():
        raise InvalidInputError(
            f"--export {export} is a file, not a folder: name a folder (made if missing)."
        )
    try:
        export.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(
            f"--export {export}: cannot make that folder ({exc.strerror or exc}): "
            "name a folder you can write to."
        ) from None
    if not os.access(export, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"--export {export}: cannot write in that folder: name a folder you can write to."
        )


@audit_app.command("archive")
@expected_failures
def archive(
    before: Annotated[
        datetime,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="Detach months ending by this date: at latest the first day of this month (UTC).",
        ),
    ],
    export: Annotated[
        Path | None,
        typer.Option(
            help="Write each detached month here as JSON lines (<name>.jsonl) first; the folder "
            "and its missing parents are made, as `db backup` does; existing files are never "
            "overwritten.",
        ),
    ] = None,
) -> None:
    """Detach (and optionally export) the partitions of months that end before `--before`.

    Nothing is detached when any step fails (the folder, a file, the database).
    """
    from sqlalchemy import text

    from pgstack.audit import archive as detach
    from pgstack.audit import partitions
    from pgstack.errors import InvalidInputError

    written: list[Path] = []

    async def work(conn: Any) -> tuple[list[Any], list[Any]]:
        detached = await detach(conn, before=before.date(), now=datetime.now(UTC))
        if export is not None:
            _export_folder(export)
        if not detached:
            return detached, await partitions(conn)
        if export is None:
            return detached, []
        targets = {part.name: export / f"{part.name}.jsonl" for part in detached}
        taken = [str(path) for path in targets.values() if path.exists()]
        if taken:
            raise InvalidInputError(
                f"--export: {', '.join(taken)} exists already: name another folder "
                "(an earlier export is never overwritten)."
            )
        for part in detached:
            # Detached, the month is the owner's own table: row-level security is lifted
            # for the export (every tenant's entries) and forced again before commit.
            await conn.execute(text(f'ALTER TABLE "{part.name}" NO FORCE ROW LEVEL SECURITY'))
            rows = await conn.execute(
                text(f'SELECT to_jsonb(p)::text FROM "{part.name}" p ORDER BY tenant_id, seq')
            )
            path = targets[part.name]
            try:
                with path.open("x") as out:
                    written.append(path)
                    out.writelines(f"{line}\n" for (line,) in rows)
            except OSError as exc:
                raise InvalidInputError(
                    f"--export: cannot write {path} ({exc.strerror or exc}): "
                    "name a folder with room you can write to."
                ) from None
            await conn.execute(text(f'ALTER TABLE "{part.name}" FORCE ROW LEVEL SECURITY'))
        return detached, []

    try:
        detached, left = _owner(work)
    except BaseException:
        # The detach was rolled back: a half-written export must not pass for an archive.
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for part in detached:
        typer.echo(f"detached {part.name} ({part.start:%Y-%m})")
    if not detached:
        oldest = f" (the oldest, {left[0].name}, ends {left[0].end:%Y-%m-%d})" if left else ""
        typer.echo(f"nothing detached: no partition ends by {before.date().isoformat()}{oldest}")
