"""Read replicas on a real primary and streaming replica (tests/cluster.py).

Where a statement ran is read from the server itself: `inet_server_port()` and
`pg_is_in_recovery()`. Writes of the test's own (raw asyncpg on the primary) do not open a
read-your-writes window; each block that must start without one runs in a fresh
`read_your_writes_scope()`.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import MetaData, String, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository, Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.db.replicas import is_plain_read, is_write_sql, read_your_writes_scope
from pgstack.errors import ConfigurationError, NotFoundError
from pgstack.orm import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, ModelMixin, UUIDPrimaryKey
from pgstack.testing.plugin import settings_for
from pgstack.web import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cluster import Cluster, Server, free_port

PORT = text("SELECT inet_server_port()")


class ReplicaBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Gadget(UUIDPrimaryKey, ReplicaBase):
    __tablename__ = "replica_gadgets"
    name: Mapped[str] = mapped_column(String(100))


class Gadgets(Repository[Gadget]):
    model = Gadget


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster.start(replicas=1) as started:
        yield started


@pytest.fixture(scope="module")
async def tables(cluster: Cluster) -> None:
    db = Database(settings_for(cluster.primary.url))
    async with db, db.engine.begin() as conn:
        await conn.run_sync(ReplicaBase.metadata.create_all)
    await replayed(cluster)


def replica_settings(cluster: Cluster, *replicas: Server, **values: Any) -> Settings:
    """Test settings for the cluster's primary, with its replicas (or those given)."""
    urls = [r.url.render_as_string(hide_password=False) for r in replicas or cluster.replicas]
    update = {
        "database_replica_urls": [SecretStr(u) for u in urls],
        "database_replica_check_interval_s": 0.1,
        "database_replica_max_lag_s": 30.0,
        "database_read_your_writes_s": 30.0,
        **values,
    }
    return settings_for(cluster.primary.url).model_copy(update=update)


@pytest.fixture
async def db(cluster: Cluster, tables: None) -> AsyncIterator[Database]:
    async with Database(replica_settings(cluster)) as database:
        assert database.replicas is not None
        assert database.replicas.nodes[0].healthy, database.replicas.describe()
        yield database


