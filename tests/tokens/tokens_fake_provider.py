"""A fake OAuth provider that rotates refresh tokens and rejects one that was used before.

Its state lives in two tables of the test database, so every process sees the same grants
and every call is counted wherever it came from.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

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
