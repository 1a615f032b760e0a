"""`Database`: the engine and pool, sessions, transactions with retry, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.sql.base import Executable
from sqlalchemy.util import await_
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from pgstack.config import Settings, host_port, hosts_text, render_url
from pgstack.db import metrics, tenant
from pgstack.db.metrics import sqlstate_of
from pgstack.db.pooler import (
    pooled_connect_args,
    set_in_each_transaction,
    transaction_pooled,
    transaction_settings,
)
from pgstack.db.replicas import is_plain_read
from pgstack.db.session import READ_ONLY_SQLSTATE, Session, translated_errors
from pgstack.errors import ConfigurationError, DatabaseUnavailableError, TransactionRetryError

if TYPE_CHECKING:
    from pgstack.db.embedded import EmbeddedPostgres
    from pgstack.db.health import HealthCheckFn, HealthReport
    from pgstack.db.lane import ReadLane
    from pgstack.db.replicas import ReplicaSet

logger = logging.getLogger("pgstack.db")

T = TypeVar("T")
Isolation = Literal["read_committed", "repeatable_read", "serializable", "autocommit"]

_ISOLATION_LEVELS = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
    "autocommit": "AUTOCOMMIT",
}
RETRYABLE_SQLSTATES = {"40001": "serialization failure", "40P01": "deadlock"}
_READ_ONLY_PARAMETERS = ("in_hot_standby", "default_transaction_read_only")
# Errors that another attempt cannot fix: bad credentials, missing database, bad role.
_FATAL_CONNECT_SQLSTATES = {"28P01", "28000", "3D000", "42704"}


class Database:
    """A PostgreSQL database: pool, sessions, transactions, health and a clean shutdown."""

    def __init__(self, settings: Settings | None = None, *, name: str = "primary") -> None:
        self.settings = settings if settings is not None else Settings()
        self.name = name
        self.embedded: EmbeddedPostgres | None = None
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[Session] | None = None
        self._lane: ReadLane | None = None
        self._replicas: ReplicaSet | None = None
        self._url: URL | None = self.settings.url
        # Extra readiness checks (e.g. "migrations at head"); each returns a health Check.
        self.health_checks: list[HealthCheckFn] = []
        #: `host:port` of the server the newest pool connection reached: with several hosts
        #: in DATABASE_URL, the one that is primary now (None before the first connection).
        self.primary_host: str | None = None
        #: Times the primary's address changed since `connect()`: failovers seen.
        self.failovers = 0

    def __repr__(self) -> str:
        where = render_url(self._url) if self._url is not None else "(embedded, not started)"
        return f"Database({where}, connected={self.is_connected})"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> URL:
        """The URL in use (password included: never log it, use `safe_url`)."""
        if self._url is None:
            raise ConfigurationError(
                "No database is configured and the embedded server is not started yet: "
                "call `await db.connect()`, or set DATABASE_URL."
            )
        return self._url

    @property
    def safe_url(self) -> str:
        """The URL for people and logs, the password shown as `***`."""
        return render_url(self._url) if self._url is not None else "(embedded, not started)"

    @property
    def is_connected(self) -> bool:
        """Whether `connect()` succeeded and `disconnect()` has not run since."""
        return self._engine is not None

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine; connect first."""
        if self._engine is None:
            raise DatabaseUnavailableError(
                "The database is not connected: call `await db.connect()` first "
                "(pgstack's web app does this in its lifespan)."
            )
        return self._engine

    async def connect(self) -> None:
        """Open the pool, retrying with exponential backoff and jitter until the server answers.

        With no server configured, start (or reuse) the embedded PostgreSQL first.
        """
        if self._engine is not None:
            return
        if self._url is None:
            await self._start_embedded()
        engine = self._create_engine(self.url)
        event.listen(engine.sync_engine.pool, "connect", self._note_server)
        event.listen(engine.sync_engine, "handle_error", self._drop_demoted)
        s = self.settings
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(s.database_connect_attempts),
                wait=self._connect_wait,
                retry=retry_if_exception(_is_retryable_connect_error),
                before_sleep=self._log_retry,
                reraise=True,
            ):
                with attempt:
                    async with engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
        except Exception as exc:
            await engine.dispose()
            raise self._unavailable(exc, s.database_connect_attempts) from None
        self._lane = self._open_lane(engine)
        if self._lane is not None:
            self._lane.follows_primary = True
        self._engine = engine
        self._sessionmaker = async_sessionmaker(
            engine, class_=Session, expire_on_commit=False, autoflush=True
        )
        if s.replica_urls:
            from pgstack.db.replicas import ReplicaSet

            self._replicas = await ReplicaSet.open(self)
        logger.info("connected to %s", self.safe_url)

    async def disconnect(self, timeout: float = 10.0) -> None:
        """Let checked-out connections finish (up to `timeout` seconds), then close the pool."""
        engine, self._engine = self._engine, None
        lane, self._lane = self._lane, None
        replicas, self._replicas = self._replicas, None
        if engine is not None:
            deadline = time.monotonic() + timeout
            if replicas is not None:
                await replicas.close(timeout)
            if lane is not None:
                await lane.close(timeout)
            pool: Any = engine.pool
            while pool.checkedout() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            busy = pool.checkedout()
            if busy:
                logger.warning("closing the pool with %d connection(s) still checked out", busy)
            await engine.dispose()
            self._sessionmaker = None
            logger.info("disconnected from %s", self.safe_url)
        if self.embedded is not None:
            embedded, self.embedded = self.embedded, None
            await asyncio.to_thread(embedded.stop)
            self._url = None

    async def __aenter__(self) -> Database:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # -- sessions and transactions -----------------------------------------------------------

    def session(self, *, readonly: bool = False) -> Session:
        """A session for one request or task: `async with db.session() as session: ...`.

        It is closed (its connection returned) when the block ends. With replicas, its reads
        may go to one (see `pgstack.db.replicas`); `readonly=True` refuses writes and sends
        every statement to a replica while one is healthy.
        """
        if self._sessionmaker is None:
            raise DatabaseUnavailableError(
                "The database is not connected: call `await db.connect()` first."
            )
        if self._replicas is not None:
            return self._replicas.session(readonly)
        if readonly:
            engine = self.engine.execution_options(postgresql_readonly=True)
            session = self._sessionmaker(bind=engine)
        else:
            session = self._sessionmaker()
        session._pgstack_lane = self._lane
        return session

    @asynccontextmanager
    async def transaction(
        self, *, readonly: bool = False, isolation: Isolation | None = None
    ) -> AsyncIterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error.

        Nest savepoints with `async with session.begin_nested(): ...`.
        """
        options: dict[str, Any] = {}
        if isolation is not None:
            if isolation not in _ISOLATION_LEVELS:
                raise ConfigurationError(
                    f"Unknown isolation {isolation!r}; use one of {', '.join(_ISOLATION_LEVELS)}."
                )
            options["isolation_level"] = _ISOLATION_LEVELS[isolation]
        if readonly:
            options["postgresql_readonly"] = True
        # A hot standby refuses serializable transactions: those run on the primary.
        replica_ok = readonly and isolation not in ("serializable", "autocommit")
        async with self.session(readonly=replica_ok) as session:
            with translated_errors():
                async with session.begin():
                    if options:
                        await session.connection(execution_options=options)
                    yield session

    async def run_in_transaction(
        self,
        fn: Callable[[Session], Awaitable[T]],
        *,
        isolation: Isolation = "serializable",
        retries: int = 5,
        readonly: bool = False,
        backoff: float = 0.02,
    ) -> T:
        """Run `fn(session)` in a transaction, re-running it on serialization failure or deadlock.

        `fn` may run more than once: keep side effects outside the database out of it.
        """
        attempt = 0
        while True:
            try:
                async with self.transaction(isolation=isolation, readonly=readonly) as session:
                    return await fn(session)
            except sa_exc.DBAPIError as exc:
                code = sqlstate_of(exc)
                if code not in RETRYABLE_SQLSTATES:
                    raise
                if attempt >= retries:
                    raise TransactionRetryError(
                        f"The transaction failed with a {RETRYABLE_SQLSTATES[code]} (SQLSTATE "
                        f"{code}) {attempt + 1} times and was given up. Retry later, raise "
                        "`retries`, or reduce contention on the rows it touches."
                    ) from exc
                attempt += 1
                metrics.TRANSACTION_RETRIES.labels(sqlstate=code).inc()
                delay = backoff * (2 ** (attempt - 1)) * (0.5 + random.random())  # noqa: S311
                logger.info(
                    "transaction %s (SQLSTATE %s); retry %d of %d in %.0f ms",
                    RETRYABLE_SQLSTATES[code],
                    code,
                    attempt,
                    retries,
                    delay * 1000,
                )
                await asyncio.sleep(delay)

    async def run(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement by itself, committed when it returns, and return its rows.

        For work that is one statement and needs no session: a counter
        (`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`), claiming a job
        (`UPDATE ... RETURNING`), a lookup. A single statement is atomic, so it runs without
        BEGIN/COMMIT on the read lane. Build the statement once with `bindparam()`s and pass
        the values in `params`: its compiled form is then reused. A connection lost while it
        runs is a DatabaseUnavailableError (it is not run again: it may have taken effect).
        Session state it leaves (SET, advisory locks, LISTEN, an open transaction) is reset
        before the connection serves anyone else; behind a transaction pooler
        (DATABASE_POOLER) it cannot be, so leave none there.
        """
        with translated_errors():
            return await self._run(statement, params)

    async def _run(
        self, statement: Executable, params: Mapping[str, Any] | None
    ) -> list[tuple[Any, ...]]:
        replicas = self._replicas
        if replicas is not None and is_plain_read(statement):
            rows = await replicas.run(statement, params)
            if rows is not None:
                return rows
        lane = self._lane
        # The caller's statement may write: with a tenant, it runs in a transaction that
        # sets it (see pgstack.db.tenant), not on the lane.
        fits = lane is not None and not lane.echo and tenant.tenant_value() is None
        planned = lane.plan(statement) if lane is not None and fits else None
        if lane is not None and planned is not None:
            return await lane.run(*planned, params)
        async with self.engine.connect() as conn:
            result = await conn.execute(statement, params)
            rows = [tuple(row) for row in result] if result.returns_rows else []
            await conn.commit()
            if self._lane_resets:
                # As on the lane: settings, locks and listeners the statement left go now.
                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection
                await driver.reset()
            return rows

    @property
    def _lane_resets(self) -> bool:
        # Behind a transaction pooler the next statement may run on another server connection:
        # a reset would only clear settings the pooler tracks (application_name).
        return not transaction_pooled(self.settings)

    # -- observation -------------------------------------------------------------------------

    def pool_stats(self) -> dict[str, int]:
        """Pool size, checked in, checked out, overflow, max overflow and total connections."""
        return engine_pool_stats(self.engine, self.settings.database_max_overflow)

    @property
    def replicas(self) -> ReplicaSet | None:
        """The read replicas (see `pgstack.db.replicas`), or None when there are none."""
        return self._replicas

    @property
    def read_lane(self) -> ReadLane | None:
        """The read lane (see `pgstack.db.lane`), or None when it is off or not connected."""
        return self._lane

    def read_pool_stats(self) -> dict[str, int] | None:
        """The read lane's pool in the shape of `pool_stats()`, or None when it is off."""
        return self._lane.stats() if self._lane is not None else None

    async def health_check(self) -> HealthReport:
        """Readiness report: round trip and latency, pool saturation, query performance."""
        from pgstack.db.health import readiness

        return await readiness(self)

    # -- failover ----------------------------------------------------------------------------

    def _note_server(self, dbapi_connection: Any, record: Any) -> None:
        """A new pool connection: note which host it reached; a different one is a failover."""
        address = server_address(dbapi_connection.driver_connection)
        if address is None or address == self.primary_host:
            return
        previous, self.primary_host = self.primary_host, address
        metrics.PRIMARY.note(self.name, address)
        if previous is None:
            return
        self.failovers += 1
        metrics.FAILOVERS.labels(database=self.name).inc()
        logger.warning("the primary is now %s (was %s): failover seen", address, previous)
        if self._lane is not None:
            self._lane.pool.drop_idle()  # they lead to the old primary

    def _drop_demoted(self, context: Any) -> None:
        """A write refused because the server became a replica: drop the connection and pool.

        After a failover, a connection opened to the old primary may find it read-only
        (restarted as a standby, or fenced with default_transaction_read_only). SQLSTATE 25006
        there, when the session did not ask for a read-only transaction, counts as a lost
        connection: SQLAlchemy discards every pooled connection, and the next one is opened
        by the URL's rules (`target_session_attrs=read-write` finds the new primary).
        """
        if sqlstate_of(context.original_exception) != READ_ONLY_SQLSTATE:
            return
        wrapper = context.connection.connection if context.connection is not None else None
        adapted = getattr(wrapper, "dbapi_connection", None)
        if adapted is None or getattr(adapted, "readonly", False):
            return  # a read-only transaction refused a write: the caller's mistake, kept
        if server_read_only(adapted.driver_connection):
            context.is_disconnect = True
            if self._lane is not None:
                self._lane.pool.drop_idle()

    # -- internals ---------------------------------------------------------------------------

    def _server_settings(self) -> dict[str, str]:
        s = self.settings
        server_settings = {"application_name": "pgstack"}
        if s.database_statement_timeout_ms is not None:
            server_settings["statement_timeout"] = str(s.database_statement_timeout_ms)
        return server_settings

    def _connect_args(self) -> dict[str, Any]:
        """What every new connection is opened with (engine and read lane alike)."""
        s = self.settings
        connect_args: dict[str, Any] = {
            "server_settings": self._server_settings(),
            "timeout": s.database_connect_timeout,
            "ssl": s.ssl_option,
        }
        if s.database_statement_timeout_ms is not None:
            # The server cancels a slow statement itself; this bounds the wait when the server
            # does not answer at all (stalled host, network partition).
            connect_args["command_timeout"] = s.database_statement_timeout_ms / 1000 + 1.0
        return pooled_connect_args(s, connect_args)

    def _open_lane(self, engine: AsyncEngine) -> ReadLane | None:
        """The read lane to `engine`'s server, or None when there is none to have.

        Behind a transaction pooler, the lane's statements run outside any transaction, where
        settings set per transaction (a statement timeout) would not apply: reads take the
        session path then.
        """
        s = self.settings
        if not s.read_pool_size or transaction_settings(s, self._server_settings()):
            return None
        from pgstack.db.lane import ReadLane

        lane = ReadLane.open(
            engine, self._connect_args(), s.read_pool_size, s.database_pool_timeout
        )
        lane.resets = self._lane_resets
        return lane

    def _create_engine(self, url: URL) -> AsyncEngine:
        s = self.settings
        connect_args = self._connect_args()
        engine = create_async_engine(
            url,
            pool_size=s.database_pool_size,
            max_overflow=s.database_max_overflow,
            pool_timeout=s.database_pool_timeout,
            pool_recycle=s.database_pool_recycle,
            # SQLAlchemy's own pre-ping wraps its probe in BEGIN ... ROLLBACK: three round
            # trips per checkout. pgstack pings with one (see _ping_on_checkout).
            pool_pre_ping=False,
            echo=s.database_echo,
            # Errors and echo show statements without their values: a value may be a password
            # hash, a token or personal data, and errors reach logs.
            hide_parameters=True,
            connect_args=connect_args,
        )
        if s.database_pool_pre_ping:
            event.listen(engine.sync_engine.pool, "connect", _note_checkin)
            event.listen(engine.sync_engine.pool, "checkout", _ping_on_checkout)
            event.listen(engine.sync_engine.pool, "checkin", _note_checkin)
        set_in_each_transaction(
            engine.sync_engine, transaction_settings(s, self._server_settings())
        )
        event.listen(engine.sync_engine, "handle_error", _invalidate_on_timeout)
        metrics.instrument(engine.sync_engine)
        tenant.install(engine)
        metrics.POOL_COLLECTOR.track(self)
        return engine

    async def _start_embedded(self) -> None:
        from pgstack.db.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(self.settings.data_dir / "pgdata")
        self._url = await asyncio.to_thread(embedded.start)
        self.embedded = embedded
        logger.info("no DATABASE_URL set: using the embedded PostgreSQL in %s", embedded.data_dir)

    def _connect_wait(self, state: RetryCallState) -> float:
        # Jitter scales with the configured backoff (tenacity's default adds up to 1 s to
        # every wait, whatever DATABASE_CONNECT_BACKOFF says).
        s = self.settings
        base = s.database_connect_backoff * 2.0 ** (state.attempt_number - 1)
        jitter = random.uniform(0, s.database_connect_backoff)  # noqa: S311
        return min(base + jitter, s.database_connect_backoff_max)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "cannot connect to %s (attempt %d of %d: %s); retrying in %.1f s",
            self.safe_url,
            state.attempt_number,
            self.settings.database_connect_attempts,
            self._cause(exc),
            delay,
        )

    def _cause(self, exc: BaseException | None) -> str:
        if exc is None:
            return "unknown error"
        inner = getattr(exc, "orig", None) or exc
        for _ in range(5):
            if inner.__cause__ is None:
                break
            inner = inner.__cause__
        message = f"{type(inner).__name__}: {inner}".strip()
        password = self._url.password if self._url is not None else None
        if password:
            message = message.replace(str(password), "***")
        return message

    def _unavailable(self, exc: BaseException, attempts: int) -> DatabaseUnavailableError:
        url = self.url
        where = hosts_text(url)
        tried = "" if not _is_retryable_connect_error(exc) else f" after {attempts} attempt(s)"
        return DatabaseUnavailableError(
            f"Cannot connect to PostgreSQL at {where}, database {url.database!r}{tried}: "
            f"{self._cause(exc)}. {connect_hint(exc)}"
        )


