"""Read replicas: reads go to a healthy replica; writes and read-your-writes to the primary.

With `DATABASE_REPLICA_URLS` set, `Database.connect()` opens a pool and a read lane per
replica and probes each one every `DATABASE_REPLICA_CHECK_INTERVAL_S` seconds: reachable,
still in recovery, and its replay no further behind than `DATABASE_REPLICA_MAX_LAG_S` (by
its last replayed commit's age, and by how long ago the primary had WAL it lacks). A
replica that fails the probe, lags, or loses a connection under a read is taken out of
rotation at once and put back when a probe finds it healthy again.

Which server a statement runs on (the rules, in order):

1. a write (INSERT, UPDATE, DELETE, DDL, a flush), `SELECT ... FOR UPDATE/SHARE`, anything
   inside an explicit transaction (`db.transaction()`, `session.begin()`), and every
   statement of a session after it did any of these: the primary;
2. reads by a request or task that wrote less than `DATABASE_READ_YOUR_WRITES_S` seconds
   ago (read-your-writes): the primary;
3. other reads (repository reads, the fast read path, `db.session(readonly=True)`,
   `db.transaction(readonly=True)` below serializable, `db.run(select(...))`): the least
   busy healthy replica (checked-out connections; ties go round-robin), kept for the rest of
   the session while it stays healthy;
4. with no healthy replica: the primary.

A read whose replica connection is lost (the replica died) is run again on another replica or
the primary when nothing was lost with it: a session with nothing loaded and nothing to
write, or a fast-path read. `Database.read_lane` (the token vault's reads) stays on the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.orm import SessionTransactionOrigin
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.functions import FunctionElement

from pgstack.config import render_url
from pgstack.db.health import Check
from pgstack.db.metrics import sqlstate_of
from pgstack.db.session import Session
from pgstack.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from pgstack.db.database import Database
    from pgstack.db.lane import ReadLane

logger = logging.getLogger("pgstack.db.replicas")

# A stalled replica (stopped process, dead network) must not hold a probe round for long.
PROBE_TIMEOUT_S = 2.0

# Lag is 0 while everything received is replayed (an idle primary is no lag), else the age of
# the last replayed commit; NULL while the standby has replayed nothing since it started.
_PROBE_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
       END,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::int8
"""
# Where the primary's WAL ends (what it can have sent): a replica that has not replayed a
# position the primary had N seconds ago is N seconds behind, even when it has replayed all
# it received (its WAL receiver cut off from the primary).
_PRIMARY_LSN_SQL = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::int8"

