"""A fake OAuth provider that rotates refresh tokens and rejects one that was used before.

Its state lives in two tables of the test database, so every process sees the same grants
and every call is counted wherever it came from. `token_endpoint` serves it as an OAuth
token endpoint (an ASGI app), for real OAuth clients to talk to through httpx.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKEN_URL = "https://provider.test/oauth/token"

SCHEMA = """
CREATE TABLE IF NOT EXISTS fake_provider_grants (
    refresh_token text PRIMARY KEY,
    used boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS fake_provider_calls (
    id bigserial PRIMARY KEY,
    refresh_token text NOT NULL,
    accepted boolean NOT NULL
);
"""


class InvalidGrant(Exception):
    """What a provider answers to a refresh token it does not accept."""


class FakeProvider:
    """Grants refresh tokens, rotates them on use, and rejects any token used twice."""

    def __init__(self, dsn: str, *, delay: float = 0.0) -> None:
        self.dsn = dsn
        self.delay = delay

    async def setup(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(SCHEMA)
        finally:
            await conn.close()

    async def grant(self) -> str:
        """A new refresh token, as after the user authorized."""
        token = f"rt-{uuid.uuid4().hex}"
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("INSERT INTO fake_provider_grants VALUES ($1)", token)
        finally:
            await conn.close()
        return token

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Exchange a refresh token for new tokens, rotating the refresh token."""
        if self.delay:
            # A slow provider keeps the race window open for the other callers.
            await asyncio.sleep(self.delay)
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                accepted = await conn.fetchval(
                    "UPDATE fake_provider_grants SET used = true "
                    "WHERE refresh_token = $1 AND NOT used RETURNING true",
                    refresh_token,
                )
                await conn.execute(
                    "INSERT INTO fake_provider_calls (refresh_token, accepted) VALUES ($1, $2)",
                    refresh_token,
                    bool(accepted),
                )
                if not accepted:
                    raise InvalidGrant("invalid_grant: the refresh token was already used")
                rotated = f"rt-{uuid.uuid4().hex}"
                await conn.execute("INSERT INTO fake_provider_grants VALUES ($1)", rotated)
        except InvalidGrant:
            raise
        finally:
            await conn.close()
        return {
            "access_token": f"at-{uuid.uuid4().hex}",
            "refresh_token": rotated,
            "expires_in": 3600,
            "token_type": "Bearer",
            "scope": "contacts.read contacts.write",
        }

    async def calls(self) -> list[tuple[str, bool]]:
        """Every refresh call so far: (refresh token sent, accepted)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT refresh_token, accepted FROM fake_provider_calls ORDER BY id"
            )
        finally:
            await conn.close()
        return [(r["refresh_token"], r["accepted"]) for r in rows]


def token_endpoint(provider: FakeProvider) -> Starlette:
    """The provider's RFC 6749 token endpoint: `grant_type=refresh_token` at /oauth/token."""

    async def token(request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        refresh_token = form.get("refresh_token")
        if form.get("grant_type") != "refresh_token" or not refresh_token:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        try:
            answer = await provider.refresh(refresh_token)
        except InvalidGrant:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "refresh token already used"},
                status_code=400,
            )
        return JSONResponse(answer, headers={"cache-control": "no-store"})

    return Starlette(routes=[Route("/oauth/token", token, methods=["POST"])])
