"""`pgstack serve` and `pgstack db ...`: one line of explanation for every expected failure.

Importing the command line is cheap: the commands import pgstack's database, web and
migration code when they run, so `--help` answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import io
import json
import logging
import os
import re
import stat
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from pgstack.errors import PgStackError

if TYPE_CHECKING:
    from rich.console import Console

    from pgstack.config import Settings
    from pgstack.db.database import Database
    from pgstack.db.health import HealthReport

    console: Console  # made on first use, see __getattr__
    err_console: Console

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class WholeHelpGroup(TyperGroup):
    """A command group whose listing shows each command's first sentence whole, never cut."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=sys.maxsize)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def group(help: str, **options: Any) -> typer.Typer:
    """A Typer group as every pgstack group is made: plain help text (`[tool.pgstack]` stays
    as written), whole sentences, help when called without a command."""
    return typer.Typer(
        help=help,
        cls=WholeHelpGroup,
        no_args_is_help=True,
        rich_markup_mode=None,
        add_completion=False,
        pretty_exceptions_enable=False,
        **options,
    )


class _ClosedStdout(io.TextIOBase):
    """Standard output when the process started with it closed (`>&-`), where Python leaves
    None: every write fails as writing to the closed descriptor would, so commands report
    it in one line (and a one-time secret is not stored) instead of an AttributeError."""

    @property
    def name(self) -> str:
        return "<stdout>"

    def fileno(self) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def isatty(self) -> bool:
        return False


if sys.stdout is None:
    sys.stdout = _ClosedStdout()
if sys.stderr is None:  # closed too: messages have nowhere to go; the exit status remains
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


app = group(
    "The async PostgreSQL data layer for Python services.",
    name="pgstack",
    # Piped or captured help is not wrapped at 80 columns; its children inherit this.
    context_settings={"terminal_width": None if sys.stdout.isatty() else 10_000},
)
db_app = group("Database operations: health, info, init, migrations, seeds.")
app.add_typer(db_app, name="db")


@functools.cache
def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    # Piped or captured: no 80-column limit, so ids and URLs in tables are never cut.
    return Console(stderr=stderr, width=100_000, soft_wrap=True)


def __getattr__(name: str) -> Any:
    # `console` and `err_console` are made on first use: rich is not imported for --help.
    if name == "console":
        return _console()
    if name == "err_console":
        return _console(stderr=True)
    raise AttributeError(name)


_verbose = False


def _debug() -> bool:
    return _verbose or os.environ.get("PGSTACK_DEBUG", "").lower() in ("1", "true", "yes")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _missing_relation(exc: BaseException) -> str | None:
    """The table named by an "undefined table" error (SQLSTATE 42P01), or None."""
    from pgstack.db.metrics import sqlstate_of

    if sqlstate_of(exc) != "42P01":
        return None
    found = re.search(r'relation "([^"]{1,128})" does not exist', str(exc))
    return found.group(1) if found else "it needs"


