"""A migrated database per test, the app served in-process, and users with API keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from campaigns.app import build_app

from pgstack import Database
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject

pytest_plugins = ["pgstack.testing.plugin"]

HERE = Path(__file__).resolve().parents[1]


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
        httpx.AsyncClient(transport=transport, base_url="http://campaigns") as http,
    ):
        yield http


MakeUser = Callable[[str], Awaitable[tuple[str, dict[str, str]]]]


@pytest.fixture
def make_user(pgstack_migrated_db: Database) -> MakeUser:
    """Make a user with an API key; the user's id and the headers to send."""
    identity = Identity(pgstack_migrated_db)

    async def make(email: str) -> tuple[str, dict[str, str]]:
        user = await identity.users.create(email, "a long and unusual passphrase 7", verified=True)
        issued = await identity.api_keys.create(user.id, "tests")
        return str(user.id), {"Authorization": f"Bearer {issued.key}"}

    return make