# Statements that change nothing on the server; anything else run on the primary is a write.
_READ_HEADS = (
    "select",
    "show",
    "values",
    "table",
    "explain",
    "set",
    "reset",
    "begin",
    "start",
    "commit",
    "rollback",
    "end",
    "savepoint",
    "release",
    "discard",
    "listen",
    "unlisten",
    "fetch",
    "close",
    "declare",
    "move",
)
_HEAD = re.compile(r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*\(*\s*([a-z]+)", re.IGNORECASE | re.DOTALL)
_DML = re.compile(r"\b(insert|update|delete|merge)\b", re.IGNORECASE)
_LOCKING = re.compile(r"\bfor\s+(no\s+key\s+update|update|key\s+share|share)\b", re.IGNORECASE)
_FUNCTIONS = re.compile(r"\b(pg_advisory|pg_try_advisory|nextval|setval)", re.IGNORECASE)
_WROTE = "pgstack_wrote"
_PRIMARY_FUNCTIONS = ("pg_advisory", "pg_try_advisory", "nextval", "setval")


def is_write_sql(sql: str) -> bool:
    """Whether a statement's SQL may change data (a data-modifying WITH counts)."""
    match = _HEAD.match(sql)
    head = match.group(1).lower() if match else ""
    if head == "with":
        return bool(_DML.search(sql))
    return head not in _READ_HEADS


def is_plain_read(clause: Any) -> bool:
    """Whether a statement only reads and locks nothing, so a replica may answer it."""
    if clause is None or getattr(clause, "is_dml", False):
        return False
    if isinstance(clause, TextClause):
        sql = clause.text
        return not (is_write_sql(sql) or _LOCKING.search(sql) or _FUNCTIONS.search(sql))
    element = getattr(clause, "element", None)  # text(...).columns(...)
    if isinstance(element, TextClause):
        return is_plain_read(element)
    if not getattr(clause, "is_select", False):
        return False
    if getattr(clause, "_for_update_arg", None) is not None:
        return False
    # A SELECT that takes a lock or moves a sequence must do it where the writes happen.
    return not any(
        isinstance(element, FunctionElement)
        and str(getattr(element, "name", "")).lower().startswith(_PRIMARY_FUNCTIONS)
        for element in visitors.iterate(clause)
    )


# -- read-your-writes -------------------------------------------------------------------------


class _LastWrite:
    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = float("-inf")


_last_write: ContextVar[_LastWrite | None] = ContextVar("pgstack_last_write", default=None)
_bookkeeping: ContextVar[bool] = ContextVar("pgstack_bookkeeping", default=False)


@contextmanager
def bookkeeping() -> Iterator[None]:
    """Writes in the block are pgstack's own records (a rate-limit count), not the request's.

    They go to the primary like any write, but do not send the request's later reads to the
    primary: nothing the request reads depends on them. Without this, the rate-limit count
    of every authenticated request would keep every authenticated route off the replicas.
    """
    token = _bookkeeping.set(True)
    try:
        yield
    finally:
        _bookkeeping.reset(token)


def note_write() -> None:
    """Record that the current request or task wrote to the primary just now."""
    holder = _last_write.get()
    if holder is None:
        holder = _LastWrite()
        _last_write.set(holder)
    holder.at = time.monotonic()


def wrote_within(seconds: float) -> bool:
    """Whether the current request or task wrote to the primary in the last `seconds`."""
    holder = _last_write.get()
    return holder is not None and time.monotonic() - holder.at < seconds


@contextmanager
def read_your_writes_scope() -> Iterator[None]:
    """One read-your-writes window for the block and every task it starts.

    A task's writes are seen by the task and the tasks it starts afterwards; inside this
    block, a write by any task started in it sends the reads of all of them to the primary.
    """
    token = _last_write.set(_LastWrite())
    try:
        yield
    finally:
        _last_write.reset(token)


def _after_execute(
    conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any
) -> None:
    if is_write_sql(statement) and not _bookkeeping.get():
        note_write()
        conn.info[_WROTE] = True


def _commit(conn: Any) -> None:
    # The window runs from the commit: until then, nobody else could read the write anyway.
    if conn.info.pop(_WROTE, False):
        note_write()


def _rollback(conn: Any) -> None:
    conn.info.pop(_WROTE, None)


# -- nodes ------------------------------------------------------------------------------------


def _is_lost(exc: BaseException) -> bool:
    """Whether an error means the server is unreachable or the connection is gone."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    if isinstance(exc, DatabaseUnavailableError | OSError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError):
        return True
    code = sqlstate_of(exc) or ""
    # 08: connection exception; 57P01-03: shutdown, crash, cannot connect now.
    return code.startswith("08") or code in ("57P01", "57P02", "57P03")


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {text}".rstrip(": ")


@dataclass(eq=False)
class ReplicaNode:
    """One replica: its pool and read lane, and what the last probe found."""

    name: str
    url: URL
    engine: AsyncEngine
    lane: ReadLane | None
    max_overflow: int
    healthy: bool = False
    lag_s: float | None = None
    reason: str | None = "not probed yet"
    checked_at: float | None = None
    reads: int = 0
    _probe: asyncpg.Connection | None = field(default=None, repr=False)

    @property
    def safe_url(self) -> str:
        """The URL for people and logs, the password shown as `***`."""
        return render_url(self.url)

    @property
    def busy(self) -> int:
        """Connections in use now: the pool's checked-out ones and the lane's busy ones."""
        pool: Any = self.engine.pool
        return int(pool.checkedout()) + (self.lane.pool.busy if self.lane is not None else 0)


class ReplicaSet:
    """The replicas of a Database: routing, health probes and their numbers."""

    def __init__(self, db: Database, nodes: list[ReplicaNode]) -> None:
        s = db.settings
        self.db = db
        self.nodes = nodes
        self.max_lag_s = s.database_replica_max_lag_s
        self.read_your_writes_s = s.database_read_your_writes_s
        self.interval = s.database_replica_check_interval_s
        self._turn = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self._primary_probe: asyncpg.Connection | None = None
        #: (monotonic time, primary WAL position) whenever the position moved, oldest first.
        self._primary_lsns: deque[tuple[float, int]] = deque()
        self._primary = db.engine.sync_engine
        # Read-only sessions that find no replica run read-only on the primary.
        self._primary_readonly = self._primary.execution_options(postgresql_readonly=True)
        routing = type("RoutingSession", (_RoutingSession,), {"_pgstack_replicas": self})
        self._sessionmaker = async_sessionmaker(
            db.engine,
            class_=Session,
            sync_session_class=routing,
            expire_on_commit=False,
            autoflush=True,
        )
        _COLLECTOR.track(self)

    @classmethod
    async def open(cls, db: Database) -> ReplicaSet:
        """Open every replica's pool and lane, probe them once, and keep probing."""
        s = db.settings
        nodes = []
        # Labels in metrics and readiness: `replica1`, ...; another Database's are prefixed.
        prefix = "" if db.name == "primary" else f"{db.name}-"
        for number, url in enumerate(s.replica_urls, start=1):
            engine = db._create_engine(url)
            lane = db._open_lane(engine)
            nodes.append(
                ReplicaNode(f"{prefix}replica{number}", url, engine, lane, s.database_max_overflow)
            )
        replicas = cls(db, nodes)
        primary = db.engine.sync_engine
        event.listen(primary, "after_cursor_execute", _after_execute)
        event.listen(primary, "commit", _commit)
        event.listen(primary, "rollback", _rollback)
        await replicas.probe()
        replicas._task = asyncio.create_task(replicas._loop(), name="pgstack-replica-probe")
        return replicas

    async def close(self, timeout: float) -> None:
        """Stop probing, then close every replica's lane and pool."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        primary = self._primary
        for name, fn in (
            ("after_cursor_execute", _after_execute),
            ("commit", _commit),
            ("rollback", _rollback),
        ):
            if event.contains(primary, name, fn):
                event.remove(primary, name, fn)
        for node in self.nodes:
            node.healthy = False
            if node.lane is not None:
                await node.lane.close(timeout)
            if node._probe is not None:
                node._probe.terminate()
                node._probe = None
            await node.engine.dispose()
        if self._primary_probe is not None:
            self._primary_probe.terminate()
            self._primary_probe = None

    # -- routing ------------------------------------------------------------------------------

    def pick(self) -> ReplicaNode | None:
        """The replica for a read now, or None when the primary must (or alone can) answer."""
        if wrote_within(self.read_your_writes_s):
            return None
        healthy = [node for node in self.nodes if node.healthy]
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0]
        start = next(self._turn) % len(healthy)
        rotated = healthy[start:] + healthy[:start]
        return min(rotated, key=lambda node: node.busy)

    def mark_down(self, node: ReplicaNode, reason: str) -> None:
        """Take a replica out of rotation until a probe finds it healthy."""
        if node.healthy:
            logger.warning(
                "replica %s (%s) taken out of rotation: %s", node.name, node.safe_url, reason
            )
        node.healthy = False
        node.reason = reason

    def session(self, readonly: bool) -> Session:
        """A session whose statements are routed by the rules above."""
        session = self._sessionmaker()
        sync: Any = session.sync_session
        sync._pgstack_readonly = readonly
        if self.db._lane is not None:
            session._pgstack_lane = _RoutedLane(self, sync)  # type: ignore[assignment]
        return session

    async def run(
        self, statement: Any, params: Mapping[str, Any] | None
    ) -> list[tuple[Any, ...]] | None:
        """Run a plain read on a replica; None when the primary should run it instead."""
        while (node := self.pick()) is not None:
            try:
                if node.lane is not None and not node.lane.echo:
                    planned = node.lane.plan(statement)
                    if planned is not None:
                        rows = await node.lane.run(*planned, params)
                        node.reads += 1
                        return rows
                async with node.engine.connect() as conn:
                    result = await conn.execute(statement, params)
                    rows = [tuple(row) for row in result] if result.returns_rows else []
                    await conn.rollback()
                    node.reads += 1
                    return rows
            except Exception as exc:
                if not _is_lost(exc):
                    raise
                self.mark_down(node, _reason(exc))
        return None

    # -- probes -------------------------------------------------------------------------------

    async def probe(self) -> None:
        """Probe every replica once (at the same time) and update the rotation."""
        await self._sample_primary()
        await asyncio.gather(*(self._probe(node) for node in self.nodes))

    async def _connect_probe(self, engine: AsyncEngine) -> asyncpg.Connection:
        from pgstack.db.lane import driver_options

        options = driver_options(engine, self.db._connect_args())
        options["server_settings"] = {"application_name": "pgstack-probe"}
        return await asyncpg.connect(**options)

    async def _sample_primary(self) -> None:
        """Note where the primary's WAL ends now (nothing when the primary does not answer)."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                if self._primary_probe is None or self._primary_probe.is_closed():
                    self._primary_probe = await self._connect_probe(self.db.engine)
                lsn = await self._primary_probe.fetchval(_PRIMARY_LSN_SQL)
        except Exception:
            if self._primary_probe is not None:
                self._primary_probe.terminate()
                self._primary_probe = None
            return
        now, samples = time.monotonic(), self._primary_lsns
        if not samples or samples[-1][1] != lsn:
            samples.append((now, lsn))
        # Older samples only matter up to the lag limit; the newest always stays.
        keep = now - max(60.0, 3 * self.max_lag_s)
        while len(samples) > 1 and samples[0][0] < keep:
            samples.popleft()

    def _lsn_lag(self, replayed: int | None) -> float:
        """Seconds since the primary first had WAL that this replay position lacks."""
        if replayed is None:
            return 0.0
        for at, lsn in self._primary_lsns:
            if lsn > replayed:
                return time.monotonic() - at
        return 0.0

    async def _probe(self, node: ReplicaNode) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                if node._probe is None or node._probe.is_closed():
                    node._probe = await self._connect_probe(node.engine)
                in_recovery, lag, replayed = await node._probe.fetchrow(_PROBE_SQL)
        except Exception as exc:
            if node._probe is not None:
                node._probe.terminate()
                node._probe = None
            node.lag_s = None
            node.checked_at = time.time()
            self.mark_down(node, f"probe failed ({_reason(exc)})")
            return
        node.checked_at = time.time()
        if lag is not None:
            lag = max(lag, self._lsn_lag(replayed))
        node.lag_s = lag
        if not in_recovery:
            self.mark_down(node, "not in recovery: promoted, or not a replica of the primary")
        elif lag is None:
            self.mark_down(node, "no replay position yet (the replica is starting)")
        elif lag > self.max_lag_s:
            self.mark_down(node, f"replay lag {lag:.1f} s > DATABASE_REPLICA_MAX_LAG_S")
        else:
            if not node.healthy:
                logger.info("replica %s (%s) back in rotation", node.name, node.safe_url)
            node.healthy = True
            node.reason = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.probe()
            except Exception:  # a probe round must never end the loop
                logger.exception("replica probe round failed")

    # -- observation --------------------------------------------------------------------------

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Each replica's pool (and read lane, as `<name>-reads`) in `pool_stats()`'s shape."""
        from pgstack.db.database import engine_pool_stats

        pools: dict[str, dict[str, int]] = {}
        for node in self.nodes:
            pools[node.name] = engine_pool_stats(node.engine, node.max_overflow)
            if node.lane is not None:
                pools[f"{node.name}-reads"] = node.lane.stats()
        return pools

    def checks(self) -> dict[str, Check]:
        """Readiness checks, one per replica: pass in rotation, warn out of it.

        A replica out of rotation is a warning, not a failure: the primary serves its reads.
        """
        checks = {}
        for node in self.nodes:
            lag = None if node.lag_s is None else round(node.lag_s, 3)
            checks[f"postgres:replica:{node.name}"] = Check(
                "pass" if node.healthy else "warn",
                lag,
                "s",
                output=None if node.healthy else f"out of rotation: {node.reason}",
            )
        return checks

    def describe(self) -> list[dict[str, Any]]:
        """Each replica as people may see it: name, URL (no password), health, lag, reads."""
        return [
            {
                "name": node.name,
                "url": node.safe_url,
                "healthy": node.healthy,
                "lag_s": node.lag_s,
                "reason": node.reason,
                "reads": node.reads,
            }
            for node in self.nodes
        ]


class _RoutingSession(SyncSession):
    """The sync half of a routed session: `get_bind` chooses the server per statement."""

    _pgstack_replicas: ReplicaSet
    _pgstack_readonly = False
    #: Set once the session wrote, locked or began an explicit transaction.
    _pgstack_primary = False
    _pgstack_node: ReplicaNode | None = None
    #: The replica the last statement was sent to (None: the primary).
    _pgstack_last: ReplicaNode | None = None

    def _pgstack_read_node(self) -> ReplicaNode | None:
        node = self._pgstack_node
        if node is not None and node.healthy and not self._pgstack_wrote():
            return node
        node = self._pgstack_node = self._pgstack_replicas.pick()
        return node

    def _pgstack_wrote(self) -> bool:
        return wrote_within(self._pgstack_replicas.read_your_writes_s)

    def get_bind(
        self, mapper: Any = None, *, clause: Any = None, bind: Any = None, **kw: Any
    ) -> Any:
        self._pgstack_last = None
        if bind is not None:
            return bind
        replicas = self._pgstack_replicas
        if self._pgstack_readonly:
            node = self._pgstack_read_node()
            self._pgstack_last = node
            return node.engine.sync_engine if node is not None else replicas._primary_readonly
        if self._pgstack_primary or self._flushing or not is_plain_read(clause):
            self._pgstack_primary = True
            return replicas._primary
        transaction = self.get_transaction()
        if transaction is not None and transaction.origin is not SessionTransactionOrigin.AUTOBEGIN:
            self._pgstack_primary = True
            return replicas._primary
        node = self._pgstack_read_node()
        self._pgstack_last = node
        return node.engine.sync_engine if node is not None else replicas._primary

    def _pgstack_forget(self, engine: Any) -> bool:
        """Drop a lost replica connection from the transaction, so the read can go elsewhere.

        Loaded objects and pending changes stay (a rollback would expire or drop them); the
        primary's part of the transaction is untouched. False inside a savepoint, which
        holds the connection too: then the error stands.
        """
        root = self.get_transaction()
        if root is None:
            return True  # it failed before a transaction held it
        if self.get_nested_transaction() is not None:
            return False
        entry = root._connections.pop(engine, None)
        if entry is not None:
            connection = entry[0]
            root._connections.pop(connection, None)
            with contextlib.suppress(Exception):
                connection.invalidate()
                connection.close()
        return True

    def _pgstack_release_replicas(self) -> None:
        """End the replica connections' read-only transactions; a dead replica's is dropped.

        A replica that dies while its transaction ends must not fail the request (nothing on
        it was to be kept) nor keep the primary's connection from going back to its pool.
        """
        root = self.get_transaction()
        if root is None or self.get_nested_transaction() is not None:
            return
        for node in self._pgstack_replicas.nodes:
            engine = node.engine.sync_engine
            entry = root._connections.pop(engine, None)
            if entry is None:
                continue
            connection, transaction = entry[0], entry[1]
            root._connections.pop(connection, None)
            try:
                transaction.rollback()
            except Exception as exc:
                self._pgstack_replicas.mark_down(node, _reason(exc))
                with contextlib.suppress(Exception):
                    connection.invalidate()
            with contextlib.suppress(Exception):
                connection.close()

    def close(self) -> None:
        self._pgstack_release_replicas()
        super().close()

    def rollback(self) -> None:
        self._pgstack_release_replicas()
        super().rollback()

    def _execute_internal(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        while True:
            try:
                result = super()._execute_internal(statement, params, **kw)
            except Exception as exc:
                node = self._pgstack_last
                if node is None or not _is_lost(exc):
                    raise
                self._pgstack_replicas.mark_down(node, _reason(exc))
                self._pgstack_node = None
                if not self._pgstack_forget(node.engine.sync_engine):
                    raise
                continue
            if self._pgstack_last is not None:
                self._pgstack_last.reads += 1
            return result


class _RoutedLane:
    """The fast read path of a routed session: a replica's read lane, or the primary's."""

    __slots__ = ("_replicas", "_session")

    def __init__(self, replicas: ReplicaSet, session: _RoutingSession) -> None:
        self._replicas = replicas
        self._session = session

    @property
    def echo(self) -> bool:
        lane = self._replicas.db._lane
        return lane is None or lane.echo

    async def fetch(
        self, sql: str, args: Any, *, retry: bool = True, reset: bool = False
    ) -> list[Any]:
        session = self._session
        while True:
            node = None if session._pgstack_primary else session._pgstack_read_node()
            if node is None or node.lane is None:
                lane = self._replicas.db._lane
                if lane is None:
                    raise DatabaseUnavailableError("The database is disconnected.")
                return await lane.fetch(sql, args, retry=retry, reset=reset)
            try:
                records = await node.lane.fetch(sql, args, retry=retry, reset=reset)
            except Exception as exc:
                if not _is_lost(exc):
                    raise
                self._replicas.mark_down(node, _reason(exc))
                session._pgstack_node = None
                continue
            node.reads += 1
            return records


class _ReplicaCollector(Collector):
    """Each replica's health and replay lag, read at scrape time."""

    def __init__(self) -> None:
        self._sets: weakref.WeakSet[ReplicaSet] = weakref.WeakSet()

    def track(self, replicas: ReplicaSet) -> None:
        self._sets.add(replicas)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        healthy = GaugeMetricFamily(
            "pgstack_replica_healthy",
            "1 while a replica is in the read rotation, 0 while it is out (down or lagging).",
            labels=["replica"],
        )
        lag = GaugeMetricFamily(
            "pgstack_replica_lag_seconds",
            "Replay lag the last probe measured on a replica (absent when unknown).",
            labels=["replica"],
        )
        reads = CounterMetricFamily(
            "pgstack_replica_reads",
            "Reads a replica answered since the process started.",
            labels=["replica"],
        )
        for replicas in list(self._sets):
            if replicas.closed:
                continue
            for node in replicas.nodes:
                healthy.add_metric([node.name], 1.0 if node.healthy else 0.0)
                if node.lag_s is not None:
                    lag.add_metric([node.name], float(node.lag_s))
                reads.add_metric([node.name], float(node.reads))
        yield healthy
        yield lag
        yield reads


_COLLECTOR = _ReplicaCollector()
REGISTRY.register(_COLLECTOR)
