"""The read lane: single statements outside any transaction, on pgstack's own connections.

A read on a session that has begun no work needs no transaction: one statement is atomic and
sees one snapshot. Checking a connection out of SQLAlchemy's pool (through a greenlet) costs
more client CPU than such a read itself, so pgstack's fast reads, the token vault's hot read
and identity's one-row statements (`pgstack.identity._rows`) run here instead:

- asyncpg connections open on demand, up to `DATABASE_READ_POOL_SIZE` (default: the pool size; 0
  turns the lane off), with the engine's server settings (application name, statement
  timeout), TLS options and JSON codecs, and close after a minute unused;
- no reset query after pgstack's own single-statement reads, which leave no session state
  behind (no SET, LISTEN, cursor or advisory lock); `Database.run`, whose statement is the
  caller's, resets the connection after it as asyncpg's pool does;
- no ping on checkout: a read that finds its connection dead runs once more on another
  (reads can be repeated), so a restarted server costs one failed attempt, not an error;
- the engine's statement listeners (query metrics, `pgstack.testing.record_statements`) see
  every statement; the `conn` they receive is a `LaneConnection` with `info` and `engine`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import TypeDecorator
from sqlalchemy import exc as sa_exc
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from pgstack.db.tenant import SET_BOTH_SQL, scoped_read
from pgstack.errors import DatabaseUnavailableError, PoolExhaustedError
from pgstack.orm.context import audit_context

logger = logging.getLogger("pgstack.db")

# Errors after which the connection is gone (the pool opens another on the next acquire).
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    OSError,
)

# Options SQLAlchemy's asyncpg adapter reads from the URL that asyncpg itself does not take.
_ADAPTER_OPTIONS = ("prepared_statement_name_func", "async_fallback")


# What a Float and a Numeric column are in PostgreSQL (float8, numeric): their result
# processors convert between float and Decimal by the column's type.
_FLOAT8_OID, _NUMERIC_OID = 701, 1700
# Compiled statements kept per cache (bounded like SQLAlchemy's own cache).
_MAX_PLANS = 500


def cached(plans: dict[Any, Any], key: Any, make: Callable[[], Any]) -> Any:
    """`plans[key]`, made by `make()` the first time; the cache is emptied when full."""
    plan = plans.get(key)
    if plan is None:
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        plan = plans[key] = make()
    return plan


def driver_arguments(
    params: tuple[tuple[str, Callable[[Any], Any] | None], ...], values: Mapping[str, Any]
) -> list[Any]:
    """The positional arguments for asyncpg: each parameter's value, bind-processed."""
    return [
        values[name] if processor is None else processor(values[name]) for name, processor in params
    ]


def engine_error(engine: Engine, error: Exception, sql: str, args: Sequence[Any]) -> Exception:
    """asyncpg's error as SQLAlchemy raises it for the same statement (IntegrityError, ...)."""
    dialect: Any = engine.dialect
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(dialect.dbapi, error)
    except Exception as adapted:
        return sa_exc.DBAPIError.instance(
            sql,
            list(args),
            adapted,
            dialect.dbapi.Error,
            hide_parameters=engine.hide_parameters,
            dialect=dialect,
        )
    return error  # pragma: no cover - the call above always raises


def result_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """The type's result processor; numeric ones depend on the column's PostgreSQL type."""
    base = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
    coltype = None
    if isinstance(base, sqltypes.Float):
        coltype = _FLOAT8_OID
    elif isinstance(base, sqltypes.Numeric):
        coltype = _NUMERIC_OID
    processor: Callable[[Any], Any] | None = type_._cached_result_processor(dialect, coltype)
    return processor


def compile_for_driver(statement: Any, dialect: Dialect, cache_key: Any = None) -> Any | None:
    """The statement compiled for asyncpg, or None where SQLAlchemy renders it per call."""
    if dialect.driver != "asyncpg":
        return None
    compiled: Any = statement.compile(dialect=dialect, cache_key=cache_key)
    if compiled.literal_execute_params or compiled.post_compile_params:
        return None  # IN lists and the like are rendered per call: SQLAlchemy's job
    if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
        return None  # Python-side column defaults are computed per call by SQLAlchemy
    return compiled


