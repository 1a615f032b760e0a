"""Fixtures: a PostgreSQL server (env or embedded), a scratch database, settings, a Database,
and a migrated database per test cloned from a template.

`PGSTACK_TEST_DATABASE_URL` names a server to use (its role must be allowed to create
databases); without it, one embedded server with durability off serves the whole run (and
is shared, with a count of its users, by pytest-xdist workers).

The migrated fixtures build from `pgstack_migration_project`: the `[tool.pgstack]` of the
test run's pyproject.toml, else pgstack's own migrations. Override that fixture to choose.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from pgstack.config import Settings, to_asyncpg_url
from pgstack.db.admin import asyncpg_dsn as asyncpg_dsn  # for tests that connect on their own
from pgstack.db.database import Database
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.db.session import Session
from pgstack.migrations.project import MigrationProject
from pgstack.testing.templates import TemplateDatabases

_TEMPLATES = pytest.StashKey[TemplateDatabases]()

ENV_URL = "PGSTACK_TEST_DATABASE_URL"
POOLER_ENV_URL = "PGSTACK_TEST_POOLER_URL"


@pytest.fixture(scope="session")
def pgstack_server_url() -> Iterator[URL]:
    """URL of a server the tests may create databases on."""
    raw = os.environ.get(ENV_URL)
    if raw:
        yield to_asyncpg_url(raw, ENV_URL)
        return
    data_dir = Path(os.environ.get("PGSTACK_TEST_DATA_DIR", ".pgstack/test-pgdata"))
    server = EmbeddedPostgres(data_dir, durable=False)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pgstack_database_url(pgstack_templates: TemplateDatabases) -> Iterator[URL]:
    """A fresh database for this test run, dropped at the end."""
    yield from pgstack_templates.dropped_after(pgstack_templates.empty())


def through_pooler(url: URL) -> URL:
    """`url` by way of the PgBouncer named by PGSTACK_TEST_POOLER_URL, if any.

    Only URLs of the test server (PGSTACK_TEST_DATABASE_URL) are redirected: the pooler
    forwards every database name to it. Databases are still created and dropped on the
    server directly.
    """
    pooler, server = os.environ.get(POOLER_ENV_URL), os.environ.get(ENV_URL)
    if not pooler or not server:
        return url
    direct = to_asyncpg_url(server, ENV_URL)
    if (url.host, url.port) != (direct.host, direct.port):
        return url
    via = to_asyncpg_url(pooler, POOLER_ENV_URL)
    return url.set(host=via.host, port=via.port)


def settings_for(url: URL) -> Settings:
    """Settings for a test database: a small pool, quick retries, no `.env`.

    Migrations run on the test database too: a DATABASE_MIGRATION_URL in the environment
    does not apply. With PGSTACK_TEST_POOLER_URL set, the test server's databases are reached
    through that PgBouncer (transaction pooling mode).
    """
    pooled = through_pooler(url)
    return Settings(
        database_url=pooled.render_as_string(hide_password=False),
        database_pooler="pgbouncer-transaction" if pooled is not url else "none",
        database_migration_url=None,
        database_pool_size=5,
        database_max_overflow=2,
        database_pool_timeout=5,
        database_connect_attempts=2,
        database_connect_backoff=0.05,
        environment="test",
        _env_file=None,
    )


@pytest.fixture
def pgstack_settings(pgstack_database_url: URL) -> Settings:
    """Settings pointing at the test database, with a small pool and quick retries."""
    return settings_for(pgstack_database_url)


@pytest.fixture
async def pgstack_db(pgstack_settings: Settings) -> AsyncIterator[Database]:
    """A connected Database; the test fails if it leaves a connection checked out."""
    async for db in _connected(pgstack_settings):
        yield db


async def _connected(settings: Settings) -> AsyncIterator[Database]:
    # Made inside the fixture, so the engine belongs to the event loop running the test.
    db = Database(settings)
    await db.connect()
    try:
        yield db
        leaked = db.pool_stats()["checked_out"] if db.is_connected else 0
        assert leaked == 0, f"{leaked} connection(s) still checked out at the end of the test"
    finally:
        await db.disconnect(timeout=1)


# -- migrated databases ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def pgstack_migration_project(pytestconfig: pytest.Config) -> MigrationProject:
    """The migrations the template is built from: `[tool.pgstack]` of the run's pyproject."""
    return MigrationProject.discover(pytestconfig.rootpath)


@pytest.fixture(scope="session")
def pgstack_templates(
    pgstack_server_url: URL, pytestconfig: pytest.Config
) -> Iterator[TemplateDatabases]:
    """Migrated templates (one per project, built on first use) and the clones made of them."""
    templates = TemplateDatabases(pgstack_server_url)
    pytestconfig.stash[_TEMPLATES] = templates
    try:
        yield templates
    finally:
        templates.close()


@pytest.fixture(scope="session")
def pgstack_template_url(
    pgstack_templates: TemplateDatabases, pgstack_migration_project: MigrationProject
) -> URL:
    """The template database migrated to head (never connect to it: it is cloned)."""
    return pgstack_templates.template(pgstack_migration_project)


@pytest.fixture
def pgstack_migrated_url(
    pgstack_templates: TemplateDatabases,
    pgstack_migration_project: MigrationProject,
    pgstack_template_url: URL,
) -> Iterator[URL]:
    """A database of this test's own, at the head of the migrations; dropped afterwards."""
    yield from pgstack_templates.dropped_after(pgstack_templates.clone(pgstack_migration_project))


@pytest.fixture
def pgstack_empty_url(pgstack_templates: TemplateDatabases) -> Iterator[URL]:
    """A new, empty database of this test's own (to test migrations); dropped afterwards."""
    yield from pgstack_templates.dropped_after(pgstack_templates.empty())


@pytest.fixture
def pgstack_migrated_settings(pgstack_migrated_url: URL) -> Settings:
    """Settings pointing at this test's migrated database."""
    return settings_for(pgstack_migrated_url)


@pytest.fixture
async def pgstack_migrated_db(pgstack_migrated_settings: Settings) -> AsyncIterator[Database]:
    """A connected Database on this test's migrated database, its engine made in this loop."""
    async for db in _connected(pgstack_migrated_settings):
        yield db


@pytest.fixture
async def pgstack_session(pgstack_migrated_db: Database) -> AsyncIterator[Session]:
    """A session on this test's migrated database; commit what you want to keep."""
    async with pgstack_migrated_db.session() as session:
        yield session


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many databases were cloned and how long a clone took."""
    templates = terminalreporter.config.stash.get(_TEMPLATES, None)
    line = templates.summary() if templates is not None else None
    if line:
        terminalreporter.write_line(line)
