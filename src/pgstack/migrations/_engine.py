"""Short-lived engines for migration work, and errors that never show a password."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from pgstack.config import Settings, hosts_text
from pgstack.db.database import _FATAL_CONNECT_SQLSTATES, connect_hint
from pgstack.db.metrics import sqlstate_of
from pgstack.db.pooler import pooled_connect_args
from pgstack.errors import DatabaseUnavailableError, MigrationError, PgStackError

APPLICATION_NAME = "pgstack-migrate"


def migration_engine(settings: Settings, url: URL) -> AsyncEngine:
    """An engine without a pool: migrations hold one connection, then give it back for good.

    Its sessions give up on a table lock they cannot get within
    PGSTACK_MIGRATION_LOCK_TIMEOUT_MS, instead of queueing the application's queries behind
    a migration's DDL.
    """
    connect_args: dict[str, Any] = {
        "server_settings": {
            "application_name": APPLICATION_NAME,
            "lock_timeout": str(int(settings.migration_lock_timeout_ms)),
        },
        "timeout": settings.database_connect_timeout,
        "ssl": settings.ssl_option,
    }
    # Behind a transaction pooler lock_timeout cannot be a startup parameter: the migration
    # sets it with SET LOCAL in its transaction instead (see _env).
    return create_async_engine(
        url, poolclass=NullPool, connect_args=pooled_connect_args(settings, connect_args)
    )


def where(url: URL) -> str:
    """`host:port, database 'name'` of a URL, for messages."""
    return f"{hosts_text(url)}, database {url.database!r}"


def scrub(message: str, url: URL | None) -> str:
    """The message with the URL's password, if any, replaced by `***`."""
    if url is not None and url.password:
        message = message.replace(str(url.password), "***")
    return message


def describe(exc: BaseException) -> str:
    """`Type: first line` of a driver error, looking through SQLAlchemy's wrappers."""
    inner: BaseException = getattr(exc, "orig", None) or exc
    for _ in range(5):  # the adapter wraps asyncpg's error: name the one that says what failed
        if inner.__cause__ is None:
            break
        inner = inner.__cause__
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}".rstrip(": ")


def as_pgstack_error(exc: BaseException, url: URL | None, doing: str) -> PgStackError:
    """Turn a failure while `doing` something into one pgstack error with an actionable message."""
    if isinstance(exc, PgStackError):
        exc.message = scrub(exc.message, url)
        exc.args = (exc.message,)
        return exc
    detail = scrub(describe(exc), url)
    is_connect = isinstance(exc, OSError | ConnectionError | TimeoutError) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    )
    cannot_log_in = sqlstate_of(exc) in _FATAL_CONNECT_SQLSTATES
    if (
        cannot_log_in
        or is_connect
        or isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError)
    ):
        at = where(url) if url is not None else "the configured server"
        return DatabaseUnavailableError(
            f"Cannot connect to PostgreSQL at {at} while {doing}: {detail}. {connect_hint(exc)}"
        )
    return MigrationError(f"{doing[:1].upper()}{doing[1:]} failed: {detail}")
