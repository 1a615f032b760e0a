"""A migrated database per test, the app served in-process, an identity provider, helpers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from agent_service.app import build_app, service_settings
from agent_service.sso import SsoConfig
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from pgstack import Database, Settings
from pgstack.identity import Identity, User
from pgstack.migrations import MigrationProject

pytest_plugins = ["pgstack.testing.plugin"]

HERE = Path(__file__).resolve().parents[1]
PASSWORD = "violet Harbour 42 lanterns drift"
PROBLEM = "application/problem+json"
AGENT_BUILDERS = "agent-builders"


@pytest.fixture(scope="session")
def pgstack_migration_project() -> MigrationProject:
    return MigrationProject.from_pyproject(HERE)


class Outbox:
    """The links the service asked to e-mail, as a mail server would receive them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    async def __call__(self, user: User, purpose: str, token: str) -> None:
        self.sent.append((user.email, purpose, token))

    def last(self, email: str, purpose: str) -> str:
        return next(t for e, p, t in reversed(self.sent) if (e, p) == (email, purpose))


class IdentityProvider:
    """An OpenID Connect provider: publishes its key as a JWKS over HTTP, signs ID tokens."""

    issuer = "https://example.okta.com/oauth2/default"
    audience = "agent-service"

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]})
        self.fetches = 0
        provider = self

        class Keys(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.config = SsoConfig(
            issuer=self.issuer,
            audience=self.audience,
            jwks_url=f"http://127.0.0.1:{self.server.server_address[1]}/v1/keys",
        )

    def id_token(self, sub: str, email: str, *, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "email": email,
            "email_verified": True,
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture(scope="session")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.server.shutdown()


@pytest.fixture
def service_db(pgstack_migrated_settings: Settings) -> Database:
    """The app's database: the test's migrated one, with the service's API-key tiers."""
    return Database(service_settings(pgstack_migrated_settings))


@pytest.fixture
async def client(
    service_db: Database, outbox: Outbox, idp: IdentityProvider
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run; a 500 comes back as an answer, not an exception."""
    app = build_app(database=service_db, send_token=outbox, sso=idp.config)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://agents") as http,
    ):
        yield http


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    """The problem-details body of an answer that must have `status`."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    return body


async def sign_up(client: httpx.AsyncClient, outbox: Outbox, email: str) -> str:
    """Register, follow the e-mailed verification link, sign in: the session token."""
    registered = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 202, registered.text
    verified = await client.post(
        "/auth/verify", json={"token": outbox.last(email, "email_verification")}
    )
    assert verified.status_code == 200, verified.text
    login = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return str(login.json()["access_token"])


async def new_workspace(client: httpx.AsyncClient, token: str, slug: str) -> str:
    """A workspace owned by the token's user: its id."""
    made = await client.post(
        "/workspaces", json={"slug": slug, "name": slug.title()}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def builder(
    client: httpx.AsyncClient, outbox: Outbox, db: Database, email: str, slug: str
) -> tuple[str, str, User]:
    """A signed-up owner of a new workspace, put in `agent-builders` by an operator.

    The session token, the workspace id and the user.
    """
    token = await sign_up(client, outbox, email)
    workspace = await new_workspace(client, token, slug)
    identity = Identity(db)
    user = await identity.users.get_by_email(email)
    assert user is not None
    user = await identity.users.update(user.id, groups=[AGENT_BUILDERS])
    return token, workspace, user


async def away_from_boundary(seconds: int, margin: float = 15) -> None:
    """Wait, if needed, until `margin` seconds remain in the current UTC window of `seconds`.

    Rate-limit windows are calendar-aligned: a count that must land in one window must not
    straddle its end.
    """
    left = seconds - time.time() % seconds
    if left < margin:
        await asyncio.sleep(left + 0.1)
