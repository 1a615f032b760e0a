"""Health probes: liveness, readiness with thresholds and pool saturation, startup, monitor."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.db.health import Check, HealthMonitor, liveness, readiness, startup

READINESS_CHECKS = {
    "postgres:responseTime",
    "postgres:queryPerformance",
    "postgres:poolSaturation",
    "postgres:readPoolSaturation",
    "postgres:primary",
}


def relaxed(settings: Settings) -> Settings:
    """Thresholds no healthy local server reaches, so a busy test machine does not warn."""
    return settings.model_copy(
        update={"health_latency_warn_ms": 5_000.0, "health_query_warn_ms": 5_000.0}
    )


def health_gauge(probe: str) -> float | None:
    return REGISTRY.get_sample_value("pgstack_health_status", {"probe": probe})


async def test_readiness_passes_on_a_healthy_database(pgstack_settings: Settings) -> None:
    # proves: C5
    async with Database(relaxed(pgstack_settings)) as db:
        report = await db.health_check()
    assert report.status == "pass"
    assert report.http_status == 200
    assert set(report.checks) == READINESS_CHECKS

    body = json.loads(json.dumps(report.to_dict()))  # the health+json body serialises
    assert body["status"] == "pass"
    assert set(body["checks"]) == READINESS_CHECKS
    latency = body["checks"]["postgres:responseTime"][0]
    assert latency["status"] == "pass"
    assert latency["observedUnit"] == "ms"
    assert latency["observedValue"] > 0
    assert latency["componentType"] == "datastore"
    assert "time" in latency
    query = body["checks"]["postgres:queryPerformance"][0]
    assert (query["status"], query["observedUnit"]) == ("pass", "ms")
    pool = body["checks"]["postgres:poolSaturation"][0]
    assert (pool["status"], pool["observedUnit"], pool["observedValue"]) == ("pass", "ratio", 0)
    assert health_gauge("postgres:responseTime") == 1.0


async def test_thresholds_turn_into_warn(pgstack_settings: Settings) -> None:
    # proves: C5
    settings = pgstack_settings.model_copy(
        update={"health_latency_warn_ms": 0.0, "health_query_warn_ms": 0.0}
    )
    async with Database(settings) as db:
        report = await db.health_check()
    assert report.checks["postgres:responseTime"].status == "warn"
    assert report.checks["postgres:queryPerformance"].status == "warn"
    assert report.checks["postgres:poolSaturation"].status == "pass"
    assert report.status == "warn"
    assert report.http_status == 200  # degraded, still ready
    assert report.to_dict()["status"] == "warn"
    assert health_gauge("postgres:responseTime") == 0.5


async def test_pool_saturation_warns_at_eighty_percent(pgstack_settings: Settings) -> None:
    # proves: C5
    async with Database(relaxed(pgstack_settings)) as db, AsyncExitStack() as stack:
        capacity = db.pool_stats()["size"] + db.pool_stats()["max_overflow"]
        assert capacity == 7

        async def hold(n: int) -> None:
            for _ in range(n):
                session = await stack.enter_async_context(db.session())
                await session.execute(text("SELECT 1"))

        await hold(5)  # 5 of 7: 71 %
        check = (await db.health_check()).checks["postgres:poolSaturation"]
        assert check.status == "pass"
        assert check.observed_value == pytest.approx(5 / 7, abs=0.001)

        await hold(1)  # 6 of 7: 86 %
        report = await db.health_check()
        check = report.checks["postgres:poolSaturation"]
        assert check.status == "warn"
        assert check.output == "6 of 7 connections checked out"
        assert report.status == "warn"


async def test_readiness_fails_when_the_server_is_gone(tmp_path: Path) -> None:
    # proves: C5
    server = EmbeddedPostgres(tmp_path / "pgdata", durable=False)
    url = server.start()
    try:
        settings = Settings(
            database_url=url.render_as_string(hide_password=False),
            database_connect_attempts=1,
            database_connect_timeout=2,
            _env_file=None,
        )
        db = Database(settings)
        await db.connect()
        try:
            assert (await db.health_check()).status in ("pass", "warn")
            server.stop()
            async with asyncio.timeout(15):
                report = await db.health_check()  # answers, never raises
            assert report.status == "fail"
            assert report.http_status == 503
            failed = report.checks["postgres:connection"]
            assert failed.status == "fail"
            assert failed.output
            assert report.to_dict()["checks"]["postgres:connection"][0]["status"] == "fail"
            assert health_gauge("postgres:connection") == 0.0
        finally:
            await db.disconnect(timeout=1)
    finally:
        server.stop()


async def test_readiness_of_a_disconnected_database_fails(pgstack_settings: Settings) -> None:
    # proves: C5
    report = await readiness(Database(pgstack_settings))
    assert report.status == "fail"
    assert report.http_status == 503
    assert report.checks["postgres:connection"].output == "not connected"


async def test_liveness_passes_without_touching_the_database() -> None:
    # proves: C5
    report = liveness()
    assert report.status == "pass"
    assert report.http_status == 200
    body = report.to_dict()
    assert body["status"] == "pass"
    uptime = body["checks"]["process:uptime"][0]
    assert uptime["observedUnit"] == "s"
    assert uptime["observedValue"] >= 0
    assert uptime["componentType"] == "system"


async def test_startup_passes_once_started_and_connected(pgstack_settings: Settings) -> None:
    # proves: C5
    db = Database(pgstack_settings)
    assert startup(db, started=True).status == "fail"  # not connected yet
    await db.connect()
    try:
        still_starting = startup(db, started=False)
        assert still_starting.status == "fail"
        assert still_starting.http_status == 503
        ready = startup(db, started=True)
        assert ready.status == "pass"
        assert ready.http_status == 200
    finally:
        await db.disconnect()
    assert startup(db, started=True).status == "fail"


async def test_extra_checks_appear_in_the_report(pgstack_db: Database) -> None:
    # proves: C5
    async def migrations_at_head(db: Database) -> Check:
        return Check("pass", "0042_head", component_type="component")

    async def broken(db: Database) -> Check:
        raise RuntimeError("cannot read alembic_version")

    broken.check_name = "migrations:head"  # type: ignore[attr-defined]

    pgstack_db.health_checks.append(migrations_at_head)
    report = await pgstack_db.health_check()
    assert report.checks["migrations_at_head"].observed_value == "0042_head"
    assert report.to_dict()["checks"]["migrations_at_head"][0]["observedValue"] == "0042_head"

    pgstack_db.health_checks.append(broken)
    report = await pgstack_db.health_check()  # a crashing check is a "fail", not a crash
    assert report.checks["migrations:head"].status == "fail"
    assert "cannot read alembic_version" in (report.checks["migrations:head"].output or "")
    assert report.status == "fail"
    assert report.http_status == 503


async def test_monitor_checks_in_the_background_and_logs_changes(
    pgstack_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # proves: C5
    settings = pgstack_settings.model_copy(update={"health_latency_warn_ms": 0.0})
    caplog.set_level(logging.INFO, logger="pgstack.health")
    async with Database(settings) as db:
        monitor = HealthMonitor(db, interval=0.05)
        assert not monitor.running
        monitor.start()
        try:
            async with asyncio.timeout(5):
                while monitor.last is None:
                    await asyncio.sleep(0.01)
                first = monitor.last
                assert monitor.running
                # It keeps checking at its interval.
                for _ in range(3):
                    seen = monitor.last
                    while monitor.last is seen:
                        await asyncio.sleep(0.01)
        finally:
            await monitor.stop()
        assert not monitor.running
        assert first.status == "warn"
        assert monitor.last is not None and monitor.last.status == "warn"

        changes = [r for r in caplog.records if "database health" in r.getMessage()]
        assert len(changes) == 1  # four checks, one change of state
        assert changes[0].levelno == logging.WARNING
        assert "unknown -> warn" in changes[0].getMessage()
        assert "postgres:responseTime" in changes[0].getMessage()

        # Back to healthy: the change is logged at INFO.
        db.settings = relaxed(settings)
        await monitor.check_now()
        assert "warn -> pass" in caplog.records[-1].getMessage()
        assert caplog.records[-1].levelno == logging.INFO


async def test_read_lane_saturation_is_its_own_check(pgstack_settings: Settings) -> None:
    # proves: C5
    settings = relaxed(pgstack_settings).model_copy(update={"database_read_pool_size": 1})
    async with Database(settings) as db:
        lane = db.read_lane
        assert lane is not None
        await lane.fetch("SELECT 1", ())  # open its connection, so taking it is immediate
        busy = asyncio.create_task(lane.fetch("SELECT pg_sleep(1)", ()))
        await asyncio.sleep(0.05)
        report = await db.health_check()
        check = report.checks["postgres:readPoolSaturation"]
        assert (check.status, check.output) == ("warn", "1 of 1 connections checked out")
        assert report.checks["postgres:poolSaturation"].status == "pass"
        await busy
    off = relaxed(pgstack_settings).model_copy(update={"database_read_pool_size": 0})
    async with Database(off) as db:
        assert "postgres:readPoolSaturation" not in (await db.health_check()).checks
