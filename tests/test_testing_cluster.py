"""`pgstack.testing.cluster`: a primary and a streaming standby for an application's own tests."""

from __future__ import annotations

import asyncio

import asyncpg

from pgstack.testing.cluster import Cluster


def _dsn(url: object) -> str:
    return str(url).replace("postgresql+asyncpg", "postgresql")


async def test_a_standby_streams_what_the_primary_writes() -> None:
    # proves: C6 (an application can start the replica its own tests read from)
    with Cluster.start(replicas=1) as cluster:
        (replica,) = cluster.replicas
        primary = await asyncpg.connect(_dsn(cluster.primary.url))
        standby = await asyncpg.connect(_dsn(replica.url))
        try:
            await primary.execute("CREATE TABLE streamed (n int); INSERT INTO streamed VALUES (7)")
            assert await primary.fetchval("SELECT pg_is_in_recovery()") is False
            assert await standby.fetchval("SELECT pg_is_in_recovery()") is True
            for _ in range(200):
                if await standby.fetchval("SELECT to_regclass('streamed') IS NOT NULL"):
                    break
                await asyncio.sleep(0.05)
            assert await standby.fetchval("SELECT n FROM streamed") == 7
        finally:
            await primary.close()
            await standby.close()
