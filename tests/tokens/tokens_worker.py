"""One OS process of the single-flight test: 10 concurrent get_valid_token calls.

Usage: python tokens_worker.py DATABASE_URL PROVIDER_DSN READY_FILE GO_FILE
(keys from PGSTACK_ENCRYPTION_KEYS). It connects, writes READY_FILE, waits for GO_FILE so
that every process starts at once, and prints the 10 access tokens it got as JSON. The
refresher is Authlib's AsyncOAuth2Client talking to the fake provider's token endpoint.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tokens_fake_provider import TOKEN_URL, FakeProvider, token_endpoint

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.tokens import TokenVault

TASKS = 10


async def main(url: str, provider_dsn: str, ready: Path, go: Path) -> None:
    # Five such processes share a server of 100 connections: each holds up to its pool and
    # its read lane (10 + 5), sized as the README says a deployment should be.
    settings = Settings(
        database_url=url,
        database_pool_size=TASKS,
        database_max_overflow=0,
        database_read_pool_size=TASKS // 2,
        _env_file=None,
    )
    db = Database(settings)
    await db.connect()
    provider = FakeProvider(provider_dsn, delay=0.3)
    transport = httpx.ASGITransport(app=token_endpoint(provider))
    client = AsyncOAuth2Client("client-id", "client-secret", transport=transport)

    async def refresher(refresh_token: str) -> Any:
        return await client.refresh_token(TOKEN_URL, refresh_token=refresh_token)

    try:
        vault = TokenVault(db, refresh_timeout=20)
        await vault.get("crm", "acme")  # warm: pool, key ring, imports
        ready.write_text("ready")
        while not go.exists():
            await asyncio.sleep(0.005)
        tokens = await asyncio.gather(
            *(vault.get_valid_token("crm", "acme", refresher) for _ in range(TASKS))
        )
    finally:
        await client.aclose()
        await db.disconnect()
    print(json.dumps([t.access_token for t in tokens]))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])))
