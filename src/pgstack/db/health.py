"""Health probes in the `application/health+json` shape, and a background monitor.

Liveness never touches the database; readiness makes a round trip, looks at the pool and
times two probe queries; startup says whether the service finished starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import text

from pgstack.db import metrics

if TYPE_CHECKING:
    from pgstack.db.database import Database

logger = logging.getLogger("pgstack.health")

Status = Literal["pass", "warn", "fail"]
_ORDER: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2}
_GAUGE: dict[Status, float] = {"pass": 1.0, "warn": 0.5, "fail": 0.0}
MEDIA_TYPE = "application/health+json"
PROBE_TIMEOUT_S = 5.0
_STARTED = time.monotonic()

# A catalog query with a few joins: slow when the server is starved, cheap otherwise.
_HEAVY_QUERY = text(
    "SELECT count(*) FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
)


@dataclass
class Check:
    """One observation of one component."""

    status: Status
    observed_value: Any = None
    observed_unit: str | None = None
    output: str | None = None
    component_type: str = "datastore"
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "componentType": self.component_type,
            "status": self.status,
            "time": self.time,
        }
        if self.observed_value is not None:
            body["observedValue"] = self.observed_value
        if self.observed_unit is not None:
            body["observedUnit"] = self.observed_unit
        if self.output:
            body["output"] = self.output
        return body


@dataclass
class HealthReport:
    """A probe's answer: overall status and the checks behind it."""

    checks: dict[str, Check] = field(default_factory=dict)
    description: str = "pgstack"

    @property
    def status(self) -> Status:
        """The worst status of any check (pass when there are none)."""
        worst: Status = "pass"
        for check in self.checks.values():
            if _ORDER[check.status] > _ORDER[worst]:
                worst = check.status
        return worst

    @property
    def http_status(self) -> int:
        """200 for pass and warn, 503 for fail."""
        return 503 if self.status == "fail" else 200

    def to_dict(self) -> dict[str, Any]:
        """The `application/health+json` body."""
        return {
            "status": self.status,
            "description": self.description,
            "checks": {name: [check.to_dict()] for name, check in self.checks.items()},
        }


HealthCheckFn = Callable[["Database"], Awaitable[Check]]


def liveness() -> HealthReport:
    """The process answers: nothing else is looked at."""
    uptime = round(time.monotonic() - _STARTED, 3)
    return HealthReport(
        {"process:uptime": Check("pass", uptime, "s", component_type="system")},
        description="pgstack liveness",
    )


def startup(db: Database, started: bool) -> HealthReport:
    """Pass once the service finished starting and the database is connected."""
    ok = started and db.is_connected
    return HealthReport(
        {
            "service:started": Check(
                "pass" if ok else "fail",
                ok,
                component_type="system",
                output=None if ok else "the service is still starting",
            )
        },
        description="pgstack startup",
    )


async def readiness(db: Database, extra: list[HealthCheckFn] | None = None) -> HealthReport:
    """Round trip and latency, pool saturation, query performance, and any extra checks."""
    report = HealthReport(description="pgstack readiness")
    s = db.settings
    if not db.is_connected:
        report.checks["postgres:connection"] = Check("fail", output="not connected")
        _publish(report)
        return report
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S), db.engine.connect() as conn:
            started = time.perf_counter()
            await conn.execute(text("SELECT 1"))
            round_trip = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            await conn.execute(_HEAVY_QUERY)
            heavy = (time.perf_counter() - started) * 1000
    except Exception as exc:  # every failure of the probe is a "fail", never a crash
        report.checks["postgres:connection"] = Check("fail", output=_short(exc))
        _publish(report)
        return report

    report.checks["postgres:responseTime"] = Check(
        "warn" if round_trip > s.health_latency_warn_ms else "pass", round(round_trip, 3), "ms"
    )
    report.checks["postgres:queryPerformance"] = Check(
        "warn" if heavy > s.health_query_warn_ms else "pass", round(heavy, 3), "ms"
    )
    # Which server writes go to now; with several hosts in DATABASE_URL, the new primary
    # after a failover.
    report.checks["postgres:primary"] = Check(
        "pass",
        db.primary_host,
        output=f"{db.failovers} failover(s) seen since the service started",
    )
    pools = (
        ("postgres:poolSaturation", db.pool_stats()),
        ("postgres:readPoolSaturation", db.read_pool_stats()),  # None: the read lane is off
    )
    for name, stats in pools:
        if stats is None:
            continue
        capacity = stats["size"] + stats["max_overflow"]
        ratio = stats["checked_out"] / capacity if capacity else 0.0
        report.checks[name] = Check(
            "warn" if ratio >= s.health_pool_warn_ratio else "pass",
            round(ratio, 3),
            "ratio",
            output=f"{stats['checked_out']} of {capacity} connections checked out",
        )
    if db.replicas is not None:
        report.checks.update(db.replicas.checks())
    for fn in [*db.health_checks, *(extra or [])]:
        name = getattr(fn, "check_name", fn.__name__)
        try:
            report.checks[name] = await fn(db)
        except Exception as exc:
            report.checks[name] = Check("fail", output=_short(exc))
    _publish(report)
    return report


def _short(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    message = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {message}".rstrip(": ")


def _publish(report: HealthReport) -> None:
    for name, check in report.checks.items():
        metrics.HEALTH_STATUS.labels(probe=name).set(_GAUGE[check.status])


class HealthMonitor:
    """Re-checks readiness every `interval` seconds, keeps the last report, logs changes."""

    def __init__(self, db: Database, interval: float = 30.0) -> None:
        self.db = db
        self.interval = interval
        self.last: HealthReport | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the monitor's loop is active."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Begin checking in the background (idempotent)."""
        if not self.running:
            self._task = asyncio.create_task(self._loop(), name="pgstack-health-monitor")

    async def stop(self) -> None:
        """Stop checking and wait for the loop to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check_now(self) -> HealthReport:
        """Run one check, record it and log a change of status."""
        report = await self.db.health_check()
        previous = self.last.status if self.last is not None else None
        if previous != report.status:
            level = logging.INFO if report.status == "pass" else logging.WARNING
            failing = {
                k: c.output or c.observed_value
                for k, c in report.checks.items()
                if c.status != "pass"
            }
            logger.log(
                level,
                "database health %s -> %s %s",
                previous or "unknown",
                report.status,
                failing or "",
            )
        self.last = report
        return report

    async def _loop(self) -> None:
        while True:
            await self.check_now()
            await asyncio.sleep(self.interval)