def driver_parameters(compiled: Any) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    """The compiled statement's positional parameters: name and bind processor, in order."""
    binds = compiled._bind_processors
    return tuple((name, binds.get(name)) for name in compiled.positiontup or ())


def driver_options(engine: AsyncEngine, connect_args: dict[str, Any]) -> dict[str, Any]:
    """`asyncpg.connect()`'s arguments for the engine's database, with `connect_args`."""
    dialect: Any = engine.sync_engine.dialect
    _, options = dialect.create_connect_args(engine.sync_engine.url)
    # connect_args first: the pooler's (prepared_statement_cache_size=0) is SQLAlchemy's
    # adapter option, which asyncpg knows as statement_cache_size.
    options.update(connect_args)
    for name in _ADAPTER_OPTIONS:
        options.pop(name, None)
    cache_size = options.pop("prepared_statement_cache_size", None)
    if cache_size is not None:
        options.setdefault("statement_cache_size", cache_size)
    return dict(options)


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    params: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    compiled: Any


class LaneConnection:
    """Stands for the connection in statement events of the read lane."""

    __slots__ = ("engine", "info")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.info: dict[str, Any] = {}


class _Adapted:
    """The shape SQLAlchemy's codec setup expects: a wrapper holding the driver connection."""

    __slots__ = ("_connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection


class _Connections:
    """A small pool of asyncpg connections, just what the lane needs and nothing per call.

    asyncpg's own pool spends a task (`shield`), a timeout and a queue round on every
    acquire/release, and a reset query on release: together more client CPU than a
    primary-key read. Here a free connection is a pop from a list, a release an append.
    Connections open on demand, the most recently used is reused first, and one unused for
    `idle_lifetime` seconds is closed. A connection whose statement did not end cleanly
    (cancelled, lost) is terminated, never reused.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        size: int,
        idle_lifetime: float,
    ) -> None:
        self._connect = connect
        self.size = size
        self._idle_lifetime = idle_lifetime
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        self._busy: set[asyncpg.Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closing: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def total(self) -> int:
        return len(self._idle) + len(self._busy) + self._opening

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return len(self._busy)

    def drop_idle(self) -> None:
        """Close every idle connection: the server they lead to restarted or lost its role."""
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.terminate()

    async def acquire(self, timeout: float) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise DatabaseUnavailableError("The database is disconnected.")
            if self._idle:
                connection = self._idle.pop()[0]
                if connection.is_closed():
                    continue
                self._busy.add(connection)
                return connection
            if self.total < self.size:
                self._opening += 1
                try:
                    connection = await self._connect()
                except BaseException:
                    self._opening -= 1
                    self._wake()  # the slot is free again: a waiter may try in its turn
                    raise
                self._opening -= 1
                self._busy.add(connection)
                return connection
            await self._wait(timeout)

    async def _wait(self, timeout: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise PoolExhaustedError(
                "No read-lane connection became free within DATABASE_POOL_TIMEOUT. Release "
                "sessions sooner, or raise DATABASE_READ_POOL_SIZE within the server's "
                "max_connections."
            ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake()  # this turn was handed to us: pass it on
            raise
        finally:
            if not waiter.done():
                self._waiters.remove(waiter)

    def release(self, connection: asyncpg.Connection, reusable: bool) -> None:
        self._busy.discard(connection)
        if reusable and not self._closed and not connection.is_closed():
            loop = asyncio.get_running_loop()
            self._idle.append((connection, loop.time()))
            if self._timer is None:
                self._timer = loop.call_later(self._idle_lifetime, self._close_unused)
        elif not connection.is_closed():
            connection.terminate()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_unused(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self._idle_lifetime
        # The list is oldest first: the expired connections are a prefix.
        expired = 0
        while expired < len(self._idle) and self._idle[expired][1] <= cutoff:
            expired += 1
        for connection, _ in self._idle[:expired]:
            task = loop.create_task(connection.close(timeout=5))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        del self._idle[:expired]
        if self._idle:
            delay = self._idle[0][1] + self._idle_lifetime - loop.time()
            self._timer = loop.call_later(max(delay, 0.0), self._close_unused)

    async def close(self, timeout: float) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)  # they find the pool closed
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._busy or self._opening) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for connection in list(self._busy):
            logger.warning("closing the read lane with a statement still running")
            connection.terminate()
        self._busy.clear()
        idle, self._idle = self._idle, []
        await asyncio.gather(
            *(c.close(timeout=5) for c, _ in idle), *self._closing, return_exceptions=True
        )


def _demoted(exc: asyncpg.PostgresError, connection: asyncpg.Connection) -> bool:
    from pgstack.db.database import server_read_only
    from pgstack.db.session import READ_ONLY_SQLSTATE

    return exc.sqlstate == READ_ONLY_SQLSTATE and server_read_only(connection)


class ReadLane:
    """pgstack's own asyncpg connections for single statements run outside a transaction."""

    def __init__(self, pool: _Connections, engine: AsyncEngine, timeout: float):
        self.pool = pool
        self._engine = engine.sync_engine
        self._timeout = timeout
        self._plans: dict[Any, _Plan] = {}
        #: Reset the connection after a caller's statement (`run`); off behind a pooler.
        self.resets = True
        #: The lane of a primary: a write its server refuses as a replica's (25006) means
        #: the primary changed; the connection is dropped as if lost.
        self.follows_primary = False

    @classmethod
    def open(
        cls,
        engine: AsyncEngine,
        connect_args: dict[str, Any],
        size: int,
        timeout: float,
        idle_lifetime: float = 60.0,
    ) -> ReadLane:
        """A lane to the engine's database; no connection opens until the first statement."""
        dialect: Any = engine.sync_engine.dialect
        options = driver_options(engine, connect_args)

        async def connect() -> asyncpg.Connection:
            connection = await asyncpg.connect(**options)
            try:
                # The engine's JSON codecs, so compiled result processors apply unchanged.
                await dialect.setup_asyncpg_json_codec(_Adapted(connection))
                await dialect.setup_asyncpg_jsonb_codec(_Adapted(connection))
            except BaseException:
                connection.terminate()
                raise
            return connection

        return cls(_Connections(connect, size, idle_lifetime), engine, timeout)

    @property
    def echo(self) -> bool:
        """Whether SQL echo is on (then reads take the ordinary, logged path)."""
        return bool(self._engine.echo)

    def plan(self, statement: Any, key: Any = None) -> tuple[_Plan, Any] | None:
        """A Core statement's compiled plan and cache key, or None if the lane cannot run it.

        `key`: the caller's own name for a statement it built once and reuses (with its
        values as parameters): the plan is then found by that name, without generating
        SQLAlchemy's cache key of the statement on every call.
        """
        if key is not None:
            named = cached(self._plans, ("named", key), lambda: self.plan(statement) or False)
            return named or None
        cache_key = statement._generate_cache_key()
        if cache_key is None:
            return None
        dialect = self._engine.dialect

        def make() -> _Plan | bool:
            compiled = compile_for_driver(statement, dialect, cache_key)
            if compiled is None:
                return False
            return _Plan(
                sql=compiled.string,
                params=driver_parameters(compiled),
                results=tuple(result_processor(e[3], dialect) for e in compiled._result_columns),
                compiled=compiled,
            )

        plan = cached(self._plans, cache_key.key, make)
        return (plan, cache_key) if plan else None

    async def run(
        self,
        plan: _Plan,
        cache_key: Any,
        values: Mapping[str, Any] | None,
        *,
        reset: bool = True,
    ) -> list[tuple[Any, ...]]:
        """Run a planned statement once and return its rows.

        No second try (it may write), and its connection is reset afterwards: the statement
        is the caller's and may leave session state behind. `reset=False` is for pgstack's
        own statements, which leave none (a plain INSERT).
        """
        params = plan.compiled.construct_params(
            values, extracted_parameters=cache_key.bindparams, escape_names=False
        )
        args = driver_arguments(plan.params, params)
        records = await self.fetch(plan.sql, args, retry=False, reset=reset and self.resets)
        results = plan.results
        if not any(results):
            return [tuple(record) for record in records]
        return [
            tuple(
                value if process is None or value is None else process(value)
                for process, value in zip(results, record, strict=True)
            )
            for record in records
        ]

    async def fetch(
        self, sql: str, args: Sequence[Any], *, retry: bool = True, reset: bool = False
    ) -> list[Any]:
        """Run one statement and return its records.

        With `retry` (reads), a statement that finds its connection dead runs once more on
        another; without, a lost connection is a DatabaseUnavailableError. A statement the
        server refuses raises the error SQLAlchemy would (IntegrityError, ...). With `reset` (a
        statement pgstack did not write, which may SET, LISTEN, lock or BEGIN), the
        connection is reset as asyncpg's pool does before anyone uses it again. With a tenant
        in context, the statement sets it for its own policies (`pgstack.db.tenant`).
        """
        pool = self.pool
        sql, args, tenant = scoped_read(sql, args)
        for attempt in (1, 2):
            connection = await pool.acquire(self._timeout)
            reusable = False
            try:
                if tenant is None:
                    records = await self._run(connection, sql, args)
                else:
                    # A write with a tenant: in a transaction that sets it (row-level security)
                    # and who acts (the audit triggers read it), as a session's begin does.
                    async with connection.transaction():
                        await connection.fetchval(SET_BOTH_SQL, tenant, json.dumps(audit_context()))
                        records = await self._run(connection, sql, args)
                reusable = True
                return records
            except _CONNECTION_LOST as exc:
                pool.drop_idle()  # opened to the same server before it went: gone too
                if not retry:
                    raise DatabaseUnavailableError(
                        "The connection to PostgreSQL was lost while a statement ran "
                        f"({type(exc).__name__}); whether it took effect is unknown. Check, "
                        "then run it again if it did not."
                    ) from exc
                if attempt == 2:
                    raise DatabaseUnavailableError(
                        "The connection to PostgreSQL was lost twice in a row while reading "
                        f"({type(exc).__name__}). Check that the server is running."
                    ) from exc
                logger.info("a read-lane connection was gone; running the read again")
            except asyncpg.PostgresError as exc:
                if self.follows_primary and _demoted(exc, connection):
                    pool.drop_idle()
                    raise DatabaseUnavailableError(
                        "The server refused a write as a read-only replica: the primary "
                        "changed (failover). The connection was dropped and nothing was "
                        "written; retry, and the next connection goes to the new primary."
                    ) from exc
                reusable = True  # the server refused the statement; the connection is fine
                raise engine_error(self._engine, exc, sql, args) from exc
            finally:
                try:
                    if reusable and reset:
                        reusable = False
                        await connection.reset(timeout=self._timeout)
                        reusable = True
                except Exception:  # noqa: S110 - one that cannot be reset is closed instead
                    pass
                finally:
                    pool.release(connection, reusable)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, connection: Any, sql: str, args: Sequence[Any]) -> list[Any]:
        engine = self._engine
        if not engine._has_events:
            records: list[Any] = await connection.fetch(sql, *args)
            return records
        conn = LaneConnection(engine)
        dispatch = engine.dispatch
        dispatch.before_cursor_execute(conn, None, sql, args, None, False)
        records = await connection.fetch(sql, *args)
        dispatch.after_cursor_execute(conn, None, sql, args, None, False)
        return records

    def stats(self) -> dict[str, int]:
        """The lane's numbers in the shape of `Database.pool_stats()`."""
        pool = self.pool
        return {
            "size": pool.size,
            "checked_in": pool.idle,
            "checked_out": pool.busy,
            "overflow": 0,
            "max_overflow": 0,
            "total": pool.total,
        }

    async def close(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for statements in flight, then close every connection."""
        await self.pool.close(timeout)
