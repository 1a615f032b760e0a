"""`pgstack keys rotate|status`: re-encrypt every encrypted column under the newest key.

The columns are those of every registered model: pgstack's own (the token vault, two-factor
secrets) and the application's (`models` in `[tool.pgstack]`). No value is ever printed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pgstack.cli.main import JsonOpt, expected_failures, group, on_database

if TYPE_CHECKING:
    from pgstack.db.database import Database
    from pgstack.orm.rotation import EncryptedColumn, KeyUsage, RotationReport

keys_app: typer.Typer = group(
    "Encryption keys: re-encrypt every encrypted column under the newest key."
)
BatchOpt = Annotated[int, typer.Option(min=1, help="Rows per transaction.")]


def _columns() -> list[EncryptedColumn]:
    from pgstack.migrations import MigrationProject
    from pgstack.orm.rotation import encrypted_columns

    return encrypted_columns(MigrationProject.discover().metadata())


@keys_app.command("rotate")
@expected_failures
def rotate(
    batch_size: BatchOpt = 200,
    lock_wait: Annotated[
        float,
        typer.Option(
            min=0, max=86_400, help="Seconds to keep retrying rows that others hold locked."
        ),
    ] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Re-encrypt every value under an older key, online and resumable; exit 1 if any is left.

    Put the new key first in PGSTACK_ENCRYPTION_KEYS (the old ones after it) and deploy that
    to the service before running this. Stopped midway, a second run carries on.
    """
    from rich.progress import Progress

    from pgstack.cli.main import console
    from pgstack.crypto import get_key_ring
    from pgstack.orm.rotation import key_usage, rotate_keys

    columns = _columns()
    ring = get_key_ring()

    async def work(db: Database) -> RotationReport:
        before = await key_usage(db, columns)
        total = sum(u.values for u in before if u.kid != ring.primary_kid)
        quiet = as_json or not console.is_terminal
        with Progress(console=console, disable=quiet, transient=True) as bar:
            task = bar.add_task(f"re-encrypting under key {ring.primary_kid!r}", total=total)
            return await rotate_keys(
                db,
                columns,
                keys=ring,
                batch_size=batch_size,
                lock_wait=lock_wait,
                progress=lambda column, n: bar.advance(task, n),
            )

    report = on_database(work)
    if as_json:
        typer.echo(json.dumps(_report_dict(report), indent=2))
    else:
        typer.echo(
            f"re-encrypted {report.reencrypted} value(s) in {len(columns)} column(s) under "
            f"key {report.primary_kid!r}"
        )
        for failure in report.failures:
            typer.echo(f"cannot re-encrypt {failure}", err=True)
        _print_remaining(report.remaining, report.primary_kid)
    if not report.done:
        raise typer.Exit(1)


@keys_app.command("status")
@expected_failures
def status(as_json: JsonOpt = False) -> None:
    """How many values of each encrypted column each key encrypts; exit 1 if old keys are used."""
    from pgstack.crypto import get_key_ring
    from pgstack.orm.rotation import key_usage

    columns = _columns()
    primary = get_key_ring().primary_kid
    usage = on_database(lambda db: key_usage(db, columns))
    old = [u for u in usage if u.kid != primary]
    if as_json:
        typer.echo(
            json.dumps({"primary_kid": primary, "usage": [_usage_dict(u) for u in usage]}, indent=2)
        )
    else:
        from rich.table import Table

        from pgstack.cli.main import console

        table = Table("column", "key", "values")
        for u in usage:
            table.add_row(
                u.column, u.kid + (" (newest)" if u.kid == primary else ""), str(u.values)
            )
        console.print(table)
        _print_remaining(old, primary)
    if old:
        raise typer.Exit(1)


def _print_remaining(remaining: Sequence[KeyUsage], primary: str) -> None:
    if not remaining:
        typer.echo(f"every encrypted value uses key {primary!r}: older keys can be removed")
        return
    for u in remaining:
        typer.echo(f"{u.column}: {u.values} value(s) still under key {u.kid!r}")
    typer.echo("keep the older keys until `pgstack keys rotate` leaves nothing under them")


def _usage_dict(usage: KeyUsage) -> dict[str, Any]:
    return {"column": usage.column, "kid": usage.kid, "values": usage.values}


def _report_dict(report: RotationReport) -> dict[str, Any]:
    return {
        "primary_kid": report.primary_kid,
        "reencrypted": report.reencrypted,
        "failures": report.failures,
        "remaining": [_usage_dict(u) for u in report.remaining],
    }
