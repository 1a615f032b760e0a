"""`pgstack db doctor|backup|restore`: day-2 operations on the configured database.

With no database configured they use the embedded server in PGSTACK_DATA_DIR, as the
migration commands do.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.table import Table

from pgstack.cli.main import console, db_app, expected_failures
from pgstack.cli.migrate import database_settings
from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.db.doctor import Finding, diagnose, worst

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

    Exit 0 when nothing is worse than info, 1 on a warning, 2 on an error.
    """
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
    db = Database(settings.model_copy(update={"database_connect_attempts": 1}))
    await db.connect()
    try:
        return await diagnose(db, workers=workers, ignore=ignore)
    finally:
        await db.disconnect()


def _print_findings(findings: list[Finding]) -> None:
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