def expected_failures(fn: F) -> F:
    """Turn every failure into one line on stderr and a non-zero exit, never a traceback.

    pgstack's errors say what to do; anything else is named with its type and message, and
    `--verbose` (or PGSTACK_DEBUG=1) prints the traceback as well.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except PgStackError as exc:
            if _debug():
                traceback.print_exc()
            typer.echo(f"error: {_one_line(exc.message)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            if _debug():
                traceback.print_exc()
            lost = _stdout_failed(exc)
            if lost is not None:
                typer.echo(_output_lost(lost), err=True)
                raise typer.Exit(1) from None
            missing = _missing_relation(exc)
            if missing is not None:
                typer.echo(
                    f"error: this database has no table {missing}: its migrations have not "
                    "been applied. Run `pgstack db upgrade` (with DATABASE_MIGRATION_URL set "
                    "to the owner role, if you have one), then try again.",
                    err=True,
                )
                raise typer.Exit(1) from None
            detail = _one_line(str(exc)) or "(no message)"
            typer.echo(
                f"error: unexpected {type(exc).__name__}: {detail} (rerun with --verbose or "
                "PGSTACK_DEBUG=1 for the traceback, and report it if it persists)",
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _stdout_failed(exc: BaseException) -> str | None:
    """Why standard output cannot be written (`> /dev/full`, a closed pipe), if that is what
    `exc` is, else None. Standard output is then pointed at /dev/null, so that what is
    left in its buffer does not fail again when Python flushes it at exit."""
    if not isinstance(exc, OSError):
        return None
    if not isinstance(exc, BrokenPipeError):
        try:  # a write of nothing still fails on a device that refuses writes
            os.write(sys.stdout.fileno(), b"")
        except (OSError, ValueError):
            pass
        else:
            return None
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return exc.strerror or type(exc).__name__


def _output_lost(reason: str) -> str:
    return (
        f"error: the output could not be written to standard output ({reason}); send it to a "
        "terminal, a pipe that reads it all, or a file on a device with room."
    )


def _discarded() -> bool:
    """Whether standard output is /dev/null (`> /dev/null`, or a closed stdout that a
    launcher such as `uv run` replaced with it), where a secret shown once is lost."""
    try:
        out = os.fstat(sys.stdout.fileno())
        null = os.stat(os.devnull)
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(out.st_mode) and out.st_rdev == null.st_rdev


def show_secret(text: str, *, what: str) -> None:
    """Write `text` (holding a secret shown this once) to stdout and flush it, or raise.

    Callers write it before they commit what the secret belongs to: when it cannot be
    written (`> /dev/full`, a closed pipe, a closed stdout), or would go to /dev/null, the
    error rolls the work back, so no secret is ever stored without having been shown.
    """
    if _discarded():
        raise PgStackError(
            f"{what} would be written to /dev/null and lost, so nothing was created: it is "
            "shown once and never stored. Run the command again with its output going to a "
            "terminal or a file."
        )
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except OSError as exc:
        reason = _stdout_failed(exc) or exc.strerror or type(exc).__name__
        raise PgStackError(
            f"{what} could not be written to standard output ({reason}), so nothing was "
            "created: it is shown once and never stored. Run the command again with its "
            "output going to a terminal or a file that can be written."
        ) from None


def once(settings: Settings) -> Settings:
    """`settings` for a command, which runs once: one connection attempt, so an unreachable
    server is one line now instead of a minute of retries (unless DATABASE_CONNECT_ATTEMPTS
    is set)."""
    if "database_connect_attempts" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"database_connect_attempts": 1})


def on_database(work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work` on the database `pgstack serve` uses.

    That is the configured server or, with none configured, the embedded one (started here,
    or joined when `serve` is already running on it; production refuses it in Settings).
    """
    from pgstack.config import Settings
    from pgstack.db.database import Database

    settings = once(Settings())

    async def main() -> T:
        async with Database(settings) as db:
            if db.embedded is not None:
                typer.echo(
                    f"pgstack: embedded PostgreSQL with its data in {db.embedded.data_dir}",
                    err=True,
                )
            return await work(db)

    return asyncio.run(main())


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log more; print tracebacks of errors.")
    ] = False,
) -> None:
    global _verbose
    _verbose = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s:     %(message)s",
    )


_MISSING_SECRET_EFFECTS = {
    "PGSTACK_ENCRYPTION_KEYS": "two-factor sign-in and the token vault cannot store secrets",
    "PGSTACK_CURSOR_SECRET": "page cursors stop working after a restart or on another replica",
}


@app.command()
@expected_failures
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on (0.0.0.0 for every one).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    migrate: Annotated[
        bool, typer.Option(help="Apply pending migrations (pgstack's and the app's) first.")
    ] = True,
    router: Annotated[
        list[str] | None,
        typer.Option(
            "--router",
            metavar="MODULE:ATTR",
            envvar="PGSTACK_ROUTERS",
            help="Your own router as module:attribute (an APIRouter, a list of them, or a "
            "function returning one), mounted under /v1 beside pgstack's; repeatable. "
            "PGSTACK_ROUTERS takes them space-separated.",
        ),
    ] = None,
) -> None:
    """Run the pgstack API under /v1 (embedded PostgreSQL when no database is configured)."""
    if not host.strip():
        raise typer.BadParameter(
            "is empty: name an interface, such as 127.0.0.1 or 0.0.0.0 for every one",
            param_hint="--host",
        )
    import uvicorn

    from pgstack.config import Settings
    from pgstack.db.database import Database
    from pgstack.db.embedded import EmbeddedPostgres
    from pgstack.migrations import MigrationProject, upgrade
    from pgstack.web.modules import import_routers, service_app

    settings = Settings()
    # Identity (two-factor secrets) and the token vault encrypt; listings page with cursors.
    if settings.log_json:
        from pgstack.audit.context import configure_logging

        configure_logging(as_json=True)
    settings.require_production_secrets()
    for name in settings.missing_secrets():
        typer.echo(f"pgstack: warning: {name} is not set: {_MISSING_SECRET_EFFECTS[name]}")
    project = MigrationProject.discover()
    # Before the database starts: a router that does not import is one line, at once.
    own = [r for spec in router or () for r in import_routers(spec)]
    embedded: EmbeddedPostgres | None = None
    if not settings.is_configured:
        embedded = EmbeddedPostgres(settings.data_dir / "pgdata")
        settings = settings.with_url(embedded.start())
        how = "reused" if embedded.reused else "created"
        typer.echo(f"pgstack: embedded PostgreSQL ({how}) with its data in {embedded.data_dir}")
        logging.getLogger("pgstack.embedded").setLevel(logging.INFO)
    try:
        asyncio.run(_preflight(Database(settings)))
        if migrate:
            # Before uvicorn, so a failed migration is one line, not a startup traceback.
            applied = upgrade(settings, project=project)
            typer.echo(f"pgstack: migrations applied: {', '.join(applied) or 'none (at head)'}")
        db = Database(settings)
        # The app's lifespan disconnects the database and with it stops the embedded
        # server, before uvicorn re-raises a SIGTERM it caught.
        db.embedded = embedded
        typer.echo(f"pgstack: database {db.safe_url}")
        typer.echo(f"pgstack: API at http://{host}:{port}/v1")
        typer.echo(f"pgstack: API docs at http://{host}:{port}/docs")
        app_ = service_app(database=db, migrations=project, routers=own)
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
    from rich.table import Table

    from pgstack.config import Settings

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
        _console().print(table)
    raise typer.Exit(1 if report.status == "fail" else 0)


