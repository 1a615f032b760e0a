"""Fixtures for audit tests: the production shape (owner and application roles from `db init`,
pgstack's migrations run by the owner) with an audited table of the application's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import Depends
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.audit import AuditLog, audit_sql
from pgstack.cli import app as cli_app
from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.identity import IdentityConfig
from pgstack.testing.templates import _admin, run_async
from pgstack.web import create_app
from pgstack.web.audit import audit_router
from pgstack.web.identity import identity_router, require_roles

ACME = uuid.UUID("0190f3a0-0000-7000-8000-0000000000a1")
GLOBEX = uuid.UUID("0190f3a0-0000-7000-8000-0000000000b2")

# An application table: tenant-scoped, with a secret column, audited by triggers.
NOTES = """
CREATE TABLE audit_notes (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    title text NOT NULL,
    api_secret text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    version integer NOT NULL DEFAULT 1
)
"""

STRONG = "violet Harbour 42 lanterns drift"
CONFIG = IdentityConfig(max_failed_logins=3, lockout=timedelta(minutes=5))

runner = CliRunner()


def cli(*args: str, env: dict[str, str | None]) -> Any:
    """`pgstack ARGS` in this process, on a thread of its own (it runs its own loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(runner.invoke, cli_app, list(args), env=env).result()


@dataclass(frozen=True)
class Roles:
    """The URLs of the superuser, the owner and the application role of one database."""

    admin: URL
    owner: URL
    app: URL

    @property
    def env(self) -> dict[str, str | None]:
        return {
            "DATABASE_URL": asyncpg_dsn(self.app),
            "DATABASE_MIGRATION_URL": asyncpg_dsn(self.owner),
            "PGSTACK_ENV": "development",
        }

    def settings(self, url: URL | None = None) -> Settings:
        values: dict[str, Any] = {
            "database_url": asyncpg_dsn(url or self.app),
            "database_migration_url": asyncpg_dsn(self.owner),
            "database_pool_size": 5,
            "database_max_overflow": 20,
            "environment": "test",
        }
        return Settings(**values, _env_file=None)  # type: ignore[call-arg]

    async def conn(self, who: str) -> asyncpg.Connection:
        url = {
            "admin": self.admin.set(database=self.app.database),
            "owner": self.owner,
            "app": self.app,
        }[who]
        return await asyncpg.connect(asyncpg_dsn(url))

    async def old_month(self, count: int = 1, action: str = "old.tick") -> None:
        """`count` global entries on the first days of May 2020, a partition of their own."""
        owner = await self.conn("owner")
        try:
            await owner.execute("SELECT pgstack_audit_partition('2020-05-01')")
        finally:
            await owner.close()
        app = await self.conn("app")
        try:
            for day in range(1, count + 1):
                await app.execute(
                    "INSERT INTO audit_log (action, occurred_at) VALUES ($1, $2)",
                    action,
                    datetime(2020, 5, day, tzinfo=UTC),
                )
        finally:
            await app.close()


@pytest.fixture
def roles(
    pgstack_server_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Roles]:
    """A new database made by `db init`, migrated by the owner, with two tenants and notes."""
    tag = uuid.uuid4().hex[:10]
    database = f"pgstack_audit_{tag}"
    made = Roles(
        admin=pgstack_server_url,
        owner=pgstack_server_url.set(
            username=f"pgstack_owner_{tag}", password=f"o-{tag}", database=database
        ),
        app=pgstack_server_url.set(
            username=f"pgstack_app_{tag}", password=f"a-{tag}", database=database
        ),
    )
    monkeypatch.chdir(tmp_path)
    try:
        result = cli("db", "init", "--admin-url", asyncpg_dsn(made.admin), env=made.env)
        assert result.exit_code == 0, result.output
        result = cli("db", "upgrade", env=made.env)
        assert result.exit_code == 0, result.output
        run_async(
            lambda: _admin(
                made.owner,
                "INSERT INTO tenants (id, external_id, name) VALUES "
                f"('{ACME}', 'acme', 'acme'), ('{GLOBEX}', 'globex', 'globex')",
                NOTES,
                "ALTER TABLE audit_notes ENABLE ROW LEVEL SECURITY",
                "ALTER TABLE audit_notes FORCE ROW LEVEL SECURITY",
                "CREATE POLICY p ON audit_notes USING (tenant_id = "
                "NULLIF(current_setting('pgstack.tenant_id', true), '')::uuid)",
                *audit_sql("audit_notes", secret=["api_secret"]),
                # No row-level security: COPY (which RLS refuses) writes here.
                "CREATE TABLE audit_items (id uuid PRIMARY KEY, name text NOT NULL)",
                *audit_sql("audit_items"),
            )
        )
        yield made
    finally:
        run_async(
            lambda: _admin(
                pgstack_server_url,
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{made.app.username}"',
                f'DROP ROLE IF EXISTS "{made.owner.username}"',
            )
        )


@pytest.fixture
async def app_db(roles: Roles) -> AsyncIterator[Database]:
    """The service's Database: connected as the application role."""
    db = Database(roles.settings())
    await db.connect()
    try:
        yield db
    finally:
        await db.disconnect()


@pytest.fixture
async def client(app_db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The service over HTTP: identity routes and the admin audit router (admins only)."""
    app = create_app(
        database=app_db,
        monitor_interval=None,
        routers=[
            identity_router(CONFIG),
            audit_router(dependencies=[Depends(require_roles("admin"))]),
        ],
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def security_entries(db: Database, action: str) -> list[dict[str, object]]:
    """The security entries with this action (global chain), newest first."""
    page = await AuditLog(db).security_events(action=action, limit=100)
    return page.items
