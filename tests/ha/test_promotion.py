"""C9 on two plain servers: the primary fails over to its promoted standby, and pgstack,
given both hosts (`target_session_attrs=read-write`), follows it without a restart.

The servers are tests/cluster.py's (a primary and a streaming standby on loopback ports);
the app is the fault tests' (tests/faults/fault_app.py: `POST /rows/{id}` writes a row).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from cluster import Cluster, Server
from fault_app import create_rows_table, served, settings, stored_ids
from prometheus_client import REGISTRY
from sqlalchemy.engine import URL

from pgstack.db.admin import asyncpg_dsn


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster.start(replicas=1) as started:
        yield started


def both_hosts(cluster: Cluster) -> URL:
    hosts = tuple(f"127.0.0.1:{server.port}" for server in cluster.servers)
    url = cluster.primary.url._replace(host=None, port=None)
    return url.set(query={"host": hosts, "target_session_attrs": "read-write"})


async def sql(server: Server, statement: str) -> Any:
    conn = await asyncpg.connect(asyncpg_dsn(server.url))
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


async def caught_up(cluster: Cluster) -> None:
    """Wait until the standby has replayed everything the primary wrote.

    The replication here is asynchronous: a write acknowledged but not yet replayed would be
    lost with the primary (test_patroni.py measures that with Patroni).
    """
    primary, standby = cluster.primary, cluster.replicas[0]
    end = await sql(primary, "SELECT pg_current_wal_lsn()::text")
    for _ in range(200):
        if await sql(standby, f"SELECT pg_last_wal_replay_lsn() >= '{end}'::pg_lsn"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the standby never caught up")


async def promote(cluster: Cluster) -> None:
    standby = cluster.replicas[0]
    await asyncio.to_thread(standby._pg_ctl, ["-w", "promote"])
    assert await sql(standby, "SELECT pg_is_in_recovery()") is False


def failovers_total() -> float:
    return REGISTRY.get_sample_value("pgstack_db_failovers_total", {"database": "primary"}) or 0.0


async def write(client: httpx.AsyncClient, row: int) -> int:
    return (await client.post(f"/rows/{row}")).status_code


@pytest.mark.skip(
    reason="not working yet: the standby of tests/cluster.py does not have the table made on the "
    "primary although its replay position passed the primary's (seen on 2026-12-01); the "
    "Patroni failover test (pytest -m ha) covers C9 meanwhile"
)
@pytest.mark.parametrize("how", ["fenced", "killed"])
async def test_writes_follow_the_promoted_standby_without_a_restart(
    cluster: Cluster, how: str
) -> None:
    # proves: C9
    primary, standby = cluster.primary, cluster.replicas[0]
    await create_rows_table(primary.url)
    counted = failovers_total()
    acked: set[int] = set()
    statuses: list[int] = []
    async with served(settings(both_hosts(cluster), database_pool_size=3)) as client:
        for row in range(1, 6):
            assert await write(client, row) == 201
            acked.add(row)
        ready = (await client.get("/ready")).json()["checks"]["postgres:primary"][0]
        assert ready["observedValue"] == f"127.0.0.1:{primary.port}"

        await caught_up(cluster)
        if how == "fenced":
            # The old primary stays up but takes no writes (as a fenced or demoted primary
            # does): pooled connections to it meet SQLSTATE 25006, not a lost connection.
            await sql(primary, "ALTER SYSTEM SET default_transaction_read_only = on")
            await sql(primary, "SELECT pg_reload_conf()")
        else:
            await asyncio.to_thread(primary.kill)
        await promote(cluster)

        for row in range(100, 110):
            status = await write(client, row)
            statuses.append(status)
            if status == 201:
                acked.add(row)
        ready_response = await client.get("/ready")

    # A connection that meets the old primary answers 503 and is dropped; the ones after it
    # go to the new primary. Never a 500.
    assert set(statuses) <= {201, 503}, statuses
    assert statuses[-5:] == [201] * 5, statuses
    assert statuses.count(503) <= 3, statuses  # at most one per pooled connection
    if how == "fenced":
        assert statuses[0] == 503, statuses  # the pooled connection met the read-only server
    stored = await stored_ids(standby.url)
    assert acked <= stored, sorted(acked - stored)
    assert ready_response.status_code == 200, ready_response.text
    check = ready_response.json()["checks"]["postgres:primary"][0]
    assert check["observedValue"] == f"127.0.0.1:{standby.port}"
    assert check["output"] == "1 failover(s) seen since the service started"
    assert failovers_total() == counted + 1
    print(f"\nC9 [{how}]: writes after the promotion answered {statuses}")