async def _health(settings: Settings) -> HealthReport:
    from pgstack.cli.migrate import add_migrations_check
    from pgstack.db.database import Database
    from pgstack.db.health import Check, HealthReport

    db = Database(once(settings))
    try:
        await db.connect()
    except PgStackError as exc:
        return HealthReport(
            {"postgres:connection": Check("fail", output=exc.message)},
            description="pgstack readiness",
        )
    try:
        await add_migrations_check(db)
        return await db.health_check()
    finally:
        await db.disconnect()


@db_app.command("info")
@expected_failures
def db_info(
    show_password: Annotated[
        bool, typer.Option("--show-password", help="Print the password in the psql URL.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the settings (no secrets), the server version and a URL to paste into psql."""
    from rich.table import Table

    from pgstack.config import Settings

    info = asyncio.run(_info(Settings(), show_password))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    table = Table(title="pgstack database", show_header=False)
    table.add_column("setting")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    _console().print(table)


async def _info(settings: Settings, show_password: bool) -> dict[str, Any]:
    from sqlalchemy import text

    from pgstack.db.database import Database

    db = Database(once(settings))
    await db.connect()
    try:
        async with db.session() as session:
            version = await session.scalar(text("SHOW server_version"))
            max_conn = await session.scalar(text("SHOW max_connections"))
        info = settings.summary()
        info["database_url"] = db.safe_url
        if db.embedded is not None:
            info["embedded"] = f"data in {db.embedded.data_dir}; it runs while `pgstack serve` does"
        # libpq's spelling of the URL, for psql and other PostgreSQL tools.
        psql = db.url.set(drivername="postgresql").render_as_string(hide_password=not show_password)
        return {
            **info,
            "psql": psql,
            "server_version": version,
            "max_connections": max_conn,
        }
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
    from pgstack.config import Settings
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


# The migration and seeding commands register themselves on db_app; the module groups are
# mounted here. Each module imports what its commands need when they run.
from pgstack.cli import migrate as _migrate  # noqa: E402, F401
from pgstack.cli import ops as _ops  # noqa: E402, F401
from pgstack.cli.analytics import analytics_app  # noqa: E402
from pgstack.cli.audit import audit_app  # noqa: E402
from pgstack.cli.conversations import conversations_app  # noqa: E402
from pgstack.cli.keys import keys_app  # noqa: E402
from pgstack.cli.ratelimit import ratelimit_app  # noqa: E402
from pgstack.cli.tenants import tenants_app  # noqa: E402
from pgstack.cli.tokens import tokens_app  # noqa: E402
from pgstack.cli.users import api_keys_app, users_app  # noqa: E402

app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(tokens_app, name="tokens")
app.add_typer(users_app, name="users")
app.add_typer(api_keys_app, name="api-keys")
app.add_typer(ratelimit_app, name="ratelimit")
app.add_typer(conversations_app, name="conversations")
app.add_typer(analytics_app, name="analytics")
app.add_typer(audit_app, name="audit")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except PgStackError as exc:  # pragma: no cover - commands handle their own
        typer.echo(f"error: {_one_line(exc.message)}", err=True)
        sys.exit(1)
    except OSError as exc:  # --help or a usage message into an unwritable stdout
        lost = _stdout_failed(exc)
        if lost is None:
            raise
        typer.echo(_output_lost(lost), err=True)
        sys.exit(1)
