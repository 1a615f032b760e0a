"""The read lane: pgstack's own pool for single statements outside a transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.db.lane import ReadLane
from pgstack.errors import DatabaseUnavailableError, PoolExhaustedError
from pgstack.testing import record_statements

# The lane is off behind a transaction pooler when a statement timeout is set (these tests set
# one: lane_db), and several end the lane's server connections by pid.
pytestmark = pytest.mark.not_through_pooler(
    "the read lane is off there with a statement timeout, and backend pids are not stable"
)


@pytest.fixture
async def lane_db(pgstack_settings: Settings) -> AsyncIterator[Database]:
    """A Database with a one-connection read lane and a statement timeout of 4.5 s."""
    db = Database(
        pgstack_settings.model_copy(
            update={"database_read_pool_size": 1, "database_statement_timeout_ms": 4500}
        )
    )
    await db.connect()
    yield db
    await db.disconnect()


def lane_of(db: Database) -> Any:
    lane = db.read_lane
    assert lane is not None
    return lane


async def test_the_lane_opens_connections_on_demand_with_the_engine_settings(
    lane_db: Database,
) -> None:
    # proves: C1, C2
    assert lane_db.settings.read_pool_size == 1
    stats = lane_db.read_pool_stats()
    assert stats == {
        "size": 1,
        "checked_in": 0,
        "checked_out": 0,
        "overflow": 0,
        "max_overflow": 0,
        "total": 0,
    }
    rows = await lane_of(lane_db).fetch(
        "SELECT current_setting('application_name') AS app, "
        "current_setting('statement_timeout') AS timeout, '{\"a\": [1]}'::jsonb AS doc",
        (),
    )
    # Same server settings as the engine's connections, and its JSON codecs (decoded JSON).
    assert (rows[0]["app"], rows[0]["timeout"], rows[0]["doc"]) == ("pgstack", "4500ms", {"a": [1]})
    assert lane_db.read_pool_stats() == {**stats, "checked_in": 1, "total": 1}


async def test_a_connection_that_dies_under_a_read_is_replaced_and_the_read_run_again(
    lane_db: Database,
) -> None:
    # proves: R6
    async with lane_db.transaction() as session:
        await session.execute(text("CREATE SEQUENCE lane_attempts"))
    lane = lane_of(lane_db)
    before = await lane.fetch("SELECT pg_backend_pid() AS pid", ())
    # The first attempt kills its own connection mid-statement; the second finds a new one.
    rows = await lane.fetch(
        "SELECT CASE WHEN nextval('lane_attempts') = 1 "
        "THEN pg_terminate_backend(pg_backend_pid()) ELSE true END AS ok, "
        "pg_backend_pid() AS pid",
        (),
    )
    assert rows[0]["ok"] is True
    assert rows[0]["pid"] != before[0]["pid"]
    assert (await lane.fetch("SELECT last_value FROM lane_attempts", ()))[0][0] == 2


async def test_a_read_that_loses_its_connection_twice_is_one_clear_error(
    lane_db: Database,
) -> None:
    # proves: R6
    with pytest.raises(DatabaseUnavailableError, match="lost twice"):
        await lane_of(lane_db).fetch("SELECT pg_terminate_backend(pg_backend_pid())", ())
    # The lane is usable afterwards.
    assert (await lane_of(lane_db).fetch("SELECT 1", ()))[0][0] == 1


async def test_statement_listeners_and_metrics_see_lane_statements(lane_db: Database) -> None:
    # proves: C7, O4
    def observed() -> float:
        return REGISTRY.get_sample_value("pgstack_query_duration_seconds_count") or 0.0

    before = observed()
    with record_statements(lane_db) as log:
        await lane_of(lane_db).fetch("SELECT $1::int + 1", (41,))
    assert log == ["SELECT $1::int + 1"]
    assert observed() == before + 1


async def test_the_lane_can_be_turned_off(pgstack_settings: Settings) -> None:
    # proves: C1
    db = Database(pgstack_settings.model_copy(update={"database_read_pool_size": 0}))
    await db.connect()
    try:
        assert db.read_lane is None and db.read_pool_stats() is None
        async with db.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await db.disconnect()


async def test_the_lane_is_a_pool_in_the_metrics_and_closes_with_the_database(
    lane_db: Database,
) -> None:
    # proves: C7, C2
    await lane_of(lane_db).fetch("SELECT 1", ())
    label = {"pool": f"{lane_db.name}-reads"}
    assert REGISTRY.get_sample_value("pgstack_pool_connections", label) == 1.0
    assert REGISTRY.get_sample_value("pgstack_pool_size", label) == 1.0
    lane = lane_of(lane_db)
    await lane_db.disconnect()
    assert lane_db.read_lane is None
    assert lane.stats()["total"] == 0


async def test_readers_beyond_the_lane_size_wait_their_turn(lane_db: Database) -> None:
    # proves: C2
    lane = lane_of(lane_db)
    results = await asyncio.gather(
        *(lane.fetch("SELECT pg_sleep(0.02), $1::int AS n", (n,)) for n in range(6))
    )
    assert [rows[0]["n"] for rows in results] == list(range(6))
    assert lane.stats()["total"] == 1  # one connection served them all


async def test_an_exhausted_lane_says_so_after_the_pool_timeout(pgstack_db: Database) -> None:
    # proves: C2
    lane = ReadLane.open(pgstack_db.engine, pgstack_db._connect_args(), size=1, timeout=0.2)
    try:
        slow = asyncio.create_task(lane.fetch("SELECT pg_sleep(1)", ()))
        await asyncio.sleep(0.1)
        with pytest.raises(PoolExhaustedError, match="DATABASE_READ_POOL_SIZE"):
            await lane.fetch("SELECT 1", ())
        await slow
        assert (await lane.fetch("SELECT 2", ()))[0][0] == 2
    finally:
        await lane.close(5)


async def test_a_cancelled_read_never_hands_its_connection_out_again(lane_db: Database) -> None:
    # proves: R6
    lane = lane_of(lane_db)
    first = (await lane.fetch("SELECT pg_backend_pid()", ()))[0][0]
    slow = asyncio.create_task(lane.fetch("SELECT pg_sleep(5)", ()))
    await asyncio.sleep(0.1)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert lane.stats()["total"] == 0
    assert (await lane.fetch("SELECT pg_backend_pid()", ()))[0][0] != first


async def test_unused_connections_are_closed(pgstack_db: Database) -> None:
    # proves: C2
    lane = ReadLane.open(
        pgstack_db.engine, pgstack_db._connect_args(), size=2, timeout=1, idle_lifetime=0.05
    )
    try:
        await asyncio.gather(*(lane.fetch("SELECT pg_sleep(0.05)", ()) for _ in range(2)))
        assert lane.stats()["total"] == 2
        for _ in range(200):
            if lane.stats()["total"] == 0:
                break
            await asyncio.sleep(0.01)
        assert lane.stats() == {
            "size": 2,
            "checked_in": 0,
            "checked_out": 0,
            "overflow": 0,
            "max_overflow": 0,
            "total": 0,
        }
        assert (await lane.fetch("SELECT 3", ()))[0][0] == 3  # opens a new one on demand
    finally:
        await lane.close(5)


async def test_a_failed_connect_frees_its_slot_for_the_next_reader(pgstack_db: Database) -> None:
    # proves: C2
    broken = {**pgstack_db._connect_args(), "server_settings": {"pgstack_no_such": "1"}}
    lane = ReadLane.open(pgstack_db.engine, broken, size=1, timeout=5)
    try:
        results = await asyncio.gather(
            lane.fetch("SELECT 1", ()), lane.fetch("SELECT 1", ()), return_exceptions=True
        )
        # Both readers tried to connect and got the server's answer; neither waited out the
        # pool timeout for a connection that was never made.
        assert all(isinstance(r, Exception) and "pgstack_no_such" in str(r) for r in results), (
            results
        )
        assert lane.stats()["total"] == 0
    finally:
        await lane.close(5)
