"""`pgstack tokens list|history|rotate-keys|refresh-due`: the token vault from the shell.

No command ever prints a token value: lists show expiry status, history shows outcomes.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from pgstack.cli.main import JsonOpt, expected_failures, group, on_database
from pgstack.errors import ConfigurationError

if TYPE_CHECKING:
    from pgstack.tokens import Refresher, TokenVault

tokens_app = group("OAuth token vault: list, history, key rotation, background refresh.")
T = TypeVar("T")


def _run(work: Callable[[TokenVault], Awaitable[T]]) -> T:
    from pgstack.tokens import TokenVault

    return on_database(lambda db: work(TokenVault(db)))


def _iso(value: Any) -> str:
    return value.isoformat() if value is not None else ""


@tokens_app.command("list")
@expected_failures
def list_tokens(
    provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stored tokens with their expiry status (never their values)."""
    tokens = _run(lambda vault: vault.list_tokens(provider))
    rows: list[dict[str, Any]] = [
        {
            "provider": t.provider,
            "account": t.account,
            "status": t.status(),
            "expires_at": _iso(t.expires_at),
            "expires_in": t.expires_in(),
            "refresh_failures": t.refresh_failures,
            "last_error": t.last_error,
        }
        for t in tokens
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from pgstack.cli.main import console

    table = Table("provider", "account", "status", "expires at", "failures", "last error")
    for row in rows:
        table.add_row(
            row["provider"],
            row["account"],
            row["status"],
            row["expires_at"],
            str(row["refresh_failures"]),
            row["last_error"] or "",
        )
    console.print(table)
    typer.echo(f"{len(rows)} token(s)")


@tokens_app.command("history")
@expected_failures
def history(
    provider: Annotated[str, typer.Argument(help="The provider, e.g. hubspot.")],
    account: Annotated[str, typer.Argument(help="The account at that provider.")],
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many attempts.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Refresh attempts of one token, newest first."""
    attempts = _run(lambda vault: vault.history(provider, account, limit=limit))
    rows: list[dict[str, Any]] = [
        {
            "refreshed_at": _iso(a.refreshed_at),
            "success": a.success,
            "previous_expires_at": _iso(a.previous_expires_at),
            "new_expires_at": _iso(a.new_expires_at),
            "duration_ms": a.duration_ms,
            "error": a.error_message,
        }
        for a in attempts
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from pgstack.cli.main import console

    table = Table("refreshed at", "outcome", "new expiry", "ms", "error")
    for row in rows:
        table.add_row(
            row["refreshed_at"],
            "success" if row["success"] else "failure",
            row["new_expires_at"],
            str(row["duration_ms"]),
            row["error"] or "",
        )
    console.print(table)
    typer.echo(f"{len(rows)} attempt(s)")


@tokens_app.command("rotate-keys")
def rotate_keys(
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per transaction.")] = 200,
) -> None:
    """Re-encrypt every encrypted column under the newest key: `pgstack keys rotate`."""
    from pgstack.cli.keys import rotate

    rotate(batch_size=batch_size)


@tokens_app.command("refresh-due")
@expected_failures
def refresh_due(
    refreshers: Annotated[
        str,
        typer.Option(
            "--refreshers",
            help="module:attribute naming a mapping of provider -> async refresher.",
        ),
    ],
    within_minutes: Annotated[
        float,
        typer.Option(
            min=0, max=525_600, help="Refresh tokens that expire within this many minutes."
        ),
    ] = 5.0,
) -> None:
    """Refresh every token due soon; several workers may run this at once. Exit 1 on failures."""
    mapping = _load_refreshers(refreshers)
    within = timedelta(minutes=within_minutes)
    summary = _run(lambda vault: vault.refresh_due(mapping, within=within))
    typer.echo(f"refreshed {summary.refreshed} token(s), {summary.failed} failed")
    if summary.failed:
        raise typer.Exit(1)


def _load_refreshers(spec: str) -> Mapping[str, Refresher]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"--refreshers {spec!r} must be module:attribute, e.g. myapp.tokens:REFRESHERS."
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        # The app's modules sit in the folder it runs from, as with `python -m`.
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"Cannot import {module_name!r}: {exc}.") from None
    value = getattr(module, attribute, None)
    if not isinstance(value, Mapping) or not value:
        raise ConfigurationError(
            f"{spec} must be a non-empty mapping of provider name -> async refresher."
        )
    return value
