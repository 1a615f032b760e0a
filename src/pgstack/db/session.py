"""The session class pgstack hands out: one task at a time, errors in pgstack's terms."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from asyncpg.exceptions import TargetServerAttributeNotMatched
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import exc as orm_exc

from pgstack.db.metrics import sqlstate_of
from pgstack.errors import (
    ConcurrentSessionUseError,
    ConflictError,
    DatabaseUnavailableError,
    PgStackError,
    PoolExhaustedError,
    StatementTimeoutError,
    TenantScopeError,
)

if TYPE_CHECKING:
    from pgstack.db.lane import ReadLane

T = TypeVar("T")

_CONCURRENT_USE = (
    "This session is already running an operation for another task. A session serves one "
    "request or task at a time: open a session per task (`async with db.session()`), or "
    "await its operations one after another instead of gathering them."
)


# SQLSTATEs that mean "the server is not there right now": a connection exception (class 08),
# the server shutting down or starting up (57P01-57P03, e.g. 57P03 "the database system is
# starting up" during a restart's recovery), too many connections. Another try later may work.
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}
_QUERY_CANCELED = "57014"
_IN_FAILED_TRANSACTION = "25P02"
_INSUFFICIENT_PRIVILEGE = "42501"
#: read_only_sql_transaction: a write in a read-only transaction, or on a replica.
READ_ONLY_SQLSTATE = "25006"


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (SQLAlchemy's or asyncpg's) says the server cannot serve right now."""
    code = sqlstate_of(exc)
    return code is not None and (code in _UNAVAILABLE_SQLSTATES or code.startswith("08"))


def translate_error(exc: BaseException) -> BaseException:
    """Map driver and pool errors that callers act on into pgstack errors."""
    if isinstance(exc, sa_exc.TimeoutError):
        return PoolExhaustedError(
            "No database connection became free within DATABASE_POOL_TIMEOUT. Release sessions "
            "sooner (one per request or task), or raise DATABASE_POOL_SIZE / "
            "DATABASE_MAX_OVERFLOW within the server's max_connections."
        )
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        if sqlstate_of(exc) == READ_ONLY_SQLSTATE:
            return DatabaseUnavailableError(
                "The server refused a write as a read-only replica: the primary changed "
                "(failover). The connection was dropped and nothing was committed; retry, and "
                "the next connection goes to the new primary."
            )
        return DatabaseUnavailableError(
            "The connection to PostgreSQL was lost during the operation "
            f"({type(exc.orig).__name__}). The work was not committed; retry it."
        )
    if _no_host_matched(exc):
        return DatabaseUnavailableError(
            "No host of DATABASE_URL matches its target_session_attrs right now (no primary: "
            "a failover may be under way). Nothing was committed; retry shortly."
        )
    if isinstance(exc, OSError | ConnectionError):
        return DatabaseUnavailableError(
            f"Cannot reach PostgreSQL ({exc}). Check that the server is running."
        )
    if isinstance(exc, PgStackError):
        return exc
    if is_unavailable(exc):
        return DatabaseUnavailableError(
            f"PostgreSQL cannot serve right now (SQLSTATE {sqlstate_of(exc)}: it is starting, "
            "stopping or out of connections). The work was not committed; retry it shortly."
        )
    if sqlstate_of(exc) == _QUERY_CANCELED:
        return StatementTimeoutError(
            "The statement was cancelled by the server: it ran longer than the statement "
            "timeout (DATABASE_STATEMENT_TIMEOUT_MS), or was cancelled on request. Nothing "
            "was committed; make the query cheaper, or raise the timeout."
        )
    if sqlstate_of(exc) == _IN_FAILED_TRANSACTION:
        return PgStackError(
            "The transaction already failed on an earlier statement, and PostgreSQL ignores "
            "every other statement until it is rolled back: roll it back (leave its block) "
            "and start again, or put a statement that may fail in a savepoint "
            "(session.begin_nested())."
        )
    if sqlstate_of(exc) == _INSUFFICIENT_PRIVILEGE and "row-level security" in str(exc):
        return TenantScopeError(
            "A write was refused by row-level security: the row's tenant is not the tenant of "
            "the transaction. Enter tenant_context() before the transaction begins, and write "
            "only that tenant's rows."
        )
    # pgstack errors raised inside SQLAlchemy (column types, defaults) come out wrapped.
    if isinstance(exc, sa_exc.StatementError) and isinstance(exc.orig, PgStackError):
        return exc.orig
    if isinstance(exc, orm_exc.StaleDataError):
        return ConflictError(
            "The row was changed or deleted by someone else since it was read (its version "
            "no longer matches). Read it again and re-apply the change."
        )
    return exc


