"""Prometheus metrics: pool gauges, query latency, errors, transaction retries, health."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine, ExceptionContext

    from pgstack.db.database import Database

QUERY_LATENCY = Histogram(
    "pgstack_query_duration_seconds",
    "Time from sending a statement to PostgreSQL to its result.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUERY_ERRORS = Counter(
    "pgstack_query_errors_total",
    "Statements that failed, by SQLSTATE (or the error class when there is none).",
    ["code"],
)
TRANSACTION_RETRIES = Counter(
    "pgstack_transaction_retries_total",
    "Transactions re-run after a serialization failure or deadlock.",
    ["sqlstate"],
)
HEALTH_STATUS = Gauge(
    "pgstack_health_status",
    "Last health result per probe: 1 pass, 0.5 warn, 0 fail.",
    ["probe"],
)

FAILOVERS = Counter(
    "pgstack_db_failovers",
    "Times the primary's address changed (a multi-host DATABASE_URL found another primary).",
    ["database"],
)


class _PrimaryGauge:
    """`pgstack_db_primary{database, host} 1` for the host each Database writes to now."""

    def __init__(self) -> None:
        self._gauge = Gauge(
            "pgstack_db_primary",
            "The host a Database's pool reaches now (1); after a failover, the new primary.",
            ["database", "host"],
        )
        self._hosts: dict[str, str] = {}

    def note(self, database: str, host: str) -> None:
        previous = self._hosts.get(database)
        if previous is not None and previous != host:
            self._gauge.remove(database, previous)
        self._hosts[database] = host
        self._gauge.labels(database=database, host=host).set(1)


PRIMARY = _PrimaryGauge()

_START_KEY = "pgstack_query_start"


# pool_stats() key -> (gauge name after `pgstack_pool_`, help). A gauge must not end in
# `_total` (that suffix means a counter), so the open connections are `_connections`.
_POOL_GAUGES = {
    "size": ("size", "Connections the pool keeps open (its configured size)."),
    "checked_in": ("checked_in", "Open connections idle in the pool."),
    "checked_out": ("checked_out", "Connections in use by a session or statement."),
    "overflow": ("overflow", "Connections open beyond the pool size."),
    "max_overflow": ("max_overflow", "Connections the pool may open beyond its size."),
    "total": ("connections", "Open connections: idle plus in use."),
}


class _PoolCollector(Collector):
    """Reads pool statistics of every live Database at scrape time."""

    def __init__(self) -> None:
        self._databases: weakref.WeakSet[Database] = weakref.WeakSet()

    def track(self, database: Database) -> None:
        self._databases.add(database)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            stat: GaugeMetricFamily(f"pgstack_pool_{name}", help_, labels=["pool"])
            for stat, (name, help_) in _POOL_GAUGES.items()
        }
        for database in list(self._databases):
            if not database.is_connected:
                continue
            pools = [(database.name, database.pool_stats())]
            lane = database.read_pool_stats()
            if lane is not None:
                pools.append((f"{database.name}-reads", lane))
            if database.replicas is not None:
                pools.extend(database.replicas.pool_stats().items())
            for label, stats in pools:
                for name, family in families.items():
                    family.add_metric([label], float(stats[name]))
        yield from families.values()


POOL_COLLECTOR = _PoolCollector()
REGISTRY.register(POOL_COLLECTOR)


def instrument(engine: Engine) -> None:
    """Attach latency and error hooks to a (sync) engine."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(
        conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any
    ) -> None:
        conn.info.setdefault(_START_KEY, []).append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _after(
        conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any
    ) -> None:
        starts = conn.info.get(_START_KEY)
        if starts:
            QUERY_LATENCY.observe(time.perf_counter() - starts.pop())

    @event.listens_for(engine, "handle_error")
    def _error(context: ExceptionContext) -> None:
        if context.connection is not None:
            starts = context.connection.info.get(_START_KEY)
            if starts:
                starts.pop()
        QUERY_ERRORS.labels(
            code=sqlstate_of(context.original_exception)
            or type(context.original_exception).__name__
        ).inc()


def sqlstate_of(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error, looking through SQLAlchemy's and asyncpg's wrappers."""
    seen = 0
    while exc is not None and seen < 5:
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if isinstance(code, str):
            return code
        exc = getattr(exc, "orig", None) or exc.__cause__
        seen += 1
    return None
