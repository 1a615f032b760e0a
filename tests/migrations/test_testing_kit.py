"""pgstack.testing: a migrated database per test, cloned from a template; safe with xdist."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack import Database
from pgstack.db.admin import asyncpg_dsn
from pgstack.migrations import MigrationProject, is_at_head


@pytest.mark.parametrize("attempt", [1, 2, 3])
async def test_each_test_gets_a_database_of_its_own(
    pgstack_migrated_db: Database, attempt: int
) -> None:
    # proves: D6
    # Every attempt writes the same key: a database shared between tests would hold it twice.
    async with pgstack_migrated_db.transaction() as session:
        before = await session.scalar(text("SELECT count(*) FROM pgstack_meta WHERE key = 'k'"))
        await session.execute(text("INSERT INTO pgstack_meta (key, value) VALUES ('k', 'v')"))
    assert before == 0, f"attempt {attempt} saw another test's row"


def test_the_clone_is_at_head(
    pgstack_migrated_url: URL, pgstack_migration_project: MigrationProject
) -> None:
    # proves: D6
    assert pgstack_migration_project.configured is False  # pgstack's own suite: pgstack only
    assert is_at_head(pgstack_migrated_url, project=pgstack_migration_project)


async def test_the_template_refuses_connections(pgstack_template_url: URL) -> None:
    # proves: D6
    with pytest.raises(asyncpg.PostgresError, match="not currently accepting connections"):
        await asyncpg.connect(asyncpg_dsn(pgstack_template_url))


async def test_embedded_test_server_runs_without_durability(pgstack_migrated_db: Database) -> None:
    # proves: D6
    if os.environ.get("PGSTACK_TEST_DATABASE_URL"):
        pytest.skip("a server named by PGSTACK_TEST_DATABASE_URL keeps its own settings")
    async with pgstack_migrated_db.session() as session:
        for name in ("fsync", "synchronous_commit", "full_page_writes"):
            assert await session.scalar(text(f"SHOW {name}")) == "off", name


XDIST_TESTS = """
import os
from pathlib import Path

from sqlalchemy import text

pytest_plugins = ["pgstack.testing.plugin"]


def _record(name):
    out = Path(os.environ["PGSTACK_XDIST_OUT"])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
    (out / f"{name}.txt").write_text(worker)


async def _one(session):
    assert await session.scalar(text("SELECT count(*) FROM pgstack_meta WHERE key = 'k'")) == 0
    await session.execute(text("INSERT INTO pgstack_meta VALUES ('k', 'v')"))
    await session.commit()
    _record(await session.scalar(text("SELECT current_database()")))


async def test_a(pgstack_session): await _one(pgstack_session)
async def test_b(pgstack_session): await _one(pgstack_session)


async def test_c(pgstack_migrated_db):
    async with pgstack_migrated_db.session() as session:
        await _one(session)


async def test_d(pgstack_migrated_db):
    async with pgstack_migrated_db.session() as session:
        await _one(session)
"""


def test_xdist_workers_share_the_server_not_the_databases(tmp_path: Path) -> None:
    # proves: D6, D3
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_kit.py").write_text(textwrap.dedent(XDIST_TESTS))
    # A loop per test (pytest-asyncio's default), unlike this suite's one loop per session:
    # each test's engine is made, used and disposed in that test's own loop.
    (suite / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nasyncio_mode = "auto"\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
        'asyncio_default_test_loop_scope = "function"\n'
        'filterwarnings = ["error::sqlalchemy.exc.SAWarning"]\n'
    )
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PGSTACK_XDIST_OUT"] = str(out)
    # The same embedded data folder as this run: the workers join the running server.
    data_dir = os.environ.get("PGSTACK_TEST_DATA_DIR", ".pgstack/test-pgdata")
    env["PGSTACK_TEST_DATA_DIR"] = str(Path(data_dir).resolve())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "xdist", "-p", "no:cacheprovider"],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
    records = {p.stem: p.read_text() for p in out.iterdir()}
    assert len(records) == 4  # four databases, one per test
    assert set(records.values()) == {"gw0", "gw1"}
    for name, worker in records.items():
        assert name.startswith(f"pgstack_t_{worker}_")
