"""`pgstack ratelimit usage|exceeded|cleanup`: the rate-limit counters from the shell."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from pgstack.cli.main import JsonOpt, expected_failures, group, on_database

if TYPE_CHECKING:
    from pgstack.tenancy import RateLimiter, WindowUsage

ratelimit_app = group("Rate limits: a key's usage, the windows that refused, cleanup.")
T = TypeVar("T")


def _run(work: Callable[[RateLimiter], Awaitable[T]]) -> T:
    from pgstack.tenancy import RateLimiter

    return on_database(lambda db: work(RateLimiter(db)))


def _rows(windows: list[WindowUsage]) -> list[dict[str, Any]]:
    return [
        {
            "key": w.key,
            "limit": str(w.limit),
            "hits": w.hits,
            "remaining": w.remaining,
            "refused": w.refused,
            "usage_percent": w.usage_percent,
            "window_start": w.window_start.isoformat(),
            "reset_at": w.reset_at.isoformat(),
        }
        for w in windows
    ]


def _show(rows: list[dict[str, Any]], as_json: bool, what: str) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from pgstack.cli.main import console

    table = Table("key", "limit", "hits", "remaining", "refused", "used %", "resets at")
    for row in rows:
        table.add_row(
            row["key"],
            row["limit"],
            str(row["hits"]),
            str(row["remaining"]),
            str(row["refused"]),
            f"{row['usage_percent']:g}",
            row["reset_at"],
        )
    console.print(table)
    typer.echo(f"{len(rows)} {what}")


@ratelimit_app.command("usage")
@expected_failures
def usage(
    key: Annotated[str, typer.Argument(help="The key, such as tenant:<id>:search.")],
    as_json: JsonOpt = False,
) -> None:
    """The key's current windows: hits, quota left, refusals and when each resets."""
    _show(_rows(_run(lambda limiter: limiter.usage(key))), as_json, "window(s)")


@ratelimit_app.command("exceeded")
@expected_failures
def exceeded(
    within: Annotated[
        int,
        typer.Option(min=0, max=315_360_000, help="Also windows that ended this many seconds ago."),
    ] = 0,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Windows that refused requests, most refusals first."""
    windows = _run(lambda limiter: limiter.exceeded(within_seconds=within, limit=limit))
    _show(_rows(windows), as_json, "window(s) refused requests")


@ratelimit_app.command("cleanup")
@expected_failures
def cleanup(
    older_than: Annotated[
        int,
        typer.Option(
            min=0,
            max=315_360_000,
            help="Keep windows that ended less than this many seconds ago.",
        ),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Delete the windows that have ended (in batches; safe while the service runs)."""
    deleted = _run(lambda limiter: limiter.cleanup(older_than_seconds=older_than))
    if as_json:
        typer.echo(json.dumps({"deleted": deleted}))
    else:
        typer.echo(f"deleted {deleted} ended window(s)")
