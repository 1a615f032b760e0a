"""Backups against what goes wrong: bad dumps, TLS required, unusable paths, production.

Every test runs the real pg_dump and pg_restore against the test server, and checks that the
data already stored survives what failed (its tables counted before and after).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.config import Settings, url_hosts
from pgstack.db import backup
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import BackupError

SERVER_TABLES = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
AND n.nspname !~ '^pg_'
"""


async def seed(url: URL, rows: int = 20000) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, note text);"
            f"INSERT INTO orders (note) SELECT md5(g::text) FROM generate_series(1, {rows}) g"
        )
    finally:
        await conn.close()


async def tables(url: URL) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval(SERVER_TABLES))
    finally:
        await conn.close()


async def orders(url: URL) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM orders"))
    finally:
        await conn.close()


async def databases(url: URL, like: str) -> set[str]:
    conn = await asyncpg.connect(asyncpg_dsn(url.set(database="postgres")))
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", like)
        return {r["datname"] for r in rows}
    finally:
        await conn.close()


async def no_scratch_left(url: URL, before: set[str]) -> None:
    """No restore scratch database of this test remains (another test's may come and go)."""
    deadline = time.monotonic() + 10
    while (left := await databases(url, "pgstack_restore_%") - before) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.2)
    assert not left, left


