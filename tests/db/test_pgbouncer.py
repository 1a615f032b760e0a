"""`DATABASE_POOLER=pgbouncer-transaction` through a real PgBouncer in transaction mode.

A PgBouncer of the test's own (Debian's, 1.18: no protocol-level prepared statements) sits
before the test server; the test databases are still made on the server directly. Skipped
without pgbouncer locally, a failure in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack.audit import AuditLog
from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import DatabaseUnavailableError, MigrationError, StatementTimeoutError
from pgstack.migrations._env import LOCK_KEY
from pgstack.migrations.api import upgrade_async
from pgstack.migrations.project import MigrationProject
from pgstack.orm.context import request_context, tenant_context
from pgstack.testing.plugin import settings_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))

from fault_harness import PgBouncer, require_pgbouncer


def _run_as(socket_dir: str | None) -> str | None:
    """Who PgBouncer runs as when we are root: whoever may reach the server's socket."""
    if os.geteuid() != 0:
        return None
    if socket_dir:
        return pwd.getpwuid(os.stat(socket_dir).st_uid).pw_name
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return "nobody"


@pytest.fixture(scope="module")
def bouncer(pgstack_server_url: URL) -> Iterator[PgBouncer]:
    """PgBouncer before the test server: 2 server connections per database and role."""
    require_pgbouncer()
    socket_dir = pgstack_server_url.query.get("host")
    host = str(socket_dir) if socket_dir else (pgstack_server_url.host or "127.0.0.1")
    base = Path(tempfile.mkdtemp(prefix="pgstack-pgbouncer-"))
    base.chmod(0o755)
    server = PgBouncer(
        base,
        pgstack_server_url.port or 5432,
        user=_run_as(str(socket_dir) if socket_dir else None),
        target_host=host,
        default_pool_size=2,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def via(bouncer: PgBouncer, url: URL) -> URL:
    """`url`'s database, reached through the PgBouncer."""
    return url.set(host="127.0.0.1", port=bouncer.port, query={})


def pooled(bouncer: PgBouncer, url: URL, **values: object) -> Settings:
    settings = settings_for(via(bouncer, url))
    return settings.model_copy(update={"database_pooler": "pgbouncer-transaction", **values})


async def test_statement_timeout_is_set_in_each_transaction(
    bouncer: PgBouncer, pgstack_database_url: URL
) -> None:
    # proves: C8
    # PgBouncer refuses statement_timeout as a startup parameter: without the pooler mode
    # the connection fails, saying why.
    plain = settings_for(via(bouncer, pgstack_database_url)).model_copy(
        update={"database_statement_timeout_ms": 200, "database_pooler": "none"}
    )
    with pytest.raises(DatabaseUnavailableError, match="statement_timeout"):
        await Database(plain).connect()
    async with Database(
        pooled(bouncer, pgstack_database_url, database_statement_timeout_ms=200)
    ) as db:
        async with db.transaction() as session:
            assert await session.scalar(text("SHOW statement_timeout")) == "200ms"
            assert await session.scalar(text("SHOW application_name")) == "pgstack"
        with pytest.raises(StatementTimeoutError):
            async with db.transaction() as session:
                await session.execute(text("SELECT pg_sleep(2)"))
        async with db.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1


async def test_many_sessions_over_two_server_connections_never_collide(
    bouncer: PgBouncer, pgstack_database_url: URL
) -> None:
    # proves: C8
    # 16 tasks on a pgstack pool of 8 share PgBouncer's 2 server connections: statements
    # that SQLAlchemy prepares on one client must never meet another's of the same name.
    admin = await asyncpg.connect(asyncpg_dsn(pgstack_database_url))
    try:
        await admin.execute("CREATE TABLE pooled_hits (task int, n int, PRIMARY KEY (task, n))")
    finally:
        await admin.close()
    settings = pooled(bouncer, pgstack_database_url, database_pool_size=8, database_max_overflow=0)
    async with Database(settings) as db:

        async def work(task: int) -> None:
            for n in range(15):
                async with db.transaction() as session:
                    await session.execute(
                        text("INSERT INTO pooled_hits VALUES (:t, :n)"), {"t": task, "n": n}
                    )
                    count = await session.scalar(
                        text("SELECT count(*) FROM pooled_hits WHERE task = :t"), {"t": task}
                    )
                    assert count == n + 1
                # One statement outside a transaction, on the read lane when it is on.
                rows = await db.run(
                    text("SELECT n FROM pooled_hits WHERE task = :t AND n = :n"),
                    {"t": task, "n": n},
                )
                assert rows == [(n,)]

        await asyncio.gather(*(work(t) for t in range(16)))
        async with db.session() as session:
            assert await session.scalar(text("SELECT count(*) FROM pooled_hits")) == 16 * 15


async def test_migrations_run_through_pgbouncer_under_a_transaction_lock(
    bouncer: PgBouncer, pgstack_empty_url: URL, pgstack_migration_project: MigrationProject
) -> None:
    # proves: C8, D5
    settings = pooled(bouncer, pgstack_empty_url, migration_lock_wait_s=1)
    project = pgstack_migration_project
    holder = await asyncpg.connect(asyncpg_dsn(pgstack_empty_url))
    try:
        # Another replica migrating: it holds the lock in its transaction.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        with pytest.raises(MigrationError, match="held the migration lock"):
            await upgrade_async(settings, project=project)
        await transaction.rollback()
        applied = await upgrade_async(settings, project=project)
        assert applied, "nothing was migrated"
        assert await upgrade_async(settings, project=project) == []
        # The lock went with its transaction: no advisory lock is left on any connection.
        # This test's database only: other tests (other workers) may hold their own.
        locks = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert await holder.fetchval(locks) == 0
    finally:
        await holder.close()


@pytest.mark.parametrize("lane_on", [True, False], ids=["lane", "transaction"])
async def test_audit_entries_written_by_themselves_chain_through_pgbouncer(
    bouncer: PgBouncer, pgstack_migrated_url: URL, lane_on: bool
) -> None:
    # proves: C8, A2
    # 20 writers of the global chain and of a tenant's, over PgBouncer's 2 server
    # connections: one INSERT by itself on the lane, or a transaction when the lane is off.
    settings = pooled(bouncer, pgstack_migrated_url, database_pool_size=4, database_max_overflow=0)
    if not lane_on:
        settings = settings.model_copy(update={"database_read_pool_size": 0})
    tenant = uuid.uuid4()
    async with Database(settings) as db:
        assert (db.read_lane is not None) is lane_on
        audit = AuditLog(db)

        async def one(n: int) -> None:
            with request_context(request_id=f"req-{n}"):
                await audit.record("pooled.entry", resource_id=n)
                with tenant_context(tenant):
                    await audit.record("pooled.entry", resource_id=n)

        await asyncio.gather(*(one(n) for n in range(20)))
        for chain in (None, tenant):
            report = await audit.verify(chain)
            assert report.ok and report.checked == 20, report
            page = await audit.entries(tenant_id=chain, action="pooled.entry", limit=100)
            assert sorted(int(e["resource_id"]) for e in page.items) == list(range(20))
            assert {e["request_id"] for e in page.items} == {f"req-{n}" for n in range(20)}
