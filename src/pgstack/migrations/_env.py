"""What `env.py` runs: one connection, an advisory lock, a short DDL lock timeout.

The lock is session-level, each revision in a transaction of its own; behind a transaction
pooler (DATABASE_POOLER=pgbouncer-transaction) the whole run is one transaction under a
transaction-level lock instead.

Alembic's command API is synchronous and calls `env.py`, which here drives an async engine
with `asyncio.run`. That cannot happen on a thread whose event loop is running, so
`pgstack.migrations` runs commands on a worker thread when called from async code (the
application's lifespan); the CLI calls them directly.

A caller may also hand its own `Connection`, `Engine` or `AsyncEngine` in
`config.attributes["connection"]` (as pytest-alembic does): the migrations then run in the
caller's transaction (one is begun when there is none), with `SET LOCAL lock_timeout`, and
nothing here commits or rolls back a transaction the caller began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo, MigrationStep
from alembic.util import CommandError, to_tuple
from sqlalchemy import Connection, Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from pgstack.config import Settings
from pgstack.db.metrics import sqlstate_of
from pgstack.db.pooler import transaction_pooled
from pgstack.errors import MigrationError
from pgstack.migrations._engine import migration_engine
from pgstack.migrations.compare import COMPARE_OPTIONS
from pgstack.migrations.state import (
    MigrationStatus,
    dependency_downgrade,
    read_status,
    record_applied,
)

# One key for "someone is migrating this database"; advisory locks are per database already.
LOCK_KEY = 0x7067_7374_6163_6B4D  # "pgstackM"
_LOCK_NOT_AVAILABLE = "55P03"

Guard = Callable[[MigrationStatus], bool]
"""`config.attributes["pgstack.guard"]`: sees the state under the lock; True skips the run."""


def run() -> None:
    """Entry point of `env.py`."""
    config = context.config
    if context.is_offline_mode():
        raise MigrationError(
            "pgstack runs migrations against a live database only (no --sql offline mode)."
        )
    settings: Settings = config.attributes.get("pgstack.settings") or Settings()
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _in_transaction(given, settings)
    elif isinstance(given, AsyncEngine):
        asyncio.run(_on_async_engine(given, settings))
    elif given is not None and (
        isinstance(given, Engine) or callable(getattr(given, "connect", None))
    ):
        # An Engine, or what stands for one (pytest-alembic wraps its connection so).
        with given.connect() as conn:
            _in_transaction(conn, settings)
    elif given is not None:
        raise MigrationError(
            'config.attributes["connection"] must be a SQLAlchemy Connection, Engine or '
            f"AsyncEngine, not {type(given).__name__}."
        )
    elif settings.url is None:
        raise MigrationError(
            "No database is configured: set DATABASE_URL (or DATABASE_HOST/NAME/USER/PASSWORD)."
        )
    else:
        asyncio.run(_migrate_async(settings))


async def _migrate_async(settings: Settings) -> None:
    assert settings.url is not None
    engine = migration_engine(settings, settings.url)
    run = _migrate_in_one_transaction if transaction_pooled(settings) else _migrate
    try:
        async with engine.connect() as conn:
            await conn.run_sync(run, settings)
    finally:
        await engine.dispose()


async def _on_async_engine(engine: AsyncEngine, settings: Settings) -> None:
    async with engine.connect() as conn:
        await conn.run_sync(_in_transaction, settings)


def _in_transaction(conn: Connection, settings: Settings) -> None:
    """Migrate in the caller's transaction, or in one of our own when it has none."""
    if conn.in_transaction():
        _migrate(conn, settings, own=False)
        return
    with conn.begin():
        _migrate(conn, settings, own=False)


def _migrate_in_one_transaction(conn: Connection, settings: Settings) -> None:
    """Behind a transaction pooler: the whole run in one transaction, under a transaction lock.

    A session-level lock would be taken on one server connection and released on another (or
    never); PostgreSQL's transactional DDL lets every revision share one transaction instead.
    """
    locked = bool(context.config.attributes.get("pgstack.lock"))
    conn.begin()
    try:
        if locked:
            acquire_lock(conn, settings.migration_lock_wait_s, transaction_scoped=True)
        _migrate(conn, settings, own=False)
    except BaseException:
        if conn.in_transaction():
            conn.rollback()
        raise
    conn.commit()


