"""`pgstack db init` makes an owner that migrates and an application role that only serves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastapi import APIRouter, Request
from sqlalchemy import text
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app as cli_app
from pgstack.config import Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.migrations import MigrationProject
from pgstack.testing.templates import _admin, run_async
from pgstack.web import create_app
from pgstack.web.modules import builtin_routers

runner = CliRunner()
PASSWORD = "violet Harbour 42 lanterns drift"


@dataclass(frozen=True)
class Roles:
    admin: URL
    owner: URL
    app: URL

    def env(self, **extra: str | None) -> dict[str, str | None]:
        return {
            "DATABASE_URL": raw(self.app),
            "DATABASE_MIGRATION_URL": raw(self.owner),
            "PGSTACK_ENV": "development",
            **extra,
        }


def raw(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env, no pyproject.toml; the URLs come from env=


@pytest.fixture
def roles(pgstack_server_url: URL) -> Iterator[Roles]:
    """Names for a database and its two roles, unique to this test; all dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    database = f"pgstack_roles_{tag}"
    roles = Roles(
        admin=pgstack_server_url,
        owner=pgstack_server_url.set(
            username=f"pgstack_owner_{tag}", password=f"o-{tag}", database=database
        ),
        app=pgstack_server_url.set(
            username=f"pgstack_app_{tag}", password=f"a-{tag}", database=database
        ),
    )
    try:
        yield roles
    finally:
        run_async(
            lambda: _admin(
                pgstack_server_url,
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{roles.app.username}"',
                f'DROP ROLE IF EXISTS "{roles.owner.username}"',
            )
        )


def db(*args: str, env: dict[str, str | None]) -> Any:
    """`pgstack db ARGS` in this process, on a thread of its own (it runs its own loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(runner.invoke, cli_app, ["db", *args], env=env).result()


def db_init(roles: Roles) -> str:
    result = db("init", "--admin-url", raw(roles.admin), env=roles.env())
    assert result.exit_code == 0, result.output
    return result.output


def tags_router() -> APIRouter:
    """Routes on the table a later release adds, served through the app's own Database."""
    router = APIRouter()

    @router.post("/tags/{name}")
    async def add(name: str, request: Request) -> dict[str, Any]:
        rows = await request.app.state.pgstack_db.run(
            text("INSERT INTO sample_tags (name) VALUES (:name) RETURNING id"), {"name": name}
        )
        return {"id": rows[0][0]}

    @router.get("/tags")
    async def listing(request: Request) -> list[str]:
        rows = await request.app.state.pgstack_db.run(text("SELECT name FROM sample_tags"))
        return sorted(r[0] for r in rows)

    return router


def service(roles: Roles, project: MigrationProject, *, migrate: bool = False) -> Any:
    settings = Settings(
        database_url=raw(roles.app),
        database_migration_url=raw(roles.owner),
        database_pool_size=3,
        database_max_overflow=0,
        environment="test",
        _env_file=None,
    )
    return create_app(
        settings,
        monitor_interval=None,
        migrations=project,
        migrate=migrate,
        routers=[*builtin_routers(), tags_router()],
    )


