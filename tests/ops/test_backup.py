"""Backups: a seeded database dumps, restores into a new one with equal rows, and checks itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.db import backup
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.errors import BackupError, ConflictError


async def seed(url: URL, rows: int = 3000) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, note text, total numeric);"
            "CREATE TABLE lines (order_id bigint REFERENCES orders, sku text);"
            f"INSERT INTO orders (note, total) SELECT 'n' || g || E'\\u00e9\\t', g * 1.5"
            f" FROM generate_series(1, {rows}) g;"
            "INSERT INTO lines SELECT id, 'sku-' || id FROM orders WHERE id % 3 = 0"
        )
    finally:
        await conn.close()


async def counts(url: URL) -> dict[str, int]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await backup.row_counts(conn)
    finally:
        await conn.close()


@pytest.fixture
async def restored_name(pgstack_migrated_url: URL) -> AsyncIterator[str]:
    name = f"pgstack_restored_{uuid.uuid4().hex[:10]}"
    yield name
    await backup.drop_database(pgstack_migrated_url, name)


async def test_backup_restores_into_a_new_database_with_equal_rows(
    pgstack_migrated_url: URL, tmp_path: Path, restored_name: str
) -> None:
    # proves: O2
    url = pgstack_migrated_url
    await seed(url)
    seen: list[tuple[int, int]] = []
    result = await backup.backup(
        url, tmp_path / "backups", progress=lambda d, t: seen.append((d, t))
    )
    assert re.fullmatch(rf"{url.database}-\d{{8}}T\d{{6}}Z\.dump", result.path.name)
    assert result.path.parent == tmp_path / "backups"
    # The checksum file is in sha256sum's format and matches the file.
    digest = hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert result.checksum_path.read_text() == f"{digest}  {result.path.name}\n"
    assert seen and seen[-1] == (len(result.row_counts), len(result.row_counts))
    assert result.row_counts["public.orders"] == 3000 and result.row_counts["public.lines"] == 1000

    target = url.set(database=restored_name)
    await backup.restore(result.path, target)
    assert await counts(target) == await counts(url) == result.row_counts
    conn = await asyncpg.connect(asyncpg_dsn(target))
    try:
        # Sequences come back too: the next order does not collide.
        assert await conn.fetchval("INSERT INTO orders (note) VALUES ('x') RETURNING id") == 3001
        assert await conn.fetchval("SELECT note FROM orders WHERE id = 7") == "n7\u00e9\t"
    finally:
        await conn.close()

    # An existing database is refused, unless told to overwrite it.
    with pytest.raises(ConflictError, match="--overwrite"):
        await backup.restore(result.path, target)
    await backup.restore(result.path, target, overwrite=True)
    assert (await counts(target))["public.orders"] == 3000


async def test_a_damaged_or_unsummed_dump_is_refused(
    pgstack_migrated_url: URL, tmp_path: Path, restored_name: str
) -> None:
    # proves: O2
    result = await backup.backup(pgstack_migrated_url, tmp_path / "one.dump")
    with pytest.raises(BackupError, match="exists already"):
        await backup.backup(pgstack_migrated_url, tmp_path / "one.dump")
    data = bytearray(result.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    result.path.write_bytes(bytes(data))
    target = pgstack_migrated_url.set(database=restored_name)
    with pytest.raises(BackupError, match="does not match its checksum"):
        await backup.restore(result.path, target)
    result.checksum_path.unlink()
    with pytest.raises(BackupError, match=r"one\.dump\.sha256 is missing"):
        await backup.restore(result.path, target)
    assert await _exists(pgstack_migrated_url, restored_name) is False


async def _exists(url: URL, name: str) -> bool:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return bool(
            await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
        )
    finally:
        await conn.close()


async def test_verify_counts_match_the_dump_even_under_writes(
    pgstack_migrated_url: URL, tmp_path: Path
) -> None:
    # proves: O2
    url = pgstack_migrated_url
    await seed(url)
    writer = await asyncpg.connect(asyncpg_dsn(url))
    stop = asyncio.Event()

    async def keep_writing() -> int:
        written = 0
        while not stop.is_set():
            await writer.execute("INSERT INTO orders (note) VALUES ('live')")
            written += 1
            await asyncio.sleep(0)
        return written

    task = asyncio.create_task(keep_writing())
    try:
        result = await backup.backup(url, tmp_path)
        report = await backup.verify(result.path, url, expected=result.row_counts)
    finally:
        stop.set()
        written = await task
        await writer.close()
    assert report.ok, report.mismatches
    assert report.restored["public.orders"] == result.row_counts["public.orders"]
    assert written > 0
    # A count that differs is reported, table by table.
    wrong = backup.VerifyReport({**report.source, "public.orders": 1}, report.restored)
    assert not wrong.ok and "public.orders" in wrong.mismatches
    # The scratch database is gone.
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgstack_verify_%'"
        )
    finally:
        await conn.close()


def test_cli_backup_verify_and_restore_checks_migrations(
    pgstack_migrated_url: URL,
    tmp_path: Path,
    restored_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # proves: O2
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")) and name != "PGSTACK_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    asyncio.run(seed(pgstack_migrated_url, rows=50))
    runner = CliRunner()
    env = {"DATABASE_URL": pgstack_migrated_url.render_as_string(hide_password=False)}
    result = runner.invoke(app, ["db", "backup", str(tmp_path / "b"), "--verify"], env=env)
    assert result.exit_code == 0, result.output
    assert "verified: a scratch restore has the same row counts" in result.output
    (dump,) = (tmp_path / "b").glob("*.dump")

    result = runner.invoke(app, ["db", "restore", str(dump), "--into", restored_name], env=env)
    assert result.exit_code == 0, result.output
    assert "checksum verified" in result.output and "migrations: at head" in result.output
    result = runner.invoke(app, ["db", "restore", str(dump), "--into", restored_name], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("error: Database") and "--overwrite" in result.output


def test_embedded_server_backs_up_and_restores(tmp_path: Path) -> None:
    # proves: O2
    server = EmbeddedPostgres(tmp_path / "pgdata", durable=False)
    url = server.start()
    try:

        async def run() -> None:
            await seed(url, rows=200)
            result = await backup.backup(url, tmp_path / "dumps")
            copy = url.set(database="copy")
            await backup.restore(result.path, copy)
            assert await counts(copy) == result.row_counts == await counts(url)
            assert json.dumps(result.row_counts)  # plain ints and names

        asyncio.run(run())
    finally:
        server.stop()


async def test_tool_choice_follows_the_server_version() -> None:
    # proves: O2
    newest = await backup.find_tool("pg_dump", 15)
    assert (await backup._major(newest) or 0) >= 15
    with pytest.raises(BackupError, match="No pg_dump of PostgreSQL 99 or newer"):
        await backup.find_tool("pg_dump", 99)


async def test_restore_into_a_hostile_database_name(
    pgstack_migrated_url: URL, tmp_path: Path
) -> None:
    # proves: O2
    await seed(pgstack_migrated_url, rows=10)
    result = await backup.backup(pgstack_migrated_url, tmp_path)
    name = 'we\'ird = "db" \\ ü'
    target = pgstack_migrated_url.set(database=name)
    try:
        await backup.restore(result.path, target)
        assert (await counts(target))["public.orders"] == 10
    finally:
        await backup.drop_database(pgstack_migrated_url, name)
