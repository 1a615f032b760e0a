"""`diagnose` and `pgstack db doctor`: each check meets its condition on a real server."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.db.doctor import Finding, Thresholds, diagnose, slowest_statements
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.testing.plugin import settings_for

EAGER = Thresholds(
    long_query=timedelta(0),
    idle_in_transaction=timedelta(0),
    unused_index_bytes=0,
    min_stats_age=timedelta(0),
    bloat_bytes=100 * 1024,
    never_analyzed_bytes=1024 * 1024,
)


def ids(findings: list[Finding]) -> set[str]:
    return {f.id for f in findings}


def about(findings: list[Finding], id: str, needle: str) -> list[Finding]:
    return [f for f in findings if f.id == id and needle in f.object]


async def test_connection_budget_counts_every_pool_times_workers(
    service: Database, admin: asyncpg.Connection
) -> None:
    # proves: O1
    free = await admin.fetchval(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - coalesce(current_setting('reserved_connections', true), '0')::int"
    )
    per_worker = 5 + 2 + 5  # pool, overflow, read lane of the test settings
    fine = await diagnose(service, workers=1)
    assert "connections.budget" not in ids(fine)
    crowded = await diagnose(service, workers=free // per_worker + 1)
    (finding,) = [f for f in crowded if f.id == "connections.budget"]
    assert finding.severity == "error"
    assert "read lane 5" in finding.evidence and f"allows {free} " in finding.evidence
    assert "DATABASE_POOL_SIZE" in finding.fix


async def test_unused_index_found_and_young_stats_say_so(
    service: Database, admin: asyncpg.Connection, eventually: Any
) -> None:
    # proves: O1
    await admin.execute(
        "CREATE TABLE items (id int PRIMARY KEY, colour text, size int);"
        "CREATE INDEX items_colour ON items (colour); CREATE INDEX items_size ON items (size);"
        "INSERT INTO items SELECT g, 'c' || g % 10, g FROM generate_series(1, 2000) g;"
        "ANALYZE items"
    )
    await admin.execute("SET enable_seqscan = off")
    assert await admin.fetchval("SELECT count(*) FROM items WHERE size = 7") == 1
    await eventually(
        admin,
        "SELECT idx_scan > 0 FROM pg_stat_user_indexes WHERE indexrelname = 'items_size'",
        "items_size scanned in the statistics",
    )
    findings = await diagnose(service, thresholds=EAGER)
    unused = [f for f in findings if f.id == "indexes.unused"]
    assert [f.object for f in unused] == ["index public.items_colour"]
    assert unused[0].fix == 'DROP INDEX CONCURRENTLY "public"."items_colour";'

    # Statistics younger than a business cycle prove nothing: the doctor says so instead.
    young = await diagnose(service, thresholds=Thresholds(min_stats_age=timedelta(days=36500)))
    assert "indexes.unused" not in ids(young)
    assert "indexes.unused.not-enough-data" in ids(young)


async def test_duplicate_index_found_but_not_a_unique_one(
    service: Database, admin: asyncpg.Connection
) -> None:
    # proves: O1
    await admin.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, customer int, placed date, code text);"
        "CREATE INDEX orders_customer ON orders (customer);"
        "CREATE INDEX orders_customer_placed ON orders (customer, placed);"
        "CREATE UNIQUE INDEX orders_code ON orders (code);"
        "CREATE INDEX orders_code_placed ON orders (code, placed);"
        "CREATE INDEX orders_placed_hash ON orders USING hash (placed);"
        "CREATE INDEX orders_placed ON orders (placed, customer);"
    )
    findings = await diagnose(service)
    duplicates = [f for f in findings if f.id == "indexes.duplicate"]
    assert [f.object for f in duplicates] == ["index public.orders_customer"]
    assert "orders_customer_placed" in duplicates[0].evidence


async def test_foreign_key_without_index_and_table_without_primary_key(
    service: Database, admin: asyncpg.Connection
) -> None:
    # proves: O1
    await admin.execute(
        "CREATE TABLE parent (id int PRIMARY KEY);"
        "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);"
        "CREATE TABLE covered (id int PRIMARY KEY, parent_id int REFERENCES parent);"
        "CREATE INDEX covered_parent ON covered (parent_id, id);"
        "CREATE TABLE loose (x int)"
    )
    findings = await diagnose(service)
    (fk,) = [f for f in findings if f.id == "indexes.missing-fk"]
    assert fk.object.startswith("foreign key public.child.")
    assert fk.fix == 'CREATE INDEX CONCURRENTLY ON "public"."child" (parent_id);'
    (no_pk,) = [f for f in findings if f.id == "tables.no-primary-key"]
    assert no_pk.object == "table public.loose"


async def test_table_and_index_bloat_estimated(
    service: Database, admin: asyncpg.Connection
) -> None:
    # proves: O1
    await admin.execute(
        "CREATE TABLE events (id int PRIMARY KEY, body text);"
        "CREATE TABLE steady (id int PRIMARY KEY, body text);"
        "INSERT INTO events SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;"
        "INSERT INTO steady SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;"
        "DELETE FROM events WHERE id % 10 <> 0"
    )
    await admin.execute("VACUUM ANALYZE events")
    await admin.execute("VACUUM ANALYZE steady")
    findings = await diagnose(service, thresholds=EAGER)
    bloated = {f.object for f in findings if f.id.startswith("bloat.")}
    assert bloated == {"table public.events", "index public.events_pkey"}
    (table,) = about(findings, "bloat.table", "events")
    assert "estimate" in table.evidence and "locks" in table.fix
    (index,) = about(findings, "bloat.index", "events_pkey")
    assert index.fix == 'REINDEX INDEX CONCURRENTLY "public"."events_pkey";'


async def test_tables_never_analyzed_or_vacuumed(
    service: Database, admin: asyncpg.Connection, eventually: Any
) -> None:
    # proves: O1
    await admin.execute(
        "CREATE TABLE logbook (id int PRIMARY KEY, line text) WITH (autovacuum_enabled = off);"
        "INSERT INTO logbook SELECT g, repeat('y', 100) FROM generate_series(1, 20000) g"
    )
    findings = await diagnose(service, thresholds=EAGER)
    assert about(findings, "tables.never-analyzed", "logbook")
    assert about(findings, "tables.never-vacuumed", "logbook")

    await admin.execute("VACUUM ANALYZE logbook")
    await eventually(
        admin,
        "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'logbook'",
        "the ANALYZE of logbook in the statistics",
    )
    after = await diagnose(service, thresholds=EAGER)
    assert not [f for f in after if f.id.startswith("tables.never") and "logbook" in f.object]


async def test_sequence_near_the_end_of_its_column(
    service: Database, admin: asyncpg.Connection
) -> None:
    # proves: O1
    await admin.execute(
        "CREATE TABLE tickets (id serial PRIMARY KEY);"
        "CREATE TABLE wide (id bigserial PRIMARY KEY);"
        "CREATE TABLE almost (id serial PRIMARY KEY);"
        "SELECT setval('tickets_id_seq', 2000000000), setval('wide_id_seq', 2000000000),"
        " setval('almost_id_seq', 2147000000)"
    )
    findings = await diagnose(service)
    exhausted = {f.object: f for f in findings if f.id == "sequences.exhaustion"}
    # The int column is 93 % used; the same number in a bigint is nothing.
    assert set(exhausted) == {"sequence public.tickets_id_seq", "sequence public.almost_id_seq"}
    assert exhausted["sequence public.tickets_id_seq"].severity == "warn"
    assert exhausted["sequence public.almost_id_seq"].severity == "error"
    assert "tickets.id" in exhausted["sequence public.tickets_id_seq"].evidence


async def test_blocked_query_names_its_blocker(
    service: Database, admin: asyncpg.Connection, pgstack_empty_url: URL, eventually: Any
) -> None:
    # proves: O1
    await admin.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
    holder = await asyncpg.connect(asyncpg_dsn(pgstack_empty_url))
    waiter = await asyncpg.connect(asyncpg_dsn(pgstack_empty_url))
    try:
        holder_tx = holder.transaction()
        await holder_tx.start()
        await holder.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        blocked = asyncio.create_task(waiter.fetch("SELECT * FROM accounts"))

        await eventually(
            admin,
            "SELECT count(*) FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0"
            " AND datname = current_database()",
            "the SELECT waiting on the lock",
        )
        findings = await diagnose(service, thresholds=EAGER)
        (lock,) = [f for f in findings if f.id == "locks.blocked"]
        holder_pid = holder.get_server_pid()
        assert lock.object.startswith(f"pid {waiter.get_server_pid()} ")
        assert f"pid {holder_pid} (idle in transaction" in lock.evidence
        assert f"pg_terminate_backend({holder_pid})" in lock.fix
        idle = [f for f in findings if f.id == "sessions.idle-in-transaction"]
        assert [f.object.split()[1] for f in idle] == [str(holder_pid)]
        await holder_tx.rollback()
        assert await blocked == []
    finally:
        await holder.close()
        await waiter.close()


async def test_long_running_statement(
    service: Database, admin: asyncpg.Connection, pgstack_empty_url: URL, eventually: Any
) -> None:
    # proves: O1
    sleeper = await asyncpg.connect(asyncpg_dsn(pgstack_empty_url))
    try:
        task = asyncio.create_task(sleeper.execute("SELECT pg_sleep(30)"))

        await eventually(
            admin,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
            "the pg_sleep running",
        )
        patient = await diagnose(service)
        assert "sessions.long-running" not in ids(patient)
        findings = await diagnose(service, thresholds=EAGER)
        (slow,) = [f for f in findings if f.id == "sessions.long-running"]
        assert slow.object.startswith(f"pid {sleeper.get_server_pid()} ")
        assert f"pg_cancel_backend({sleeper.get_server_pid()})" in slow.fix
        await admin.execute("SELECT pg_cancel_backend($1)", sleeper.get_server_pid())
        with pytest.raises(asyncpg.QueryCanceledError):
            await task
    finally:
        await sleeper.close()


async def test_superuser_service_and_settings_without_timeouts(service: Database) -> None:
    # proves: O1
    findings = await diagnose(service)
    if await _is_superuser(service):
        (su,) = [f for f in findings if f.id == "role.superuser"]
        assert su.severity == "error"
    assert {"settings.statement_timeout", "settings.idle_in_transaction_session_timeout"} <= ids(
        findings
    )


async def test_statement_timeout_setting_silences_its_finding(pgstack_empty_url: URL) -> None:
    # proves: O1
    settings = settings_for(pgstack_empty_url).model_copy(
        update={"database_statement_timeout_ms": 5000}
    )
    async with Database(settings) as db:
        findings = await diagnose(db)
    assert "settings.statement_timeout" not in ids(findings)
    assert "settings.idle_in_transaction_session_timeout" in ids(findings)


@pytest.fixture
async def owner_role(admin: asyncpg.Connection, pgstack_empty_url: URL) -> AsyncIterator[URL]:
    """A login role that owns a table in the test database; dropped afterwards."""
    name = f"pgstack_owner_{uuid.uuid4().hex[:8]}"
    await admin.execute(
        f"CREATE ROLE {name} LOGIN PASSWORD 'owner-secret';"
        f"CREATE TABLE notes (id int PRIMARY KEY); ALTER TABLE notes OWNER TO {name};"
        f"ALTER ROLE {name} SET idle_in_transaction_session_timeout = '60s'"
    )
    try:
        yield pgstack_empty_url.set(username=name, password="owner-secret")
    finally:
        await admin.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


async def test_service_connected_as_owner(owner_role: URL) -> None:
    # proves: O1
    async with Database(settings_for(owner_role)) as db:
        findings = await diagnose(db)
    (owner,) = [f for f in findings if f.id == "role.owner"]
    assert "owns 1 table" in owner.evidence
    assert "role.superuser" not in ids(findings)
    # The role's own setting counts: no finding for what ALTER ROLE fixed.
    assert "settings.idle_in_transaction_session_timeout" not in ids(findings)
    # A role that may not read other sessions is told to get pg_monitor, not told "healthy".
    assert "sessions.skipped" in ids(findings)


async def test_inactive_replication_slot(service: Database, admin: asyncpg.Connection) -> None:
    # proves: O1
    if not await _is_superuser(service):
        pytest.skip("creating a replication slot needs a superuser on the test server")
    slot = f"pgstack_doctor_{uuid.uuid4().hex[:8]}"
    await admin.execute("SELECT pg_create_physical_replication_slot($1, true)", slot)
    try:
        findings = await diagnose(service)
        (found,) = [f for f in findings if f.id == "replication.inactive-slot" and slot in f.object]
        assert f"pg_drop_replication_slot('{slot}')" in found.fix
    finally:
        await admin.execute("SELECT pg_drop_replication_slot($1)", slot)
    findings = await diagnose(service)
    assert not [f for f in findings if slot in f.object]


async def test_without_pg_stat_statements_the_doctor_says_how_to_load_it(
    service: Database, admin: asyncpg.Connection
) -> None:
    # proves: O1
    if "pg_stat_statements" in await admin.fetchval("SHOW shared_preload_libraries"):
        pytest.skip("this server loads pg_stat_statements (the embedded test below covers it)")
    findings = await diagnose(service)
    (missing,) = [f for f in findings if f.id == "statements.unavailable"]
    assert "shared_preload_libraries" in missing.fix
    assert "statements.slow" not in ids(findings)


def test_slow_statements_from_pg_stat_statements(tmp_path: Path) -> None:
    # proves: O1
    server = EmbeddedPostgres(tmp_path / "pgdata", durable=False)
    url = server.start()
    try:

        async def preload() -> None:
            conn = await asyncpg.connect(asyncpg_dsn(url))
            try:
                await conn.execute(
                    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
                )
            finally:
                await conn.close()

        asyncio.run(preload())
        server.stop()
        url = server.start()  # the library loads at start

        async def run() -> None:
            conn = await asyncpg.connect(asyncpg_dsn(url))
            try:
                await conn.execute("CREATE EXTENSION pg_stat_statements")
                for _ in range(3):
                    await conn.execute("SELECT pg_sleep(0.03)")
            finally:
                await conn.close()
            async with Database(settings_for(url)) as db:
                strict = await diagnose(db)
                lenient = await diagnose(
                    db, thresholds=Thresholds(slow_statement_ms=20, slow_statement_calls=3)
                )
                top = await slowest_statements(db)
            assert "statements.unavailable" not in ids(strict)
            assert "statements.slow" not in ids(strict)  # 3 calls are below the default 100
            (slow,) = [f for f in lenient if f.id == "statements.slow"]
            assert "pg_sleep" in slow.evidence and "3 calls" in slow.evidence
            assert top is not None and any("pg_sleep" in s["query"] for s in top)

        asyncio.run(run())
    finally:
        server.stop()


async def _is_superuser(db: Database) -> bool:
    async with db.engine.connect() as conn:
        return bool(
            (
                await conn.exec_driver_sql(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                )
            ).scalar()
        )


def test_cli_doctor_json_table_exit_code_and_ignore(
    pgstack_empty_url: URL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # proves: O1
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")) and name != "PGSTACK_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    env = {"DATABASE_URL": pgstack_empty_url.render_as_string(hide_password=False)}
    result = runner.invoke(app, ["db", "doctor", "--json", "--workers", "50"], env=env)
    body = json.loads(result.output)
    assert body["worst"] == "error" and result.exit_code == 2
    assert "connections.budget" in {f["id"] for f in body["findings"]}
    assert all(
        set(f) == {"id", "severity", "object", "evidence", "why", "fix"} for f in body["findings"]
    )

    quiet = ["--ignore", "settings", "--ignore", "role", "--ignore", "statements.unavailable"]
    result = runner.invoke(app, ["db", "doctor", *quiet], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["db", "doctor", "--ignore", "role"], env=env)
    assert result.exit_code == 1, result.output
    assert "database doctor:" in result.output and "warn" in result.output
    result = runner.invoke(app, ["db", "doctor", "--json", "--ignore", "role"], env=env)
    assert "settings.statement_timeout" in {f["id"] for f in json.loads(result.output)["findings"]}
