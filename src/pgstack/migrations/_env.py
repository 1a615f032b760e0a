"""What `env.py` runs: one connection, a session-level advisory lock, a short DDL lock timeout.

Alembic's command API is synchronous and calls `env.py`, which here drives an async engine
with `asyncio.run`. That cannot happen on a thread whose event loop is running, so
`pgstack.migrations` runs commands on a worker thread when called from async code (the
application's lifespan); the CLI calls them directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from pgstack.config import Settings
from pgstack.db.metrics import sqlstate_of
from pgstack.errors import MigrationError
from pgstack.migrations._engine import migration_engine
from pgstack.migrations.compare import COMPARE_OPTIONS

# One key for "someone is migrating this database"; advisory locks are per database already.
LOCK_KEY = 0x7067_7374_6163_6B4D  # "pgstackM"
_LOCK_NOT_AVAILABLE = "55P03"


def run() -> None:
    """Entry point of `env.py`."""
    config = context.config
    if context.is_offline_mode():
        raise MigrationError(
            "pgstack runs migrations against a live database only (no --sql offline mode)."
        )
    settings: Settings = config.attributes.get("pgstack.settings") or Settings()
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection, settings)
        return
    url = settings.url
    if url is None:
        raise MigrationError(
            "No database is configured: set DATABASE_URL (or DATABASE_HOST/NAME/USER/PASSWORD)."
        )
    asyncio.run(_migrate_async(settings))


async def _migrate_async(settings: Settings) -> None:
    assert settings.url is not None
    engine = migration_engine(settings, settings.url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_migrate, settings)
    finally:
        await engine.dispose()


def _migrate(conn: Connection, settings: Settings) -> None:
    config = context.config
    locked = bool(config.attributes.get("pgstack.lock"))
    if locked:
        acquire_lock(conn, settings.migration_lock_wait_s)
    try:
        _run_migrations(conn, settings)
    except BaseException:
        release(conn, locked, quiet=True)
        raise
    release(conn, locked)


def _run_migrations(conn: Connection, settings: Settings) -> None:
    config = context.config
    # Session-level, committed: every DDL statement of every revision gives up on a table
    # lock it cannot get quickly, instead of queueing the application's queries behind it.
    conn.execute(text(f"SET lock_timeout = {int(settings.migration_lock_timeout_ms)}"))
    conn.commit()
    applied: list[str] = config.attributes.setdefault("pgstack.applied", [])

    def record(
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        if not step.is_stamp:
            applied.append(step.up_revision_id or "")

    context.configure(
        connection=conn,
        target_metadata=config.attributes.get("pgstack.metadata"),
        transaction_per_migration=True,
        on_version_apply=record,
        **COMPARE_OPTIONS,
    )
    try:
        with context.begin_transaction():
            context.run_migrations()
    except sa_exc.DBAPIError as exc:
        if sqlstate_of(exc) != _LOCK_NOT_AVAILABLE:
            raise
        done = ", ".join(applied) or "none"
        raise MigrationError(
            f"A migration waited more than {settings.migration_lock_timeout_ms} ms "
            "(PGSTACK_MIGRATION_LOCK_TIMEOUT_MS) for a table lock that another session "
            "holds, and stopped; its revision was rolled back (applied before it: "
            f"{done}). Run it again when that session has finished."
        ) from None
    if conn.in_transaction():
        conn.commit()


def release(conn: Connection, locked: bool, *, quiet: bool = False) -> None:
    """Undo the session settings and give the migration lock back.

    With `quiet`, a failure here is swallowed: an error is already on its way, and a broken
    connection takes its session lock with it when it closes.
    """
    try:
        if conn.in_transaction():
            conn.rollback()
        conn.execute(text("RESET lock_timeout"))
        if locked:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        conn.commit()
    except Exception:
        if not quiet:
            raise


def acquire_lock(conn: Connection, wait_s: float) -> None:
    """Take the migration lock, waiting at most `wait_s` seconds for its holder to finish."""
    # A blocking pg_advisory_lock, bounded by lock_timeout, rather than polling: waiters
    # show in pg_locks and pg_stat_activity, so a DBA sees who waits for whom.
    conn.execute(text(f"SET lock_timeout = {max(1, int(wait_s * 1000))}"))
    try:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
    except sa_exc.DBAPIError as exc:
        if sqlstate_of(exc) != _LOCK_NOT_AVAILABLE:
            raise
        conn.rollback()
        holder = lock_holder(conn)
        raise MigrationError(
            f"Another process{holder} has held the migration lock on this database for more "
            f"than {wait_s:g} s (PGSTACK_MIGRATION_LOCK_WAIT_S): it is probably migrating. "
            "Wait for it to finish and run again, or raise the wait."
        ) from None
    conn.commit()  # the lock is session-level: it outlives this transaction


def lock_holder(conn: Connection) -> str:
    """` (pid N, application A)` of the session holding the migration lock, or ``."""
    row = conn.execute(
        text(
            "SELECT a.pid, a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1 LIMIT 1"
        ),
        {"hi": LOCK_KEY >> 32, "lo": LOCK_KEY & 0xFFFFFFFF},
    ).first()
    conn.rollback()
    if row is None:
        return ""
    return f" (pid {row.pid}, application {row.application_name or 'unnamed'!r})"