async def flush_pending(session: AsyncSession, what: str) -> None:
    """Flush the caller's pending changes before `what` writes in the caller's session.

    Their errors stay theirs (same exception, same type), with a note saying where they
    come from: a pending row of the same table fails on the same INSERT as `what`'s own
    would, and the traceback could not tell them apart.
    """
    try:
        await session.flush()
    except Exception as exc:
        exc.add_note(
            f"Raised by the session's own pending changes, flushed before {what} wrote "
            "anything: fix or drop those objects; this is not an error of "
            f"{what}."
        )
        raise


def _no_host_matched(exc: BaseException | None) -> bool:
    """asyncpg tried every host of a multi-host URL and none had the role asked for."""
    for _ in range(5):
        if exc is None:
            return False
        if isinstance(exc, TargetServerAttributeNotMatched):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__
    return False


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise the errors of the block in pgstack's terms (`translate_error`)."""
    try:
        yield
    except Exception as exc:
        translated = translate_error(exc)
        if translated is exc:
            raise
        raise translated from exc


def _guarded(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(self: Session, *args: Any, **kwargs: Any) -> T:
        task = asyncio.current_task()
        if self._pgstack_depth and self._pgstack_owner is not task:
            raise ConcurrentSessionUseError(_CONCURRENT_USE)
        self._pgstack_owner = task
        self._pgstack_depth += 1
        try:
            # `translated_errors()` written out: this wraps every operation of every session.
            return await method(self, *args, **kwargs)
        except Exception as exc:
            translated = translate_error(exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            self._pgstack_depth -= 1
            if not self._pgstack_depth:
                self._pgstack_owner = None

    return wrapper


async def _call(self: Session, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await fn(*args)


class Session(AsyncSession):
    """An `AsyncSession` that refuses use from two tasks at once with a clear error."""

    _pgstack_owner: asyncio.Task[Any] | None = None
    _pgstack_depth: int = 0
    #: The read lane of the Database that opened this session (None: reads use the session's
    #: own connection).
    _pgstack_lane: ReadLane | None = None

    #: Run `fn(*args)` holding this session like any of its operations (pgstack's fast paths
    #: use it to work on the session's connection directly without losing the D2 guard).
    _pgstack_run_exclusive: Callable[..., Awaitable[Any]] = _guarded(_call)

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        sync = self.sync_session
        if not sync.in_transaction():
            # No transaction, so no connection to give back: closing only forgets the loaded
            # objects, with no I/O (no task and greenlet needed, which cost more than a read);
            # with none (a page of plain rows), there is nothing to do.
            if len(sync.identity_map) or sync.new or sync.deleted:
                sync.close()
            return
        await super().__aexit__(type_, value, traceback)

    # Wrapped only at run time, so type checkers keep AsyncSession's precise overloads.
    if not TYPE_CHECKING:
        execute = _guarded(AsyncSession.execute)
        scalar = _guarded(AsyncSession.scalar)
        scalars = _guarded(AsyncSession.scalars)
        get = _guarded(AsyncSession.get)
        get_one = _guarded(AsyncSession.get_one)
        stream = _guarded(AsyncSession.stream)
        stream_scalars = _guarded(AsyncSession.stream_scalars)
        flush = _guarded(AsyncSession.flush)
        commit = _guarded(AsyncSession.commit)
        rollback = _guarded(AsyncSession.rollback)
        refresh = _guarded(AsyncSession.refresh)
        merge = _guarded(AsyncSession.merge)
        delete = _guarded(AsyncSession.delete)
        connection = _guarded(AsyncSession.connection)
        run_sync = _guarded(AsyncSession.run_sync)
