"""Fixtures: a PostgreSQL server (env or embedded), a scratch database, settings, a Database,
and a migrated database per test cloned from a template.

`PGSTACK_TEST_DATABASE_URL` names a server to use (its role must be allowed to create
databases); without it, one embedded server with durability off serves the whole run (and
is shared, with a count of its users, by pytest-xdist workers).

The migrated fixtures build from `pgstack_migration_project`: the `[tool.pgstack]` of the
test run's pyproject.toml, else pgstack's own migrations. Override that fixture to choose.

`pgstack_app_role_database` and `pgstack_app_role_db` give the production shape instead: a
database made by `db init` (an owner role and an application role), migrated by the owner,
with the service connected as the application role, which row-level security holds.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from pgstack.config import Settings, to_asyncpg_url
from pgstack.db.admin import asyncpg_dsn as asyncpg_dsn  # for tests that connect on their own
from pgstack.db.admin import init_database
from pgstack.db.database import Database
from pgstack.db.embedded import EmbeddedPostgres
from pgstack.db.session import Session
from pgstack.migrations.api import upgrade_async
from pgstack.migrations.project import MigrationProject
from pgstack.testing.templates import TemplateDatabases, _admin, run_async

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


def settings_for(url: URL, migration_url: URL | None = None) -> Settings:
    """Settings for a test database: a small pool, quick retries, no `.env`.

    Migrations run on the test database too, as `migration_url` when given: a
    DATABASE_MIGRATION_URL in the environment does not apply. With PGSTACK_TEST_POOLER_URL
    set, the test server's databases are reached through that PgBouncer (transaction pooling
    mode).
    """
    pooled = through_pooler(url)
    return Settings(
        database_url=pooled.render_as_string(hide_password=False),
        database_pooler="pgbouncer-transaction" if pooled is not url else "none",
        database_migration_url=(
            None if migration_url is None else migration_url.render_as_string(hide_password=False)
        ),
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


# -- the production shape: an owner role and an application role ----------------------------


@dataclass(frozen=True)
class AppRoleDatabase:
    """A database made by `db init` and migrated by its owner, as a deployment makes it.

    `owner` owns the schema and the tables and runs the migrations; `app` is the service's
    role: rows only, no DDL, owns nothing, no BYPASSRLS, so row-level security holds it.
    """

    owner: URL
    app: URL

    def settings(self) -> Settings:
        """The service's settings: the application role; migrations as the owner."""
        return settings_for(self.app, migration_url=self.owner)


@pytest.fixture(scope="session")
def pgstack_app_role_database(
    pgstack_server_url: URL, pgstack_migration_project: MigrationProject
) -> Iterator[AppRoleDatabase]:
    """A database with `db init`'s two roles, migrated to head by the owner; one per run.

    Its tests share it (make the tenants and rows each test needs); it and both roles are
    dropped at the end of the run.
    """
    tag = uuid.uuid4().hex[:10]
    name = f"pgstack_roles_{tag}"
    made = AppRoleDatabase(
        owner=pgstack_server_url.set(
            username=f"pgstack_owner_{tag}", password=secrets.token_urlsafe(18), database=name
        ),
        app=pgstack_server_url.set(
            username=f"pgstack_app_{tag}", password=secrets.token_urlsafe(18), database=name
        ),
    )
    admin = pgstack_server_url.render_as_string(hide_password=False)
    try:
        run_async(lambda: init_database(admin, made.app, made.owner))
        owner = settings_for(made.owner)
        run_async(lambda: upgrade_async(owner, project=pgstack_migration_project))
        yield made
    finally:
        run_async(
            lambda: _admin(
                pgstack_server_url,
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{made.app.username}"',
                f'DROP ROLE IF EXISTS "{made.owner.username}"',
            )
        )


@pytest.fixture
async def pgstack_app_role_db(
    pgstack_app_role_database: AppRoleDatabase,
) -> AsyncIterator[Database]:
    """A connected Database as the application role on `pgstack_app_role_database`."""
    async for db in _connected(pgstack_app_role_database.settings()):
        yield db


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many databases were cloned and how long a clone took."""
    templates = terminalreporter.config.stash.get(_TEMPLATES, None)
    line = templates.summary() if templates is not None else None
    if line:
        terminalreporter.write_line(line)
