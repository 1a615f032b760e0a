"""Fixtures shared by every test folder: pgstack's plugin, test tables, keys, the sample app."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.migrations import MigrationProject
from pgstack.testing.templates import TemplateDatabases

pytest_plugins = ["pgstack.testing.plugin"]

SAMPLE = Path(__file__).resolve().parent / "fixtures" / "sampleapp"
CreateTables = Callable[[MetaData], Awaitable[None]]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip what cannot work through a transaction pooler, when the run goes through one."""
    marker = item.get_closest_marker("not_through_pooler")
    if marker is not None and os.environ.get("PGSTACK_TEST_POOLER_URL"):
        pytest.skip(f"not through PgBouncer in transaction mode: {marker.args[0]}")


@pytest.fixture
async def create_tables(pgstack_db: Database) -> AsyncIterator[CreateTables]:
    """Create a test base's tables now; they are dropped when the test ends."""
    created: list[MetaData] = []

    async def create(metadata: MetaData) -> None:
        async with pgstack_db.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
        created.append(metadata)

    yield create
    async with pgstack_db.engine.begin() as conn:
        for metadata in reversed(created):
            await conn.run_sync(metadata.drop_all)


@pytest.fixture
def encryption_ring() -> Iterator[KeyRing]:
    """A fresh process-wide key ring for the test (two keys, k2 newest), reset afterwards."""
    ring = KeyRing.parse(f"{generate_key('k2')},{generate_key('k1')}")
    configure_encryption(ring)
    yield ring
    configure_encryption(None)


@pytest.fixture(scope="session")
def sample_project() -> MigrationProject:
    """The sample application in tests/fixtures/sampleapp: its own models and migrations."""
    return MigrationProject.from_pyproject(SAMPLE)


@pytest.fixture
def sample_url(
    pgstack_templates: TemplateDatabases, sample_project: MigrationProject
) -> Iterator[URL]:
    """A database of this test's own at the head of pgstack's and the sample app's migrations."""
    url = pgstack_templates.clone(sample_project)
    yield url
    pgstack_templates.drop(url)


@pytest.fixture
async def outside(pgstack_migrated_url: URL) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own to the migrated database (it sees only what is committed),
    with an application's own table, `signups`, for writes beside pgstack's in one
    transaction (a sign-up)."""
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    await conn.execute("CREATE TABLE signups (email text PRIMARY KEY, tenant_id uuid)")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def cli_env(
    pgstack_migrated_url: URL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """The environment of a `pgstack` command on the migrated database: none of the shell's
    DATABASE_ and PGSTACK_ variables, the working directory a scratch folder (no stray .env
    or pyproject.toml). A test module extends it with a fixture of the same name."""
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")) and name != "PGSTACK_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return {"DATABASE_URL": pgstack_migrated_url.render_as_string(hide_password=False)}
