"""Fixtures for identity tests: a migrated database of the test's own and its services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends

from pgstack.config import Settings
from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.database import Database
from pgstack.identity import Identity, User
from pgstack.testing import record_statements
from pgstack.web import create_app
from pgstack.web.identity import CurrentUser, Principal, identity_router, require_scopes

STRONG = "violet Harbour 42 lanterns drift"
OTHER_STRONG = "seven quiet Otters fold paper boats"


@pytest.fixture(autouse=True)
def identity_keys() -> Iterator[KeyRing]:
    """A fresh key ring, so TOTP secrets (EncryptedText) can be stored; reset afterwards."""
    ring = KeyRing.parse(generate_key("id1"))
    configure_encryption(ring)
    yield ring
    configure_encryption(None)


@pytest.fixture
def identity(pgstack_migrated_db: Database) -> Identity:
    """The identity services on this test's migrated database, with default settings."""
    return Identity(pgstack_migrated_db)


@pytest.fixture
async def alice(identity: Identity) -> User:
    """A local user with the password STRONG."""
    return await identity.users.create("Alice@Example.com", STRONG, name="Alice Liddell")


@pytest.fixture
def statements(pgstack_migrated_db: Database) -> Iterator[list[str]]:
    """Every SQL statement the test's Database sends from now on."""
    with record_statements(pgstack_migrated_db) as log:
        yield log


async def reset_token(identity: Identity, email: str) -> str | None:
    """The password-reset token issued for `email`, or None when it has no local account."""
    issued = await identity.auth.request_password_reset(email)
    return issued.token if issued is not None else None


PROBLEM = "application/problem+json"


class Outbox:
    """Tokens the router asked to deliver, as an e-mail sender would receive them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    async def __call__(self, user: User, purpose: str, token: str) -> None:
        self.sent.append((user.email, purpose, token))

    def last(self, purpose: str) -> str:
        return next(t for _, p, t in reversed(self.sent) if p == purpose)


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
async def client(
    pgstack_migrated_settings: Settings, outbox: Outbox
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        pgstack_migrated_settings,
        monitor_interval=None,
        routers=[identity_router(send_token=outbox)],
    )

    @app.get("/reports")
    async def reports(
        user: CurrentUser,
        principal: Annotated[Principal, Depends(require_scopes("reports:read"))],
    ) -> dict[str, str]:
        return {"email": user.email}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"]
    if status == 401:  # RFC 9110: a 401 names the scheme the client should use
        assert response.headers.get("www-authenticate") == "Bearer"
    return dict(body)


async def login(client: httpx.AsyncClient, email: str, password: str) -> str:
    response = await client.post("/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def verified_session(client: httpx.AsyncClient, outbox: Outbox, email: str) -> str:
    """A fresh session of a new user whose address is verified."""
    await client.post("/auth/register", json={"email": email, "password": STRONG})
    await client.post("/auth/verify", json={"token": outbox.last("email_verification")})
    return await login(client, email, STRONG)
