"""`pgstack analytics cleanup`: delete query-log entries older than the retention period."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

from pgstack.cli.main import JsonOpt, expected_failures, group, on_database

analytics_app: typer.Typer = group("Query analytics: retention of the query log.")


@analytics_app.command("cleanup")
@expected_failures
def cleanup(
    older_than_days: Annotated[
        int, typer.Option(min=1, max=36_500, help="Delete entries older than this many days.")
    ] = 90,
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Entries deleted per statement.")
    ] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Delete the query log's old entries, tenant by tenant, in batches (safe while serving)."""
    from pgstack.analytics import QueryAnalytics

    deleted = on_database(
        lambda db: QueryAnalytics(db).cleanup(
            timedelta(days=older_than_days), batch_size=batch_size
        )
    )
    if as_json:
        typer.echo(json.dumps({"deleted": deleted}))
    else:
        typer.echo(f"deleted {deleted} query log entr{'y' if deleted == 1 else 'ies'}")