async def test_owner_migrates_and_the_application_role_serves_new_tables_at_once(
    roles: Roles, sample_copy: Path, add_revision: Any, client: Any
) -> None:
    # proves: O6, G5
    output = db_init(roles)
    assert f"owner role {roles.owner.username}: created" in output
    assert f"application role {roles.app.username}: created" in output

    # Start-up migrates as the owner (DATABASE_MIGRATION_URL); requests run as the app role.
    release_1 = service(roles, MigrationProject.from_pyproject(sample_copy), migrate=True)
    async with client(release_1) as c:
        assert (await c.get("/ready")).json()["checks"]["migrations"][0]["status"] == "pass"
        account = {"email": "ada@example.com", "password": PASSWORD}
        assert (await c.post("/auth/register", json=account)).status_code == 202
        login = await c.post("/auth/login", json=account)
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        me = await c.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["email"] == "ada@example.com"

        conn = await asyncpg.connect(asyncpg_dsn(roles.admin.set(database=roles.app.database)))
        try:
            owners = {
                r[0]
                for r in await conn.fetch(
                    "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert owners == {roles.owner.username}
            await conn.execute("CREATE TABLE admin_only (secret text)")  # the admin's own
            await conn.execute("INSERT INTO admin_only VALUES ('s3cret')")
        finally:
            await conn.close()

        app_conn = await asyncpg.connect(asyncpg_dsn(roles.app))
        try:
            me_row = await app_conn.fetchrow(
                "SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole FROM pg_roles "
                "WHERE rolname = current_user"
            )
            assert tuple(me_row) == (False, False, False, False)
            for ddl in (
                "CREATE TABLE evil (id int)",
                "ALTER TABLE sample_authors ADD COLUMN evil int",
                "CREATE INDEX evil ON sample_authors (name)",
                "DROP TABLE sample_notes",
                "TRUNCATE sample_authors",
                "CREATE FUNCTION evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "SELECT secret FROM admin_only",
                "ALTER ROLE CURRENT_USER BYPASSRLS",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await app_conn.execute(ddl)
        finally:
            await app_conn.close()

        # A later release adds a table; the owner migrates it (`pgstack db upgrade`).
        add_revision(sample_copy, "sampleapp_0002", "sampleapp_0001", "sample_tags")
        upgraded = db("upgrade", "--project", str(sample_copy), env=roles.env())
        assert upgraded.exit_code == 0, upgraded.output
        assert "applied sampleapp_0002" in upgraded.output

        # The running release serves the new table as the app role at once (default
        # privileges), and reads the newer schema as a rolling deploy: warn, not fail.
        added = await c.post("/tags/first")
        assert added.status_code == 200, added.text
        ready = await c.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["migrations"][0]["status"] == "warn"

    release_2 = service(roles, MigrationProject.from_pyproject(sample_copy), migrate=True)
    async with client(release_2) as c:
        assert (await c.get("/ready")).json()["checks"]["migrations"][0]["status"] == "pass"
        assert (await c.post("/tags/second")).status_code == 200
        assert (await c.get("/tags")).json() == ["first", "second"]


def test_validate_names_an_owner_or_superuser_service_role_in_production(
    roles: Roles, sample_copy: Path
) -> None:
    # proves: O6, G5
    db_init(roles)
    project = ["--project", str(sample_copy)]
    upgraded = db("upgrade", *project, env=roles.env())
    assert upgraded.exit_code == 0, upgraded.output

    production = {"PGSTACK_ENV": "production"}
    as_app = db("validate", *project, env=roles.env(**production))
    assert as_app.exit_code == 0, as_app.output
    assert "FAIL" not in as_app.output

    owner_env = {**roles.env(**production), "DATABASE_URL": raw(roles.owner)}
    as_owner = db("validate", *project, env=owner_env)
    assert as_owner.exit_code == 1
    assert f"FAIL roles: DATABASE_URL connects as {roles.owner.username}" in as_owner.output
    assert "the schema's owner" in as_owner.output

    admin_env = {**owner_env, "DATABASE_URL": raw(roles.admin.set(database=roles.app.database))}
    as_admin = db("validate", *project, env=admin_env)
    assert as_admin.exit_code == 1
    assert "a superuser" in as_admin.output

    # Outside production the same set-up passes, with the note.
    development = db("validate", *project, env={**owner_env, "PGSTACK_ENV": "development"})
    assert development.exit_code == 0, development.output


def test_without_a_migration_url_one_role_owns_and_serves(roles: Roles, sample_copy: Path) -> None:
    # proves: O6, G5
    env = roles.env(DATABASE_URL=raw(roles.owner), DATABASE_MIGRATION_URL=None)
    init = db("init", "--admin-url", raw(roles.admin), env=env)
    assert init.exit_code == 0, init.output
    assert "owns and serves" in init.output
    # The role db init made can migrate on PostgreSQL 15+ (public has no CREATE for PUBLIC).
    upgraded = db("upgrade", "--project", str(sample_copy), env=env)
    assert upgraded.exit_code == 0, upgraded.output