async def on_server(sql: str, server: Server, *args: Any) -> Any:
    conn = await asyncpg.connect(asyncpg_dsn(server.url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def replayed(cluster: Cluster) -> None:
    """Wait until every replica has replayed everything the primary has written."""
    # The insert position: with synchronous_commit off, a commit may not be written yet.
    lsn = await on_server("SELECT pg_current_wal_insert_lsn()::text", cluster.primary)
    for replica in cluster.replicas:
        deadline = time.monotonic() + 20
        sql = "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn"
        while not await on_server(sql, replica, lsn):
            assert time.monotonic() < deadline, f"{replica.name} never replayed {lsn}"
            await asyncio.sleep(0.05)


async def until(check: Any, what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def port_of(db: Database, *, readonly: bool = False) -> int:
    async with db.session(readonly=readonly) as session:
        port: int = await session.scalar(PORT)
        return port


def test_statements_classified_for_routing() -> None:
    # proves: C6
    for sql in ("SELECT 1", "  /* c */ select x FROM t", "SHOW x", "WITH a AS (SELECT 1) SELECT *"):
        assert not is_write_sql(sql), sql
    for sql in (
        "INSERT INTO t VALUES (1)",
        "update t set x = 1",
        "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
        "CREATE TABLE t (x int)",
        "TRUNCATE t",
        "CALL p()",
    ):
        assert is_write_sql(sql), sql
    assert is_plain_read(select(Gadget))
    assert is_plain_read(text("SELECT 1"))
    assert not is_plain_read(select(Gadget).with_for_update())
    assert not is_plain_read(select(Gadget).with_for_update(read=True))
    assert not is_plain_read(text("SELECT * FROM t FOR NO KEY UPDATE"))
    assert not is_plain_read(text("INSERT INTO t VALUES (1)"))
    assert not is_plain_read(None)
    # Locks and sequences live on the primary, even when asked for by a SELECT.
    assert not is_plain_read(select(func.pg_advisory_xact_lock(func.hashtext("admin"))))
    assert not is_plain_read(select(Gadget.id, func.nextval("s")))
    assert not is_plain_read(text("SELECT pg_try_advisory_lock(1)"))
    assert is_plain_read(select(Gadget).where(Gadget.name == func.lower("X")))


def test_replica_settings_are_validated() -> None:
    # proves: C1, C6
    for name, value in (
        ("DATABASE_REPLICA_MAX_LAG_S", -1),
        ("DATABASE_REPLICA_CHECK_INTERVAL_S", 0),
        ("DATABASE_READ_YOUR_WRITES_S", "soon"),
    ):
        with pytest.raises(ConfigurationError, match=name):
            Settings(**{name.lower(): value}, _env_file=None)  # type: ignore[arg-type]


async def test_reads_go_to_the_replica_and_writes_to_the_primary(
    cluster: Cluster, db: Database
) -> None:
    # proves: C6
    primary, replica = cluster.primary, cluster.replicas[0]
    with read_your_writes_scope():
        async with db.session() as session:
            assert await session.scalar(text("SELECT pg_is_in_recovery()")) is True
            assert await session.scalar(PORT) == replica.port
        assert await port_of(db, readonly=True) == replica.port
        assert await db.run(select(func.inet_server_port())) == [(replica.port,)]

    # A row the replica has not replayed: repository reads cannot see it, the primary can.
    seen = uuid.uuid4()
    await on_server("INSERT INTO replica_gadgets VALUES ($1, 'seen')", primary, seen)
    await replayed(cluster)
    await on_server("SELECT pg_wal_replay_pause()", replica)
    try:
        unseen = uuid.uuid4()
        await on_server("INSERT INTO replica_gadgets VALUES ($1, 'unseen')", primary, unseen)
        with read_your_writes_scope():
            async with db.session() as session:  # the fast path (a fresh session)
                assert (await Gadgets(session).get(seen)).name == "seen"
                with pytest.raises(NotFoundError):
                    await Gadgets(session).get(unseen)
            async with db.session() as session, session.begin():  # explicit: the primary
                assert (await Gadgets(session).get(unseen)).name == "unseen"
                assert await session.scalar(PORT) == primary.port
            async with db.session() as session:  # FOR UPDATE locks on the primary
                locked = select(Gadget).where(Gadget.id == unseen).with_for_update()
                assert (await session.scalars(locked)).one().name == "unseen"
                # ... and the session stays there, so its later reads see what it locked.
                assert await session.scalar(PORT) == primary.port
                await session.rollback()
            async with db.transaction() as session:
                assert await Gadgets(session).count() == 2
        assert db.replicas is not None and db.replicas.nodes[0].healthy

        with read_your_writes_scope():
            async with db.session() as session:
                made = await Gadgets(session).create({"name": "written"})
                await session.commit()
            assert await on_server("SELECT pg_is_in_recovery()", primary) is False
            assert (
                await on_server(
                    "SELECT count(*) FROM replica_gadgets WHERE id = $1", primary, made.id
                )
                == 1
            )
    finally:
        await on_server("SELECT pg_wal_replay_resume()", replica)


async def test_a_readonly_session_refuses_writes_on_the_replica(db: Database) -> None:
    # proves: C6
    with read_your_writes_scope():
        async with db.session(readonly=True) as session:
            with pytest.raises(DBAPIError, match="read-only transaction"):
                await session.execute(
                    text("INSERT INTO replica_gadgets VALUES (gen_random_uuid(), 'x')")
                )
        async with db.transaction(readonly=True) as session:
            assert await session.scalar(text("SELECT pg_is_in_recovery()")) is True
        # A hot standby refuses serializable transactions: those stay on the primary.
        async with db.transaction(readonly=True, isolation="serializable") as session:
            assert await session.scalar(text("SELECT pg_is_in_recovery()")) is False


async def test_reads_after_a_write_go_to_the_primary_for_the_window(
    cluster: Cluster, tables: None
) -> None:
    # proves: C6
    primary, replica = cluster.primary, cluster.replicas[0]
    settings = replica_settings(cluster, database_read_your_writes_s=1.0)
    async with Database(settings) as db:
        with read_your_writes_scope():
            assert await port_of(db) == replica.port
            async with db.session() as session:
                await Gadgets(session).create({"name": "mine"})
                await session.commit()
            written = time.monotonic()
            assert await port_of(db) == primary.port
            assert await port_of(db, readonly=True) == primary.port
            assert await db.run(select(func.inet_server_port())) == [(primary.port,)]
            # A task this one starts reads its writes too; another request does not.
            assert await asyncio.create_task(port_of(db)) == primary.port
            with read_your_writes_scope():
                assert await port_of(db) == replica.port
            # A single-statement write through `db.run` opens the window as well.
            await asyncio.sleep(max(0.0, written + 1.05 - time.monotonic()))
            assert await port_of(db) == replica.port
            await db.run(text("INSERT INTO replica_gadgets VALUES (gen_random_uuid(), 'run')"))
            assert await port_of(db) == primary.port


async def test_a_lagging_replica_is_taken_out_and_put_back(cluster: Cluster, tables: None) -> None:
    # proves: C6, C5
    primary, replica = cluster.primary, cluster.replicas[0]
    async with Database(replica_settings(cluster, database_replica_max_lag_s=0.5)) as db:
        assert db.replicas is not None
        node = db.replicas.nodes[0]
        assert node.healthy
        await on_server("SELECT pg_wal_replay_pause()", replica)
        try:
            await on_server("INSERT INTO replica_gadgets VALUES (gen_random_uuid(), 'x')", primary)
            await until(lambda: not node.healthy, "the lagging replica taken out")
            assert "replay lag" in (node.reason or "")
            with read_your_writes_scope():
                assert await port_of(db) == primary.port
                assert await port_of(db, readonly=True) == primary.port
            report = await db.health_check()
            check = report.checks["postgres:replica:replica1"]
            assert check.status == "warn" and "lag" in (check.output or "")
            assert report.status == "warn" and report.http_status == 200
        finally:
            await on_server("SELECT pg_wal_replay_resume()", replica)
        await until(lambda: node.healthy, "the replica back in rotation")
        with read_your_writes_scope():
            assert await port_of(db) == replica.port
        assert (await db.health_check()).checks["postgres:replica:replica1"].status == "pass"


async def test_a_replica_cut_off_from_the_primary_is_taken_out(
    cluster: Cluster, tables: None
) -> None:
    # proves: C6
    # Its WAL receiver stopped, the replica has replayed all it received: no lag by its own
    # replay timestamp. The primary's WAL position, which it lacks, says otherwise.
    primary, replica = cluster.primary, cluster.replicas[0]
    conninfo = await on_server("SHOW primary_conninfo", replica)
    async with Database(replica_settings(cluster, database_replica_max_lag_s=0.5)) as db:
        assert db.replicas is not None
        node = db.replicas.nodes[0]
        await on_server("ALTER SYSTEM SET primary_conninfo = ''", replica)
        try:
            await on_server("SELECT pg_reload_conf()", replica)
            await until_sql(replica, "SELECT NOT EXISTS (SELECT FROM pg_stat_wal_receiver)")
            await on_server("INSERT INTO replica_gadgets VALUES (gen_random_uuid(), 'x')", primary)
            await until(lambda: not node.healthy, "the cut-off replica taken out")
            assert "replay lag" in (node.reason or "")
            with read_your_writes_scope():
                assert await port_of(db) == primary.port
        finally:
            quoted = conninfo.replace("'", "''")
            await on_server(f"ALTER SYSTEM SET primary_conninfo = '{quoted}'", replica)
            await on_server("SELECT pg_reload_conf()", replica)
        await until(lambda: node.healthy, "the reconnected replica back in rotation")


async def until_sql(server: Server, sql: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await on_server(sql, server):
        assert time.monotonic() < deadline, f"never true on {server.name}: {sql}"
        await asyncio.sleep(0.05)


async def test_an_unreachable_replica_leaves_the_primary_serving(
    cluster: Cluster, tables: None
) -> None:
    # proves: C6
    nowhere = Server("gone", cluster.base / "gone", free_port(), None)
    async with Database(replica_settings(cluster, nowhere)) as db:
        assert db.replicas is not None and not db.replicas.nodes[0].healthy
        assert "probe failed" in (db.replicas.nodes[0].reason or "")
        with read_your_writes_scope():
            async with db.session() as session:
                assert (await Gadgets(session).list(limit=1)) is not None
                assert await session.scalar(PORT) == cluster.primary.port
            # Read-only on the primary too: a write is refused, not silently done.
            async with db.session(readonly=True) as session:
                assert await session.scalar(PORT) == cluster.primary.port
                with pytest.raises(DBAPIError, match="read-only transaction"):
                    await session.execute(text("DELETE FROM replica_gadgets"))
        report = await db.health_check()
        assert report.checks["postgres:replica:replica1"].status == "warn"
        assert report.status == "warn"


async def test_metrics_and_readiness_per_node(cluster: Cluster, db: Database) -> None:
    # proves: C6, C7, C5
    app = create_app(database=db, monitor_interval=None)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        app.router.lifespan_context(app),
    ):
        with read_your_writes_scope():
            await port_of(db)
        ready = await client.get("/ready")
        assert ready.status_code == 200
        check = ready.json()["checks"]["postgres:replica:replica1"][0]
        assert check["status"] == "pass" and check["observedUnit"] == "s"
        metrics = (await client.get("/metrics")).text
    assert 'pgstack_pool_size{pool="replica1"} 5.0' in metrics
    assert 'pgstack_pool_size{pool="replica1-reads"} 5.0' in metrics
    assert 'pgstack_pool_size{pool="primary"} 5.0' in metrics
    assert 'pgstack_replica_healthy{replica="replica1"} 1.0' in metrics
    assert 'pgstack_replica_lag_seconds{replica="replica1"}' in metrics
    reads = [
        line for line in metrics.splitlines() if line.startswith("pgstack_replica_reads_total")
    ]
    assert reads and float(reads[0].split()[-1]) >= 1
    assert db.replicas is not None
    stats = db.replicas.pool_stats()
    assert set(stats) == {"replica1", "replica1-reads"}
    assert stats["replica1"]["max_overflow"] == 2


async def test_a_killed_replica_leaves_reads_to_the_primary_until_it_returns(
    cluster: Cluster, tables: None
) -> None:
    # proves: C6
    primary, replica = cluster.primary, cluster.replicas[0]
    async with Database(replica_settings(cluster)) as db:
        assert db.replicas is not None
        node = db.replicas.nodes[0]
        with read_your_writes_scope():
            async with db.session() as session:  # warm connections on the replica
                await Gadgets(session).list(limit=1)
                assert await session.scalar(PORT) == replica.port
        replica.kill()
        try:
            with read_your_writes_scope():
                # The pooled connections are dead: the read runs again on the primary.
                async with db.session() as session:
                    assert await Gadgets(session).list(limit=1) is not None
                async with db.session() as session:
                    assert await session.scalar(PORT) == primary.port
                assert await port_of(db, readonly=True) == primary.port
            assert not node.healthy
        finally:
            replica.start()
        await until(lambda: node.healthy, "the restarted replica back in rotation")
        with read_your_writes_scope():
            assert await port_of(db) == replica.port


async def test_a_readonly_session_without_replicas(pgstack_db: Database) -> None:
    # proves: C6, C3
    async with pgstack_db.session(readonly=True) as session:
        assert await session.scalar(text("SHOW transaction_read_only")) == "on"
        with pytest.raises(DBAPIError, match="read-only transaction"):
            await session.execute(text("CREATE TABLE never_made (x int)"))
    # The pooled connection it used carries nothing into the next session.
    for _ in range(3):
        async with pgstack_db.session() as session:
            assert await session.scalar(text("SHOW transaction_read_only")) == "off"


async def test_pages_with_an_estimated_total_read_from_a_replica(
    cluster: Cluster, db: Database
) -> None:
    # proves: C6, R5
    await on_server(
        "INSERT INTO replica_gadgets VALUES ($1, 'estimated')", cluster.primary, uuid.uuid4()
    )
    await on_server("ANALYZE replica_gadgets", cluster.primary)
    await replayed(cluster)
    for total in ("estimate", "auto", "exact"):
        async with db.session() as session:  # a fresh session: the read lane's path
            page = await Gadgets(session).page(sort="id", limit=5, total=total)
            assert page.items and page.total is not None and page.total >= len(page.items)
        async with db.transaction() as session:
            again = await Gadgets(session).page(sort="id", limit=5, total=total)
            assert [g.id for g in again.items] == [g.id for g in page.items]
