"""The production shape for every HTTP test: `pgstack db init` roles, migrations by the owner.

Once per run, `pgstack db init` makes a database with an owner role (runs the migrations)
and an application role (rows only: owns nothing, no BYPASSRLS), and `pgstack db upgrade`
migrates it as the owner, as a deployment does. The app and the raw-SQL attacks connect as
the application role, so row-level security holds them. Each test makes its own workspaces.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A small per-workspace limit, so the rate-limit test need not send a hundred meetings.
os.environ["MEETINGS_RATE_LIMIT"] = "5/minute"

import asyncpg
import httpx
import pytest
from meetings_saas.app import build_app
from sqlalchemy.engine import URL

from pgstack import Database, Settings
from pgstack.crypto import configure_encryption, generate_key
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject

pytest_plugins = ["pgstack.testing.plugin"]

HERE = Path(__file__).resolve().parents[1]
PGSTACK = str(Path(sys.executable).parent / "pgstack")
PASSWORD = "a long and unusual passphrase 7"


@pytest.fixture(scope="session")
def pgstack_migration_project() -> MigrationProject:
    return MigrationProject.from_pyproject(HERE)


@pytest.fixture(scope="session", autouse=True)
def encryption_key() -> Iterator[str]:
    key = generate_key("test")
    configure_encryption(key)
    yield key
    configure_encryption(None)


@dataclass(frozen=True)
class Deployment:
    """The roles' URLs on a database set up as in production."""

    owner: URL
    app: URL

    def settings(self) -> Settings:
        return Settings(
            database_url=asyncpg_dsn(self.app),
            database_migration_url=asyncpg_dsn(self.owner),
            database_pool_size=6,
            database_max_overflow=4,
            environment="test",
            _env_file=None,
        )


def asyncpg_dsn(url: URL) -> str:
    """A URL asyncpg and the pgstack command accept (no `+asyncpg` driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _admin(url: URL, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def pgstack_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PGSTACK, *args], cwd=HERE, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="session")
def deployment(pgstack_server_url: URL) -> Iterator[Deployment]:
    tag = uuid.uuid4().hex[:10]
    database = f"meetings_{tag}"
    found = Deployment(
        owner=pgstack_server_url.set(
            username=f"meetings_owner_{tag}", password=f"o-{tag}", database=database
        ),
        app=pgstack_server_url.set(
            username=f"meetings_app_{tag}", password=f"a-{tag}", database=database
        ),
    )
    env = {
        **os.environ,
        "DATABASE_URL": asyncpg_dsn(found.app),
        "DATABASE_MIGRATION_URL": asyncpg_dsn(found.owner),
        "PGSTACK_ENV": "development",
    }
    try:
        made = pgstack_cli("db", "init", "--admin-url", asyncpg_dsn(pgstack_server_url), env=env)
        assert made.returncode == 0, made.stdout + made.stderr
        migrated = pgstack_cli("db", "upgrade", env=env)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        yield found
    finally:
        _admin(
            pgstack_server_url,
            f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
            f'DROP ROLE IF EXISTS "{found.app.username}"',
            f'DROP ROLE IF EXISTS "{found.owner.username}"',
        )


@pytest.fixture
async def db(deployment: Deployment) -> AsyncIterator[Database]:
    """The service's Database: the application role."""
    database = Database(deployment.settings())
    await database.connect()
    try:
        yield database
    finally:
        await database.disconnect(timeout=1)


@pytest.fixture
async def client(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run; a 500 comes back as an answer, not an exception."""
    app = build_app(database=db)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://meetings") as http,
    ):
        yield http


@dataclass
class Caller:
    user_id: uuid.UUID
    email: str
    headers: dict[str, str]


MakeUser = Callable[[str], Awaitable[Caller]]


@pytest.fixture
def make_user(db: Database) -> MakeUser:
    """A user (unique e-mail per call) with an API key that may act with its tenant roles."""
    identity = Identity(db)

    async def make(name: str) -> Caller:
        email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
        user = await identity.users.create(email, PASSWORD, verified=True)
        issued = await identity.api_keys.create(user.id, "tests", scopes=["tenant:owner"])
        return Caller(user.id, email, {"Authorization": f"Bearer {issued.key}"})

    return make


def team_id() -> str:
    return "T" + uuid.uuid4().hex[:10].upper()


Install = Callable[[Caller], Awaitable[dict[str, Any]]]


@pytest.fixture
def install(client: httpx.AsyncClient) -> Install:
    """Install the Slack app for a new team, as `caller`: the new workspace."""

    async def run(caller: Caller) -> dict[str, Any]:
        body = {
            "team_id": team_id(),
            "team_name": "Team",
            "slack_user_id": "U" + uuid.uuid4().hex[:10].upper(),
        }
        answer = await client.post("/workspaces/install", json=body, headers=caller.headers)
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    return run