def _migrate(conn: Connection, settings: Settings, own: bool = True) -> None:
    """Run the command on `conn`; `own`: pgstack's connection, with its lock and transactions.

    pgstack's own connection has `lock_timeout` from its engine and a transaction per
    revision; a caller's connection gets `SET LOCAL lock_timeout` in the caller's transaction.
    """
    config = context.config
    locked = own and bool(config.attributes.get("pgstack.lock"))
    if locked:
        acquire_lock(conn, settings.migration_lock_wait_s)
    try:
        if not own:
            conn.execute(
                text(f"SET LOCAL lock_timeout = {int(settings.migration_lock_timeout_ms)}")
            )
        guard: Guard | None = config.attributes.get("pgstack.guard")
        state = read_status(conn, context.script)
        config.attributes["pgstack.current"] = state.current
        skip = guard is not None and guard(state)
        if own and conn.in_transaction():
            conn.commit()  # reading the state began one; Alembic begins its own per revision
        if not skip:
            _run_migrations(conn, settings, own)
    except BaseException:
        if own:
            release(conn, locked, quiet=True)
        raise
    if own:
        release(conn, locked)


def _run_migrations(conn: Connection, settings: Settings, own: bool) -> None:
    config = context.config
    script = context.script
    applied: list[str] = config.attributes.setdefault("pgstack.applied", [])

    def record(
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        # In the revision's own transaction, so the record and the schema never disagree.
        assert ctx.connection is not None
        record_applied(ctx.connection, script, heads)
        config.attributes["pgstack.current"] = tuple(sorted(heads))
        if not step.is_stamp:
            applied.append(step.up_revision_id or "")

    context.configure(
        connection=conn,
        target_metadata=config.attributes.get("pgstack.metadata")
        or config.attributes.get("target_metadata"),
        transaction_per_migration=True,
        on_version_apply=record,
        **COMPARE_OPTIONS,
    )
    migration = context.get_context()
    if migration._migrations_fn is not None:
        migration._migrations_fn = _downgrading_dependencies(migration._migrations_fn)
    try:
        with context.begin_transaction():
            context.run_migrations()
    except sa_exc.DBAPIError as exc:
        if sqlstate_of(exc) != _LOCK_NOT_AVAILABLE:
            raise
        done = ", ".join(applied) or "none"
        undone = "its revision was rolled back" if own else "the transaction is aborted"
        raise MigrationError(
            f"A migration waited more than {settings.migration_lock_timeout_ms} ms "
            "(PGSTACK_MIGRATION_LOCK_TIMEOUT_MS) for a table lock that another session "
            f"holds, and stopped; {undone} (applied before it: "
            f"{done}). Run it again when that session has finished."
        ) from None
    if own and conn.in_transaction():
        conn.commit()


MigrationFn = Callable[[Any, MigrationContext], Iterable[Any]]


def _downgrading_dependencies(fn: MigrationFn) -> MigrationFn:
    """`fn`, which also downgrades to a revision that later ones only depend on.

    `downgrade pgstack_0003` from an app's head is refused by Alembic ("not a valid downgrade
    target"): the app's revisions reach pgstack's through `depends_on`, not down revisions.
    It means: undo what needs that revision and is not part of it.
    """

    def steps(heads: Any, ctx: MigrationContext) -> Any:
        try:
            return fn(heads, ctx)
        except CommandError as exc:
            if "not a valid downgrade target" not in str(exc):
                raise
            destination = context.get_revision_argument()
            if not isinstance(destination, str):
                raise
            script = context.script
            undo = dependency_downgrade(script, to_tuple(heads, default=()), destination)
            if not undo:
                raise
            return [MigrationStep.downgrade_from_script(script.revision_map, s) for s in undo]

    return steps


def release(conn: Connection, locked: bool, *, quiet: bool = False) -> None:
    """End the open transaction and give the migration lock back.

    With `quiet`, a failure here is swallowed: an error is already on its way, and a broken
    connection takes its session lock with it when it closes.
    """
    try:
        if conn.in_transaction():
            conn.rollback()
        if locked:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        conn.commit()
    except Exception:
        if not quiet:
            raise


def acquire_lock(conn: Connection, wait_s: float, *, transaction_scoped: bool = False) -> None:
    """Take the migration lock, waiting at most `wait_s` seconds for its holder to finish.

    `transaction_scoped`: held until the open transaction ends (behind a transaction pooler),
    instead of until it is released or the connection closes.
    """
    # A blocking pg_advisory_lock, bounded by lock_timeout, rather than polling: waiters
    # show in pg_locks and pg_stat_activity, so a DBA sees who waits for whom.
    if conn.in_transaction() and not transaction_scoped:
        conn.commit()
    # SET LOCAL: the wait applies to this statement's transaction only.
    conn.execute(text(f"SET LOCAL lock_timeout = {max(1, int(wait_s * 1000))}"))
    take = "pg_advisory_xact_lock" if transaction_scoped else "pg_advisory_lock"
    try:
        conn.execute(text(f"SELECT {take}(:key)"), {"key": LOCK_KEY})
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
    if not transaction_scoped:
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
