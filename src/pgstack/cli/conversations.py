"""`pgstack conversations expire`: close the sessions that have been idle past their expiry."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from pgstack.cli.main import JsonOpt, expected_failures, group, on_database

conversations_app: typer.Typer = group("Conversation sessions: expire the idle ones.")


@conversations_app.command("expire")
@expected_failures
def expire(
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Sessions closed per statement.")
    ] = 500,
    as_json: JsonOpt = False,
) -> None:
    """Close every active session past its expiry, tenant by tenant, in batches.

    Safe to run from several workers at once: each session is closed once.
    """
    from pgstack.conversations import Conversations

    expired = on_database(lambda db: Conversations(db).expire(batch_size=batch_size))
    if as_json:
        typer.echo(json.dumps({"expired": expired}))
    else:
        typer.echo(f"expired {expired} idle session(s)")
