"""`pgstack serve` and `pgstack db ...`: one line of explanation for every expected failure."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.db.health import Check, HealthReport
from pgstack.errors import ConfigurationError, PgStackError

app = typer.Typer(
    name="pgstack",
    help="The async PostgreSQL data layer for Python services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(
    help="Database operations: health, info, init, migrations, seeds.", no_args_is_help=True
)
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def expected_failures(fn: F) -> F:
    """Turn pgstack errors into one line on stderr and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PgStackError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def on_database(work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work` on the configured database.

    No embedded fallback: these commands change what a real deployment stores (users, API
    keys, tokens).
    """
    settings = Settings()
    if not settings.is_configured:
        raise ConfigurationError(
            "No database is configured: set DATABASE_URL (or DATABASE_HOST and friends)."
        )

    async def main() -> T:
        async with Database(settings) as db:
            return await work(db)

    return asyncio.run(main())


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s:     %(message)s",
    )


@app.command()
@expected_failures
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    migrate: Annotated[
        bool, typer.Option(help="Apply pending migrations (pgstack's and the app's) first.")
    ] = True,
) -> None:
    """Run the pgstack API (embedded PostgreSQL when no database is configured)."""
    import uvicorn

    from pgstack.db.embedded import EmbeddedPostgres
    from pgstack.migrations import MigrationProject, upgrade
    from pgstack.web import create_app
    from pgstack.web.modules import builtin_routers

    settings = Settings()
    embedded: EmbeddedPostgres | None = None
    if not settings.is_configured:
        embedded = EmbeddedPostgres(settings.data_dir / "pgdata")
        settings = settings.with_url(embedded.start())
        how = "reused" if embedded.reused else "created"
        typer.echo(f"pgstack: embedded PostgreSQL ({how}) with its data in {embedded.data_dir}")
        logging.getLogger("pgstack.embedded").setLevel(logging.INFO)
    try:
        asyncio.run(_preflight(Database(settings)))
        project = MigrationProject.discover()
        if migrate:
            # Before uvicorn, so a failed migration is one line, not a startup traceback.
            applied = upgrade(settings, project=project)
            typer.echo(f"pgstack: migrations applied: {', '.join(applied) or 'none (at head)'}")
        db = Database(settings)
        # The app's lifespan disconnects the database and with it stops the embedded
        # server, before uvicorn re-raises a SIGTERM it caught.
        db.embedded = embedded
        typer.echo(f"pgstack: database {db.safe_url}")
        typer.echo(f"pgstack: API docs at http://{host}:{port}/docs")
        app_ = create_app(database=db, migrations=project, routers=builtin_routers())
        uvicorn.run(app_, host=host, port=port, log_level="info")
    finally:
        if embedded is not None:
            embedded.stop()


async def _preflight(db: Database) -> None:
    await db.connect()
    await db.disconnect()


@db_app.command("health")
@expected_failures
def db_health(
    as_json: Annotated[bool, typer.Option("--json", help="Print application/health+json.")] = False,
) -> None:
    """Check the database; exit 0 on pass or warn, 1 on fail."""
    report = asyncio.run(_health(Settings()))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        table = Table(title=f"database health: {report.status}")
        for column in ("check", "status", "observed", "detail"):
            table.add_column(column)
        colours = {"pass": "green", "warn": "yellow", "fail": "red"}
        for name, check in report.checks.items():
            observed = (
                ""
                if check.observed_value is None
                else (f"{check.observed_value} {check.observed_unit or ''}".strip())
            )
            table.add_row(
                name, f"[{colours[check.status]}]{check.status}[/]", observed, check.output or ""
            )
        console.print(table)
    raise typer.Exit(1 if report.status == "fail" else 0)


async def _health(settings: Settings) -> HealthReport:
    # A health check answers now: one connection attempt, no backoff.
    db = Database(settings.model_copy(update={"database_connect_attempts": 1}))
    try:
        await db.connect()
    except PgStackError as exc:
        return HealthReport(
            {"postgres:connection": Check("fail", output=exc.message)},
            description="pgstack readiness",
        )
    try:
        await _migrate.add_migrations_check(db)
        return await db.health_check()
    finally:
        await db.disconnect()


@db_app.command("info")
@expected_failures
def db_info() -> None:
    """Show the settings (no secrets), the server version and the pool configuration."""
    settings = Settings()
    info = asyncio.run(_info(settings))
    table = Table(title="pgstack database", show_header=False)
    table.add_column("setting")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)


async def _info(settings: Settings) -> dict[str, Any]:
    from sqlalchemy import text

    db = Database(settings.model_copy(update={"database_connect_attempts": 1}))
    await db.connect()
    try:
        async with db.session() as session:
            version = await session.scalar(text("SHOW server_version"))
            max_conn = await session.scalar(text("SHOW max_connections"))
        info = settings.summary()
        info["database_url"] = db.safe_url
        return {**info, "server_version": version, "max_connections": max_conn}
    finally:
        await db.disconnect()


@db_app.command("init")
@expected_failures
def db_init(
    admin_url: Annotated[
        str,
        typer.Option(
            "--admin-url",
            envvar="PGSTACK_ADMIN_URL",
            help="URL of a role that may create databases and roles (e.g. postgres).",
        ),
    ],
) -> None:
    """Create the database, its owner (DATABASE_MIGRATION_URL) and application roles."""
    from pgstack.db.admin import init_database
    from pgstack.migrations.api import migration_settings

    settings = Settings()
    url = settings.url
    if url is None:
        raise PgStackError(
            "Set DATABASE_URL (or DATABASE_HOST/NAME/USER/PASSWORD) to the URL the app will use: "
            "`db init` creates that database and role."
        )
    result = asyncio.run(init_database(admin_url, url, migration_settings(settings).url))
    for what, outcome in result.steps:
        typer.echo(f"{what}: {outcome}")


# The migration and seeding commands register themselves on db_app.
from pgstack.cli import migrate as _migrate  # noqa: E402
from pgstack.cli.tokens import tokens_app  # noqa: E402

app.add_typer(tokens_app, name="tokens")
from pgstack.cli.users import api_keys_app, users_app  # noqa: E402

app.add_typer(users_app, name="users")
app.add_typer(api_keys_app, name="api-keys")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except PgStackError as exc:  # pragma: no cover - commands handle their own
        err_console.print(f"error: {exc.message}")
        sys.exit(1)
