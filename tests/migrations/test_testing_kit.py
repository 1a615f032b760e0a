"""pgstack.testing: a migrated database per test, cloned from a template; safe with xdist."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack import Database
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import MigrationError
from pgstack.migrations import MigrationProject, is_at_head
from pgstack.testing import templates as templates_module
from pgstack.testing.templates import TemplateDatabases, run_async


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


def run_suite(
    tmp_path: Path, tests: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `tests` as a test file of its own, with pgstack's plugin, in another pytest."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_kit.py").write_text(textwrap.dedent(tests))
    # A loop per test (pytest-asyncio's default), unlike this suite's one loop per session:
    # each test's engine is made, used and disposed in that test's own loop.
    (suite / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nasyncio_mode = "auto"\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
        'asyncio_default_test_loop_scope = "function"\n'
        'filterwarnings = ["error::sqlalchemy.exc.SAWarning"]\n'
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # The same embedded data folder as this run: the tests join the running server.
    data_dir = os.environ.get("PGSTACK_TEST_DATA_DIR", ".pgstack/test-pgdata")
    environment["PGSTACK_TEST_DATA_DIR"] = str(Path(data_dir).resolve())
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=suite,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
def test_xdist_workers_share_the_server_not_the_databases(tmp_path: Path) -> None:
    # proves: D6, D3
    out = tmp_path / "out"
    out.mkdir()
    result = run_suite(tmp_path, XDIST_TESTS, "-n", "2", "-p", "xdist", PGSTACK_XDIST_OUT=str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
    records = {p.stem: p.read_text() for p in out.iterdir()}
    assert len(records) == 4  # four databases, one per test
    assert set(records.values()) == {"gw0", "gw1"}
    for name, worker in records.items():
        assert name.startswith(f"pgstack_t_{worker}_")


LEAK_TESTS = """
pytest_plugins = ["pgstack.testing.plugin"]

HELD = []  # what a leaky application does: keeps a connection it never gives back


async def test_gives_its_connection_back(pgstack_db):
    async with pgstack_db.engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")


async def test_keeps_a_connection(pgstack_db):
    conn = await pgstack_db.engine.connect()
    await conn.exec_driver_sql("SELECT 1")
    HELD.append(conn)
"""


@pytest.mark.slow
def test_a_test_that_leaks_a_connection_fails_the_run(tmp_path: Path) -> None:
    # proves: D3
    result = run_suite(tmp_path, LEAK_TESTS)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "2 passed, 1 error" in result.stdout, output  # the error: the leak, at teardown
    assert "ERROR at teardown of test_keeps_a_connection" in result.stdout, output
    assert "1 connection(s) still checked out at the end of the test" in result.stdout, output


def test_a_template_whose_upgrade_fails_is_dropped_not_kept(
    pgstack_server_url: URL, sample_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: D6
    (sample_copy / "migrations" / "versions" / "sampleapp_0002_broken.py").write_text(
        'revision = "sampleapp_0002"\ndown_revision = "sampleapp_0001"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        "    from alembic import op\n\n"
        '    op.execute("SELECT no_such_function()")\n'
    )
    name = f"pgstack_tpl_broken_{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(templates_module, "unique_name", lambda prefix: name)
    templates = TemplateDatabases(pgstack_server_url)
    project = MigrationProject.from_pyproject(sample_copy)
    with pytest.raises(MigrationError, match="no_such_function"):
        templates.template(project)
    assert templates.templates == {}

    async def exists() -> bool:
        conn = await asyncpg.connect(asyncpg_dsn(pgstack_server_url))
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
        finally:
            await conn.close()

    assert not run_async(exists)
