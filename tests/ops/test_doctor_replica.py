"""`replication.lag` on a real streaming replica, seen from the primary and from the replica.

The primary and its `pg_basebackup -R` hot standby come from tests/cluster.py (the embedded
package's binaries, on loopback ports).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.db.doctor import Finding, Thresholds, diagnose
from pgstack.testing.plugin import settings_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cluster import Cluster

# Far below any real lag worth a warning, far above the time a caught-up replica takes.
LAG = Thresholds(replication_lag=timedelta(milliseconds=500))


@dataclass
class Pair:
    primary: URL
    replica: URL


@pytest.fixture
def pair() -> Iterator[Pair]:
    with Cluster.start(replicas=1) as cluster:
        yield Pair(cluster.primary.url, cluster.replicas[0].url)


async def _lag_findings(db: Database, present: bool, within: float = 20.0) -> list[Finding]:
    """Run the doctor until a `replication.lag` finding is there (or gone)."""
    deadline = time.monotonic() + within
    while True:
        found = [f for f in await diagnose(db, thresholds=LAG) if f.id == "replication.lag"]
        if bool(found) == present:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"replication.lag never {'appeared' if present else 'went'}")
        await asyncio.sleep(0.2)


async def test_replication_lag_on_the_primary_and_on_the_replica(
    pair: Pair, eventually: Any
) -> None:
    # proves: O1
    primary = await asyncpg.connect(asyncpg_dsn(pair.primary))
    replica = await asyncpg.connect(asyncpg_dsn(pair.replica))
    try:
        async with (
            Database(settings_for(pair.primary)) as on_primary,
            Database(settings_for(pair.replica)) as on_replica,
        ):
            assert await replica.fetchval("SELECT pg_is_in_recovery()")
            await primary.execute("CREATE TABLE ticks (n int); INSERT INTO ticks VALUES (1)")
            # A caught-up replica has no lag, however long ago the primary last wrote.
            await eventually(
                replica,
                "SELECT clock_timestamp() - pg_last_xact_replay_timestamp() > interval '1s'",
                "the primary idle for a second, its last write replayed",
            )
            assert await _lag_findings(on_replica, present=False) == []
            assert await _lag_findings(on_primary, present=False) == []

            await replica.execute("SELECT pg_wal_replay_pause()")
            await primary.execute("INSERT INTO ticks VALUES (2)")
            (seen,) = await _lag_findings(on_primary, present=True)
            assert seen.severity == "warn" and seen.object.startswith("replica ")
            assert seen.evidence.startswith("replay lag ") and "replay" in seen.fix
            (own,) = await _lag_findings(on_replica, present=True)
            assert own.object == "this replica" and own.fix
            assert await replica.fetchval("SELECT count(*) FROM ticks") == 1

            await replica.execute("SELECT pg_wal_replay_resume()")
            await _lag_findings(on_replica, present=False)
            await _lag_findings(on_primary, present=False)
            assert await replica.fetchval("SELECT count(*) FROM ticks") == 2
    finally:
        await replica.close()
        await primary.close()