def summed(path: Path) -> Path:
    """Write `path`'s checksum beside it as `sha256sum` does."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    backup.checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return path


async def server_major(url: URL) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()


@pytest.fixture
async def new_name(pgstack_migrated_url: URL) -> AsyncIterator[str]:
    name = f"fixbk_{uuid.uuid4().hex[:10]}"
    yield name
    await backup.drop_database(pgstack_migrated_url, name)


@pytest.fixture
async def truncated(pgstack_migrated_url: URL, tmp_path: Path) -> Path:
    """A real dump cut short in its data: its table of contents still reads."""
    await seed(pgstack_migrated_url)
    result = await backup.backup(pgstack_migrated_url, tmp_path / "whole.dump")
    data = result.path.read_bytes()
    cut = tmp_path / "cut.dump"
    cut.write_bytes(data[: len(data) * 3 // 4])
    pg_restore = await backup.find_tool("pg_restore", await server_major(pgstack_migrated_url))
    assert await backup._count_tables_in(cut, pg_restore) > 0  # pg_restore --list passes
    return summed(cut)


async def test_an_unreadable_dump_changes_nothing(
    pgstack_migrated_url: URL, tmp_path: Path, new_name: str
) -> None:
    url = pgstack_migrated_url
    await seed(url, rows=100)
    before = await tables(url)
    junk = tmp_path / "junk.dump"
    junk.write_bytes(os.urandom(20000))
    summed(junk)
    with pytest.raises(BackupError, match=r"not a dump pg_restore can read.*nothing was changed"):
        await backup.restore(junk, url, overwrite=True)
    assert await tables(url) == before and await orders(url) == 100
    # Into a new name: no empty database is left behind, so a retry meets the same error.
    for _ in range(2):
        with pytest.raises(BackupError, match="not a dump pg_restore can read"):
            await backup.restore(junk, url.set(database=new_name))
    assert not await databases(url, new_name)


async def test_a_dump_failing_midway_leaves_the_old_database_whole(
    pgstack_migrated_url: URL, truncated: Path
) -> None:
    url = pgstack_migrated_url
    before = await tables(url)
    scratch = await databases(url, "pgstack_restore_%")
    with pytest.raises(BackupError, match="pg_restore failed"):
        await backup.restore(truncated, url, overwrite=True)
    assert await tables(url) == before and await orders(url) == 20000
    await no_scratch_left(url, scratch)


async def test_a_dump_failing_midway_leaves_no_new_database(
    pgstack_migrated_url: URL, truncated: Path, new_name: str
) -> None:
    url = pgstack_migrated_url
    before = await tables(url)
    with pytest.raises(BackupError, match="pg_restore failed"):
        await backup.restore(truncated, url.set(database=new_name))
    assert not await databases(url, new_name)
    assert await tables(url) == before


async def test_overwrite_replaces_the_database_once_restored(
    pgstack_migrated_url: URL, tmp_path: Path, new_name: str
) -> None:
    url = pgstack_migrated_url
    await seed(url, rows=50)
    result = await backup.backup(url, tmp_path / "one.dump")
    target = url.set(database=new_name)
    conn = await asyncpg.connect(asyncpg_dsn(url.set(database="postgres")))
    try:
        await conn.execute(f'CREATE DATABASE "{new_name}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(asyncpg_dsn(target))
    try:
        await conn.execute("CREATE TABLE stale (id int)")
    finally:
        await conn.close()
    scratch = await databases(url, "pgstack_restore_%")
    await backup.restore(result.path, target, overwrite=True)
    assert await tables(target) == await tables(url) and await orders(target) == 50
    await no_scratch_left(url, scratch)


# -- TLS ---------------------------------------------------------------------------------------


def _raw(url: URL, password: str | None = None, **query: str) -> str:
    if password is not None:
        url = url.set(password=password)
    url = url.update_query_dict(query) if query else url
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _tcp_only(url: URL) -> None:
    # libpq and asyncpg never use TLS over a Unix socket, whatever sslmode says: the
    # embedded server is reached that way, the PostgreSQL service run goes over TCP.
    if url_hosts(url)[0][0].startswith("/"):
        pytest.skip("TLS does not apply over a Unix socket; the run over TCP covers it")


async def test_sslmode_require_is_kept_by_backup_restore_and_the_tools(
    pgstack_migrated_url: URL, tmp_path: Path, new_name: str
) -> None:
    # The test server has no TLS: asking for it must fail, not fall back to plain text.
    url = pgstack_migrated_url
    _tcp_only(url)
    before = await tables(url)
    good = await backup.backup(url, tmp_path / "good.dump")
    settings = Settings().with_url(_raw(url, sslmode="require"))
    with pytest.raises(BackupError, match="TLS"):
        await backup.backup(url, tmp_path / "tls.dump", settings=settings)
    assert not (tmp_path / "tls.dump").exists()
    with pytest.raises(BackupError, match="TLS"):
        await backup.restore(good.path, url.set(database=new_name), settings=settings)
    assert not await databases(url, new_name)
    with pytest.raises(BackupError, match="TLS"):
        await backup.restore(good.path, url, overwrite=True, settings=settings)
    assert await tables(url) == before
    # pg_dump itself gets the mode: it refuses the server rather than dump without TLS.
    tls = backup._tls(settings)
    assert tls.env["PGSSLMODE"] == "require"
    pg_dump = await backup.find_tool("pg_dump", await server_major(url))
    with pytest.raises(BackupError, match=r"pg_dump failed.*SSL"):
        await backup._run(pg_dump, ["--file", str(tmp_path / "raw.dump")], url, tls, 0, None)


def test_tls_files_reach_the_tools_as_libpq_settings() -> None:
    system = ssl.get_default_verify_paths().cafile
    if not system:
        pytest.skip("no system CA file to load")
    ca = Path(system)
    settings = Settings(database_url=f"postgresql://u@h/d?sslrootcert={ca}")
    tls = backup._tls(settings)
    # pgstack's context checks the host name then: so does libpq with verify-full.
    assert tls.env == {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca)}
    settings = Settings(database_url=f"postgresql://u@h/d?sslmode=verify-ca&sslrootcert={ca}")
    assert backup._tls(settings).env == {"PGSSLMODE": "verify-ca", "PGSSLROOTCERT": str(ca)}


# -- the commands ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")) and name != "PGSTACK_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def _one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "unexpected" not in lines[0] and "Traceback" not in output, output
    return lines[0]


@pytest.mark.usefixtures("clean_env")
def test_cli_with_sslmode_require_fails_in_one_line_without_the_password(
    pgstack_migrated_url: URL, tmp_path: Path, new_name: str
) -> None:
    url = pgstack_migrated_url
    _tcp_only(url)
    before = asyncio.run(tables(url))
    runner = CliRunner()
    plain = {"DATABASE_URL": _raw(url)}
    assert runner.invoke(app, ["db", "backup", "good.dump"], env=plain).exit_code == 0
    secret = "s3cret-pw"
    for env in (
        {"DATABASE_URL": _raw(url, secret, sslmode="require")},
        {"DATABASE_URL": _raw(url, secret), "DATABASE_SSLMODE": "require"},
    ):
        result = runner.invoke(app, ["db", "backup", "tls.dump"], env=env)
        assert result.exit_code == 1
        line = _one_error_line(result.output)
        assert "TLS" in line and secret not in result.output
        for into in (new_name, url.database):
            result = runner.invoke(
                app, ["db", "restore", "good.dump", "--into", str(into), "--overwrite"], env=env
            )
            assert result.exit_code == 1
            assert "TLS" in _one_error_line(result.output) and secret not in result.output
    assert not (tmp_path / "tls.dump").exists()
    assert not asyncio.run(databases(url, new_name))
    assert asyncio.run(tables(url)) == before


@pytest.mark.usefixtures("clean_env")
def test_cli_unusable_backup_paths_say_what_to_do(
    pgstack_migrated_url: URL, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": _raw(pgstack_migrated_url)}
    (tmp_path / "afile").write_text("")
    cases = [
        (["/dev/null"], {}, "exists already"),
        ([str(tmp_path / "afile" / "x.dump")], {}, "afile is a file, not a folder"),
        ([], {"PGSTACK_DATA_DIR": "/proc/nope"}, "Cannot create the folder /proc/nope/backups"),
    ]
    for args, extra, message in cases:
        result = runner.invoke(app, ["db", "backup", *args], env={**env, **extra})
        assert result.exit_code == 1, result.output
        assert message in _one_error_line(result.output)


@pytest.mark.usefixtures("clean_env")
def test_cli_restore_into_a_too_long_name(pgstack_migrated_url: URL, tmp_path: Path) -> None:
    url = pgstack_migrated_url
    asyncio.run(seed(url, rows=10))
    result = asyncio.run(backup.backup(url, tmp_path / "ok.dump"))
    runner = CliRunner()
    long = "fixbk_" + "a" * 64
    out = runner.invoke(
        app, ["db", "restore", str(result.path), "--into", long], env={"DATABASE_URL": _raw(url)}
    )
    assert out.exit_code == 1
    assert "at most 63 bytes" in _one_error_line(out.output)
    assert not asyncio.run(databases(url, "fixbk_aaaa%"))


@pytest.mark.usefixtures("clean_env")
def test_cli_overwriting_the_service_database_in_production_asks(
    pgstack_migrated_url: URL, tmp_path: Path
) -> None:
    url = pgstack_migrated_url
    asyncio.run(seed(url, rows=10))
    dump = asyncio.run(backup.backup(url, tmp_path / "ok.dump")).path
    before = asyncio.run(tables(url))

    async def add_table() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await conn.execute("CREATE TABLE written_since (id int)")
        finally:
            await conn.close()

    asyncio.run(add_table())
    runner = CliRunner()
    env = {"DATABASE_URL": _raw(url), "PGSTACK_ENV": "production"}
    args = ["db", "restore", str(dump), "--into", str(url.database), "--overwrite"]
    result = runner.invoke(app, args, env=env, input="n\n")
    assert result.exit_code == 1 and "the database the service uses" in result.output
    assert asyncio.run(tables(url)) == before + 1  # nothing was replaced
    result = runner.invoke(app, [*args, "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert asyncio.run(tables(url)) == before and asyncio.run(orders(url)) == 10
    # Another database, or outside production, is not asked about.
    env["PGSTACK_ENV"] = "development"
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output


def test_cli_shows_no_library_warnings(pgstack_migrated_url: URL, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "XDG_RUNTIME_DIR" and not k.startswith(("DATABASE_", "PGSTACK_"))
    }
    env["DATABASE_URL"] = _raw(pgstack_migrated_url)
    cli = str(Path(sys.executable).parent / "pgstack")
    backed = subprocess.run(
        [cli, "db", "backup", "w.dump"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert backed.returncode == 0 and not backed.stderr, backed.stderr
    restored = subprocess.run(
        [cli, "db", "restore", "w.dump", "--into", str(pgstack_migrated_url.database)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 1 and "exists" in restored.stderr
    assert "Warning" not in restored.stderr, restored.stderr
