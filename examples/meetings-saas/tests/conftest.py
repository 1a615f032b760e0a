"""The production shape for every HTTP test: `db init` roles, migrations by the owner.

pgstack's test kit (`pgstack_app_role_database`) makes, once per run, a database with an
owner role (runs the migrations) and an application role (rows only: owns nothing, no
BYPASSRLS), migrated by the owner as a deployment is. The app and the raw-SQL attacks connect
as the application role, so row-level security holds them. Each test makes its own
workspaces.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A small per-workspace limit, so the rate-limit test need not send a hundred meetings.
os.environ["MEETINGS_RATE_LIMIT"] = "5/minute"

import httpx
import pytest
from meetings_saas.app import build_app

from pgstack import Database
from pgstack.crypto import configure_encryption, generate_key
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject

pytest_plugins = ["pgstack.testing.plugin"]

HERE = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def db(pgstack_app_role_db: Database) -> Database:
    """The service's Database: the application role (pgstack's test kit sets it up)."""
    return pgstack_app_role_db


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
