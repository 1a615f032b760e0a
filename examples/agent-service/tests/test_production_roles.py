"""The production shape: an owner role migrates, the service runs as a role that owns nothing.

Superusers and table owners pass row-level security by default; only under the application
role does the database itself keep workspaces apart and the audit log untouchable.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from agent_service.app import build_app, service_settings
from sqlalchemy.engine import URL

from pgstack import Database, Settings

from .conftest import Outbox, bearer, builder

HERE = Path(__file__).resolve().parents[1]
PGSTACK = str(Path(sys.executable).parent / "pgstack")
AGENT = {"name": "support-bot", "model": "gpt-4o-mini"}


def dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: URL, *statements: str) -> None:
    conn = await asyncpg.connect(dsn(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def roles(pgstack_server_url: URL) -> Iterator[tuple[URL, URL]]:
    """A database made by `pgstack db init`, migrated by its owner: (owner URL, app URL)."""
    tag = uuid.uuid4().hex[:10]
    database = f"agent_service_{tag}"
    owner = pgstack_server_url.set(
        username=f"agent_owner_{tag}", password=f"o-{tag}", database=database
    )
    app = pgstack_server_url.set(
        username=f"agent_app_{tag}", password=f"a-{tag}", database=database
    )
    env = {
        **os.environ,
        "DATABASE_URL": dsn(app),
        "DATABASE_MIGRATION_URL": dsn(owner),
        "PGSTACK_ENV": "development",
    }
    try:
        for command in (
            [PGSTACK, "db", "init", "--admin-url", dsn(pgstack_server_url)],
            [PGSTACK, "db", "upgrade"],
        ):
            done = subprocess.run(
                command, cwd=HERE, env=env, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stdout + done.stderr
        yield owner, app
    finally:
        asyncio.run(
            _admin(
                pgstack_server_url,
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{app.username}"',
                f'DROP ROLE IF EXISTS "{owner.username}"',
            )
        )


@pytest.fixture
async def app_client(
    roles: tuple[URL, URL], outbox: Outbox
) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    owner, app_url = roles
    settings = Settings(  # type: ignore[call-arg]
        database_url=dsn(app_url),
        database_migration_url=dsn(owner),
        database_pool_size=5,
        environment="test",
        _env_file=None,
    )
    db = Database(service_settings(settings))
    app = build_app(database=db, send_token=outbox)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://agents") as http,
    ):
        yield http, db


async def test_the_database_keeps_workspaces_apart_under_the_application_role(
    app_client: tuple[httpx.AsyncClient, Database], roles: tuple[URL, URL], outbox: Outbox
) -> None:
    # proves: X1, N3 (row-level security under the application role), A2, O6 (two roles)
    client, db = app_client
    _, app_url = roles
    workspaces = {}
    for name in ("acme", "globex"):
        token, workspace, _ = await builder(client, outbox, db, f"{name}@example.com", name)
        headers = bearer(token, **{"X-Tenant-ID": workspace})
        made = await client.post("/agents", json=AGENT, headers=headers)  # same name: per workspace
        assert made.status_code == 201, made.text
        listed = (await client.get("/agents", headers=headers)).json()["items"]
        assert [a["id"] for a in listed] == [made.json()["id"]]
        trail = (await client.get("/audit", headers=headers)).json()["items"]
        assert [e["action"] for e in trail if e["resource_type"] == "agents"] == ["agents.insert"]
        workspaces[name] = workspace

    conn = await asyncpg.connect(dsn(app_url))
    try:
        role = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        assert tuple(role) == (False, False)
        assert await conn.fetchval("SELECT count(*) FROM agents") == 0  # no tenant, no rows
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('pgstack.tenant_id', $1, true)", workspaces["acme"]
            )
            assert await conn.fetchval("SELECT count(*) FROM agents") == 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # WITH CHECK: not theirs
                await conn.execute(
                    "INSERT INTO agents (id, tenant_id, name, model, version) "
                    "VALUES ($1, $2, 'sneaky', 'm', 1)",
                    uuid.uuid4(),
                    uuid.UUID(workspaces["globex"]),
                )
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('pgstack.tenant_id', $1, true)", workspaces["acme"]
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the log is append-only
                await conn.execute("UPDATE audit_log SET actor_id = 'nobody'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # and no DDL for the service
            await conn.execute("DROP TABLE agents")
    finally:
        await conn.close()