def engine_pool_stats(engine: AsyncEngine, max_overflow: int) -> dict[str, int]:
    """An engine's pool in numbers: size, checked in and out, overflow, max overflow, total."""
    pool: Any = engine.pool
    checked_in, checked_out = pool.checkedin(), pool.checkedout()
    return {
        "size": pool.size(),
        "checked_in": checked_in,
        "checked_out": checked_out,
        "overflow": max(0, pool.overflow()),
        "max_overflow": max_overflow,
        "total": checked_in + checked_out,
    }


# A connection given back this recently is handed out again without a ping: it was working
# a moment ago (the same window HikariCP uses). A failure inside it surfaces on the first
# statement as DatabaseUnavailableError, and the connection is replaced.
_PING_SKIP_WINDOW_S = 0.5
_CHECKED_IN = "pgstack_checked_in"


def _note_checkin(dbapi_connection: Any, record: Any) -> None:
    # Also on connect: a connection opened a moment ago is not pinged either. Behind PgBouncer
    # a ping on the new connection can fail while the server is away (the pooler answers,
    # the server does not); the pool would then give up with "This connection is closed"
    # instead of the statement failing with an error that says the server is unavailable.
    if record is not None:
        record.info[_CHECKED_IN] = time.monotonic()


def _ping_on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Probe a connection as the pool hands it out; a dead one is replaced before use.

    One simple-protocol `SELECT 1`: a single round trip that needs no prepared statement,
    so it also works behind PgBouncer in transaction pooling mode. DisconnectionError makes
    the pool discard the connection and check out (or open) another. A connection given
    back or opened less than half a second ago is not pinged.
    """
    checked_in = record.info.pop(_CHECKED_IN, None)
    if checked_in is not None and time.monotonic() - checked_in < _PING_SKIP_WINDOW_S:
        return
    driver = record.driver_connection
    try:
        await_(driver.execute("SELECT 1"))
    except Exception as exc:
        raise sa_exc.DisconnectionError(f"the pooled connection is gone ({exc})") from exc


def _invalidate_on_timeout(context: Any) -> None:
    """A statement the server never answered leaves its connection mid-protocol: discard it."""
    if isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True


def server_address(connection: Any) -> str | None:
    """`host:port` (or the socket path) an asyncpg connection reached, if known."""
    address = getattr(connection, "_addr", None)
    if isinstance(address, tuple) and len(address) >= 2:
        return host_port(str(address[0]), address[1])
    return str(address) if address else None


def server_read_only(connection: Any) -> bool:
    """Whether the server of an asyncpg connection says it takes no writes.

    PostgreSQL 14 and newer report `in_hot_standby` (a replica) and
    `default_transaction_read_only` (a fenced server) to the client, and report a change of
    either; an older server reports neither, and is taken at its word (25006).
    """
    settings = connection.get_settings()
    reported = [getattr(settings, name, None) for name in _READ_ONLY_PARAMETERS]
    if all(value is None for value in reported):
        return True
    return "on" in reported


def connect_hint(exc: BaseException) -> str:
    """What to do about a failed connection: fix the login, or make the server reachable."""
    if sqlstate_of(exc) in _FATAL_CONNECT_SQLSTATES:
        return (
            "Check the role, password and database of DATABASE_URL (`pgstack db init "
            "--admin-url ...` creates the database and its roles)."
        )
    return (
        "Check that the server is running and that DATABASE_URL "
        "(or DATABASE_HOST/PORT/NAME/USER/PASSWORD) is right."
    )


def _is_retryable_connect_error(exc: BaseException) -> bool:
    return sqlstate_of(exc) not in _FATAL_CONNECT_SQLSTATES
