"""Fixtures shared by every test folder: pgstack's plugin, test tables, keys, the sample app."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from pgstack.crypto import KeyRing, configure_encryption, generate_key
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
