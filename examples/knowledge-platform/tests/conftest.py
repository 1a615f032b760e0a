"""A migrated database per test, the app served in-process, and signed-in users."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from knowledge_platform.app import build_app

from pgstack import Database
from pgstack.crypto import generate_key
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject

# Two-factor secrets are encrypted at rest: the tests need a key, as production does
# (read when each test's Settings are made).
os.environ.setdefault("PGSTACK_ENCRYPTION_KEYS", generate_key("tests"))


pytest_plugins = ["pgstack.testing.plugin"]

HERE = Path(__file__).resolve().parents[1]
PASSWORD = "a long and unusual passphrase 7"


@pytest.fixture(scope="session")
def pgstack_migration_project() -> MigrationProject:
    return MigrationProject.from_pyproject(HERE)


@pytest.fixture
async def client(pgstack_migrated_db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run; a 500 comes back as an answer, not an exception."""
    app = build_app(database=pgstack_migrated_db)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://knowledge") as http,
    ):
        yield http


SignIn = Callable[..., Awaitable[tuple[str, dict[str, str]]]]


@pytest.fixture
def sign_in(pgstack_migrated_db: Database, client: httpx.AsyncClient) -> SignIn:
    """Make a user and sign in over HTTP; the user's id and the headers to send."""
    identity = Identity(pgstack_migrated_db)

    async def make(email: str, *, roles: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
        user = await identity.users.create(email, PASSWORD, roles=roles, verified=True)
        answer = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return str(user.id), {"Authorization": f"Bearer {answer.json()['access_token']}"}

    return make
