"""The production shape: an owner role migrates, the service runs as the application role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app as cli_app
from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.identity import Identity
from pgstack.tenancy import Tenancy
from pgstack.testing.templates import _admin, run_async
from pgstack.web import create_app
from pgstack.web.modules import builtin_routers

from .conftest import STRONG, NotesBase, bearer, login, notes_router

runner = CliRunner()


def raw(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def shaped(
    pgstack_server_url: URL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[URL, URL]]:
    """A database made by `pgstack db init` and migrated by its owner: (owner, app) URLs."""
    monkeypatch.chdir(tmp_path)  # no stray .env or pyproject.toml
    tag = uuid.uuid4().hex[:10]
    database = f"pgstack_tenancy_{tag}"
    owner = pgstack_server_url.set(
        username=f"pgstack_owner_{tag}", password=f"o-{tag}", database=database
    )
    app = pgstack_server_url.set(
        username=f"pgstack_app_{tag}", password=f"a-{tag}", database=database
    )
    env: dict[str, str | None] = {
        "DATABASE_URL": raw(app),
        "DATABASE_MIGRATION_URL": raw(owner),
        "PGSTACK_ENV": "development",
    }
    try:
        with ThreadPoolExecutor(1) as pool:
            for args in (["init", "--admin-url", raw(pgstack_server_url)], ["upgrade"]):
                done = pool.submit(runner.invoke, cli_app, ["db", *args], env=env).result()
                assert done.exit_code == 0, done.output
        yield owner, app
    finally:
        run_async(
            lambda: _admin(
                pgstack_server_url,
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{app.username}"',
                f'DROP ROLE IF EXISTS "{owner.username}"',
            )
        )


async def test_tenancy_serves_as_the_application_role(shaped: tuple[URL, URL]) -> None:
    # proves: N2, N5, O6
    owner, app_url = shaped
    settings = Settings(database_url=raw(app_url), environment="test", _env_file=None)
    # The application's own tenant-scoped table, made by the owner as a migration would.
    async with (
        Database(Settings(database_url=raw(owner), _env_file=None)) as as_owner,
        as_owner.engine.begin() as conn,
    ):
        await conn.run_sync(NotesBase.metadata.create_all)
    async with Database(settings) as db:
        identity, tenancy = Identity(db), Tenancy(db)
        ada = await identity.users.create("ada@example.com", STRONG, verified=True)
        bob = await identity.users.create("bob@example.com", STRONG, verified=True)
        a = await tenancy.tenants.create("TA", "A", owner_id=ada.id)
        b = await tenancy.tenants.create("TB", "B", owner_id=bob.id)
        await tenancy.memberships.add(a.id, bob.id, "viewer")
    app = create_app(settings, monitor_interval=None, routers=[*builtin_routers(), notes_router()])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            ada_token, bob_token = await login(c, ada.email), await login(c, bob.email)
            made = await c.post("/notes", json={"body": "a"}, headers=bearer(ada_token, a.id))
            assert made.status_code == 201, made.text
            assert (await c.get("/notes", headers=bearer(bob_token, a.id))).json()[0]["body"] == "a"
            denied = await c.post("/notes", json={"body": "x"}, headers=bearer(bob_token, a.id))
            assert denied.status_code == 403
            assert (await c.get("/notes", headers=bearer(ada_token, b.id))).status_code == 404
            # Leaving, and the last owner refusing to, both as the application role.
            left = await c.delete(f"/tenants/{a.id}/members/{bob.id}", headers=bearer(bob_token))
            assert left.status_code == 204
            last = await c.delete(f"/tenants/{a.id}/members/{ada.id}", headers=bearer(ada_token))
            assert last.status_code == 409
