"""Multi-host connection settings (C9): libpq's host lists, and a fenced connection dropped.

The failover between two real servers is in test_promotion.py; the Patroni cluster in
test_patroni.py (marker `ha`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack.config import Settings, hosts_text, libpq_url, render_url, to_asyncpg_url, url_hosts
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import ConfigurationError, DatabaseUnavailableError

ROWS = text("CREATE TABLE IF NOT EXISTS ha_rows (id bigint PRIMARY KEY)")
INSERT = text("INSERT INTO ha_rows (id) VALUES (:id)")


def test_a_libpq_host_list_is_read_as_libpq_and_asyncpg_read_it() -> None:
    # proves: C9
    raw = "postgresql://app:s3cr%40t@db1:5432,db2:5433,[::1]/shop?target_session_attrs=read-write"
    url = to_asyncpg_url(raw)
    assert url_hosts(url) == [("db1", 5432), ("db2", 5433), ("::1", 5432)]
    assert hosts_text(url) == "db1:5432,db2:5433,[::1]:5432"
    assert url.database == "shop"
    assert url.password == "s3cr@t"
    assert url.query["target_session_attrs"] == "read-write"
    assert "s3cr" not in render_url(url)
    # asyncpg and libpq take the last of repeated `host` parameters: the list goes back
    # into the host part for them.
    assert asyncpg_dsn(url) == (
        "postgresql://app:s3cr%40t@db1:5432,db2:5433,[::1]:5432/shop"
        "?target_session_attrs=read-write"
    )
    # SQLAlchemy's own spelling is read the same way, and round-trips through settings.
    again = to_asyncpg_url(libpq_url(url))
    assert url_hosts(again) == url_hosts(url)
    settings = Settings(database_url=raw, _env_file=None)
    assert url_hosts(settings.with_url(settings.url or url).url or url) == url_hosts(url)


def test_replica_urls_with_host_lists_and_tls_settings_of_a_host_list() -> None:
    # proves: C9, C6
    settings = Settings(
        database_url="postgresql://app@db1,db2:5433/shop?sslmode=require&target_session_attrs=primary",
        database_replica_urls=(
            "postgresql://app@db1:5432,db2:5433/shop?target_session_attrs=prefer-standby, "
            "postgresql://app@db3/shop"
        ),
        _env_file=None,
    )
    assert settings.sslmode == "require"
    replicas = settings.replica_urls
    assert [url_hosts(u) for u in replicas] == [[("db1", 5432), ("db2", 5433)], [("db3", 5432)]]
    assert replicas[0].query["target_session_attrs"] == "prefer-standby"
    assert settings.summary()["replicas"] == [render_url(u) for u in replicas]


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://app:pw-in-error@db1:notaport,db2/shop",
        "postgresql://app:pw-in-error@db1,,db2/shop",
        "postgresql://app:pw-in-error@db1:99999,db2/shop",
    ],
)
def test_a_malformed_host_list_fails_at_start_without_the_password(raw: str) -> None:
    # proves: C9
    with pytest.raises(ConfigurationError) as info:
        Settings(database_url=raw, _env_file=None)
    assert "several hosts" in info.value.message
    assert "pw-in-error" not in str(info.value)


def with_unreachable_host_first(url: URL, **query: str) -> URL:
    """`url` behind a host list whose first host refuses connections (nothing listens)."""
    hosts = [("127.0.0.1", 1), *url_hosts(url)]
    rest = {k: v for k, v in url.query.items() if k not in ("host", "port")}
    listed = tuple(f"{h}:{p}" for h, p in hosts)
    return url._replace(host=None, port=None).set(query={**rest, **query, "host": listed})


async def test_the_pool_and_the_read_lane_skip_a_host_that_does_not_answer(
    pgstack_settings: Settings,
) -> None:
    # proves: C9
    assert pgstack_settings.url is not None
    real = url_hosts(pgstack_settings.url)[0]
    url = with_unreachable_host_first(pgstack_settings.url, target_session_attrs="read-write")
    settings = pgstack_settings.with_url(url)
    assert hosts_text(settings.url or url).startswith("127.0.0.1:1,")
    async with Database(settings) as db:
        await db.run(ROWS)
        async with db.transaction() as session:  # the pool
            await session.execute(INSERT, {"id": 1})
        await db.run(INSERT, {"id": 2})  # the read lane
        assert db.read_lane is not None
        assert await db.run(text("SELECT count(*) FROM ha_rows")) == [(2,)]
        report = await db.health_check()
        primary = report.checks["postgres:primary"]
        # The server reached is the real one, never the host that refused.
        assert primary.observed_value is not None
        assert primary.observed_value.startswith(real[0]) or real[0].startswith("/")
        assert not primary.observed_value.startswith("127.0.0.1:1")
        assert primary.output == "0 failover(s) seen since the service started"
        assert db.failovers == 0
        gauge = REGISTRY.get_sample_value(
            "pgstack_db_primary", {"database": "primary", "host": primary.observed_value}
        )
        assert gauge == 1.0
        await db.run(text("DROP TABLE ha_rows"))


@pytest.mark.not_through_pooler("sets a session setting on one server connection")
async def test_a_connection_whose_server_turned_read_only_is_dropped_with_a_503(
    pgstack_settings: Settings,
) -> None:
    # proves: C9
    settings = pgstack_settings.model_copy(
        update={"database_pool_size": 1, "database_max_overflow": 0}
    )
    async with Database(settings) as db:
        await db.run(ROWS)
        # The pooled connection's server stops taking writes, as a fenced old primary does
        # (PostgreSQL reports the setting to the client, as it reports in_hot_standby).
        async with db.engine.connect() as conn:
            await conn.exec_driver_sql("SET default_transaction_read_only = on")
            await conn.commit()
        with pytest.raises(DatabaseUnavailableError) as info:
            async with db.transaction() as session:
                await session.execute(INSERT, {"id": 10})
        assert "read-only replica" in info.value.message
        assert "retry" in info.value.message
        # Dropped, not reused: the next write gets a fresh connection and succeeds.
        async with db.transaction() as session:
            await session.execute(INSERT, {"id": 10})
        assert await db.run(text("SELECT id FROM ha_rows")) == [(10,)]
        await db.run(text("DROP TABLE ha_rows"))


async def test_a_write_in_a_read_only_transaction_is_still_the_callers_error(
    pgstack_settings: Settings,
) -> None:
    # proves: C9
    async with Database(pgstack_settings) as db:
        await db.run(ROWS)
        with pytest.raises(sa_exc.DBAPIError) as info:
            async with db.transaction(readonly=True) as session:
                await session.execute(INSERT, {"id": 20})
        assert not info.value.connection_invalidated
        assert "read-only transaction" in str(info.value.orig)

        # Many at once: none is mistaken for a failover.
        async def refused(n: int) -> None:
            with pytest.raises(sa_exc.DBAPIError):
                async with db.transaction(readonly=True) as session:
                    await session.execute(INSERT, {"id": n})

        await asyncio.gather(*(refused(n) for n in range(30, 36)))
        assert db.failovers == 0
        await db.run(text("DROP TABLE ha_rows"))


async def test_a_backup_through_a_host_list_skips_the_host_that_does_not_answer(
    pgstack_settings: Settings, tmp_path: Path
) -> None:
    # proves: C9, O2
    from pgstack.db import backup

    assert pgstack_settings.url is not None
    async with Database(pgstack_settings) as db:
        await db.run(ROWS)
        await db.run(INSERT, {"id": 7})
    url = with_unreachable_host_first(pgstack_settings.url, target_session_attrs="read-write")
    try:
        # pg_dump gets the hosts as PGHOST/PGPORT lists, and the role asked for.
        result = await backup.backup(url, tmp_path / "ha.dump")
        assert result.row_counts["public.ha_rows"] == 1
    finally:
        async with Database(pgstack_settings) as db:
            await db.run(text("DROP TABLE ha_rows"))
