"""`pgstack db doctor|backup|restore` and `db check --safety`: day-2 operations.

With no database configured they use the embedded server in PGSTACK_DATA_DIR, as the
migration commands do. Importing this module is cheap: each command imports what it needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pgstack.cli.main import db_app, expected_failures, once
from pgstack.cli.migrate import database_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from pgstack.config import Settings
    from pgstack.db.backup import Progress
    from pgstack.db.doctor import Finding
    from pgstack.migrations.project import MigrationProject

#: Exit status of `db doctor` by its worst finding.
DOCTOR_EXIT = {None: 0, "info": 0, "warn": 1, "error": 2}


@db_app.command("doctor")
@expected_failures
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Processes that run the service, each pooled.")
    ] = 1,
    ignore: Annotated[
        list[str] | None,
        typer.Option("--ignore", help="A finding id (or its group, e.g. indexes) to leave out."),
    ] = None,
) -> None:
    """Find what hurts the database in production, each with its fix.

    Exit 0 when nothing is worse than info, 1 on a warning, 2 on an error (and on an
    --ignore that names no finding).
    """
    from pgstack.db.doctor import FINDING_IDS, unknown_ignores, worst

    unknown = unknown_ignores(ignore or [])
    if unknown:
        # A misspelt id would silence nothing while looking as if it did.
        groups = sorted({finding.split(".")[0] for finding in FINDING_IDS})
        ids = [finding for finding in FINDING_IDS if not finding.startswith("doctor.")]
        typer.echo(
            f"error: --ignore {unknown[0][:80]!r} names no finding of the doctor; give a group "
            f"({', '.join(groups)}) or an id ({', '.join(ids)}, doctor.CHECK.locked).",
            err=True,
        )
        raise typer.Exit(2)

    with database_settings() as settings:
        findings = asyncio.run(_diagnose(settings, workers, ignore or []))
    level = worst(findings)
    if as_json:
        body = {"worst": level, "findings": [f.to_dict() for f in findings]}
        typer.echo(json.dumps(body, indent=2))
    else:
        _print_findings(findings)
    raise typer.Exit(DOCTOR_EXIT[level])


async def _diagnose(settings: Settings, workers: int, ignore: list[str]) -> list[Finding]:
    from pgstack.db.database import Database
    from pgstack.db.doctor import diagnose

    db = Database(once(settings))
    await db.connect()
    try:
        return await diagnose(db, workers=workers, ignore=ignore)
    finally:
        await db.disconnect()


def _print_findings(findings: list[Finding]) -> None:
    from rich.table import Table

    from pgstack.cli.main import console

    if not findings:
        typer.echo("doctor: nothing found")
        return
    colours = {"info": "cyan", "warn": "yellow", "error": "red"}
    table = Table(title=f"database doctor: {len(findings)} finding(s)", show_lines=True)
    for column in ("severity", "id", "object", "evidence / why", "fix"):
        table.add_column(column, overflow="fold")
    for f in findings:
        table.add_row(
            f"[{colours[f.severity]}]{f.severity}[/]",
            f.id,
            f.object,
            f"{f.evidence}\n[dim]{f.why}[/]",
            f.fix,
        )
    console.print(table)


# -- backups ----------------------------------------------------------------------------------


@contextmanager
def _progress(what: str) -> Iterator[Progress]:
    """A progress bar over tables, shown on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.progress import Progress as RichProgress

    from pgstack.cli.main import err_console

    with RichProgress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tables"),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@db_app.command("backup")
@expected_failures
def backup_cmd(
    target: Annotated[
        Path | None,
        typer.Argument(
            help="A file (NAME.dump) or a folder for a timestamped one (default: DATA_DIR/backups)."
        ),
    ] = None,
    verify_: Annotated[
        bool,
        typer.Option("--verify", help="Restore into a scratch database and compare row counts."),
    ] = False,
) -> None:
    """Dump the database (pg_dump custom format) with a sha256 checksum file beside it."""
    from pgstack.db import backup

    with database_settings() as settings:
        url = _url(settings)
        where = target if target is not None else settings.data_dir / "backups"
        with _progress("dumping") as progress:
            result = asyncio.run(
                backup.backup(url, Path(where), progress=progress, settings=settings)
            )
        typer.echo(f"wrote {result.path} ({result.size} bytes, {len(result.row_counts)} tables)")
        typer.echo(f"sha256 {result.sha256} in {result.checksum_path.name}")
        if not verify_:
            return
        with _progress("verifying") as progress:
            report = asyncio.run(
                backup.verify(
                    result.path,
                    url,
                    expected=result.row_counts,
                    progress=progress,
                    settings=settings,
                )
            )
    for name, (had, got) in report.mismatches.items():
        typer.echo(f"MISMATCH {name}: {had} row(s) dumped, {got} restored", err=True)
    if not report.ok:
        raise typer.Exit(1)
    typer.echo(
        f"verified: a scratch restore has the same row counts in {len(report.source)} tables"
    )


@db_app.command("restore")
@expected_failures
def restore_cmd(
    dump: Annotated[Path, typer.Argument(help="The .dump file (its .sha256 must be beside it).")],
    into: Annotated[str, typer.Option("--into", help="Name of the database to create.")],
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the database if it exists (once the dump has restored in full).",
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Do not ask before overwriting the service's own database."
        ),
    ] = False,
) -> None:
    """Restore a backup into a new database on the configured server; check its migrations."""
    from pgstack.cli.migrate import load_project
    from pgstack.db import backup
    from pgstack.migrations import status

    with database_settings() as settings:
        url = _url(settings)
        if overwrite and settings.environment == "production" and into == url.database and not yes:
            typer.echo(
                f"PGSTACK_ENV=production and {into!r} is the database the service uses.",
                err=True,
            )
            typer.confirm(
                f"Replace it with {dump.name}? Every row written since the backup is lost",
                abort=True,
            )
        target = url.set(database=into)
        with _progress("restoring") as progress:
            asyncio.run(
                backup.restore(
                    dump, target, overwrite=overwrite, progress=progress, settings=settings
                )
            )
        typer.echo(f"restored {dump.name} into database {into!r} (checksum verified)")
        # The restored database is checked with the configured TLS settings, the URL's too.
        files = settings.tls_files
        state = status(
            settings.with_url(target).model_copy(
                update={
                    "database_sslmode": settings.sslmode,
                    **{f"database_{name}": path for name, path in files.items()},
                }
            ),
            project=load_project(),
        )
    if state.at_head:
        typer.echo("migrations: at head")
    elif not state.versioned:
        typer.echo("migrations: the restored database has no pgstack migrations table")
    else:
        typer.echo(
            f"migrations: missing {', '.join(state.missing) or 'none'}; run `pgstack db upgrade` "
            "with DATABASE_URL pointing at the restored database before serving from it"
        )


def _url(settings: Settings) -> URL:
    url = settings.url
    assert url is not None  # database_settings() always names one
    return url


# -- migration safety -------------------------------------------------------------------------


def check_safety(project: MigrationProject) -> None:
    """`db check --safety`: lint the revisions the database has not applied; exit 1 on any."""
    from pgstack.migrations.safety import pending_findings

    with database_settings() as settings:
        findings = pending_findings(settings, project)
    # Plain lines, not a table: a CI log or a narrow terminal must not cut the fix short.
    for f in findings:
        typer.echo(
            f"{f.severity} {f.id} {f.object}\n  {f.evidence}\n  why: {f.why}\n  fix: {f.fix}"
        )
    if not findings:
        typer.echo("migration safety: nothing found in the pending revisions")
    if any(f.severity != "info" for f in findings):
        raise typer.Exit(1)
