"""The embedded PostgreSQL: starts in a data folder, on a socket, is reused and stops cleanly."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.errors import EmbeddedServerError
from pgstack.testing.plugin import asyncpg_dsn


async def test_start_stop_and_reuse_keeps_the_data(tmp_path: Path) -> None:
    # proves: C4
    data_dir = tmp_path / "pgdata"
    server = EmbeddedPostgres(data_dir)
    with pytest.raises(EmbeddedServerError, match="start"):
        _ = server.url
    url = server.start()
    try:
        assert server.is_running
        assert server.reused is False
        assert str(data_dir.resolve()) in repr(server)
        # A Unix socket, never TCP port 5432.
        assert url.host is None
        assert url.port is None
        assert Path(server.socket_dir, ".s.PGSQL.5432").is_socket()

        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await conn.execute("CREATE TABLE kept (note text)")
            await conn.execute("INSERT INTO kept VALUES ('survives a restart')")
        finally:
            await conn.close()
    finally:
        server.stop()
    assert not server.is_running
    assert not (data_dir / "postmaster.pid").exists()  # a clean shutdown, not just forgotten
    server.stop()  # stopping twice is harmless

    again = EmbeddedPostgres(data_dir)
    url = again.start()
    try:
        assert again.reused is True
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            assert await conn.fetchval("SELECT note FROM kept") == "survives a restart"
        finally:
            await conn.close()
    finally:
        again.stop()
    assert not (data_dir / "postmaster.pid").exists()


async def test_database_without_configuration_runs_its_own_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # proves: C4
    for name in ("DATABASE_URL", "DATABASE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGSTACK_DATA_DIR", str(tmp_path / "state"))
    settings = Settings(_env_file=None)
    assert not settings.is_configured
    data_dir = (tmp_path / "state" / "pgdata").resolve()
    caplog.set_level(logging.INFO, logger="pgstack")

    db = Database(settings)
    assert "embedded" in repr(db)
    await db.connect()
    try:
        server = db.embedded
        assert server is not None
        assert server.is_running
        assert server.reused is False
        assert server.data_dir == data_dir
        # It says where it is.
        assert any(str(data_dir) in r.getMessage() for r in caplog.records)
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE notes (body text)"))
            await session.execute(text("INSERT INTO notes VALUES ('first run')"))
    finally:
        await db.disconnect()
    assert db.embedded is None
    assert not db.is_connected
    assert not (data_dir / "postmaster.pid").exists()

    # The next run reuses the folder and finds its data.
    async with Database(settings) as db:
        assert db.embedded is not None and db.embedded.reused is True
        async with db.session() as session:
            assert await session.scalar(text("SELECT body FROM notes")) == "first run"
    assert not (data_dir / "postmaster.pid").exists()
