"""Key rotation re-encrypts every token online; background refresh shares work without overlap."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from tokens_fake_provider import FakeProvider

from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.tokens import TokenVault

ROWS = 30


async def _ciphertexts(url: URL) -> list[str]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch("SELECT access_token, refresh_token FROM oauth_tokens")
    finally:
        await conn.close()
    return [value for row in rows for value in row if value is not None]


async def test_rotate_keys_under_concurrent_reads_loses_nothing(
    pgstack_migrated_db: Database, pgstack_migrated_url: URL, provider: FakeProvider
) -> None:
    # proves: T5
    old_key, new_key = generate_key("old"), generate_key("new")
    configure_encryption(old_key)
    try:
        vault = TokenVault(pgstack_migrated_db)
        for n in range(ROWS):
            await vault.save("crm", f"acct-{n}", f"at-{n}", f"rt-{n}", expires_in=3600)
        await vault.save("crm", "busy", "at-busy", await provider.grant(), expires_in=10)
        assert all(v.startswith("v1:old:") for v in await _ciphertexts(pgstack_migrated_url))

        configure_encryption(f"{new_key},{old_key}")
        done = asyncio.Event()
        reads = 0

        async def reader(offset: int) -> None:
            nonlocal reads
            n = offset
            while not done.is_set():
                token = await vault.get("crm", f"acct-{n % ROWS}")
                assert token.access_token == f"at-{n % ROWS}"
                reads += 1
                n += 1
                await asyncio.sleep(0)

        async def rotate() -> int:
            try:
                await asyncio.sleep(0.05)  # let the readers get going
                return await vault.rotate_keys(batch_size=7)
            finally:
                done.set()

        slow = FakeProvider(provider.dsn, delay=0.1)
        *_, refreshed, changed = await asyncio.gather(
            reader(0),
            reader(11),
            vault.get_valid_token("crm", "busy", slow.refresh),
            rotate(),
        )
        assert reads > 0
        # Every row the refresh did not already rewrite under the new key.
        assert ROWS <= changed <= ROWS + 1
        assert await vault.rotate_keys(batch_size=7) == 0  # a second run changes nothing

        configure_encryption(new_key)  # the old key is gone
        assert all(v.startswith("v1:new:") for v in await _ciphertexts(pgstack_migrated_url))
        for n in range(ROWS):
            token = await vault.get("crm", f"acct-{n}")
            assert (token.access_token, token.refresh_token) == (f"at-{n}", f"rt-{n}")
        assert (await vault.get("crm", "busy")).access_token == refreshed.access_token
    finally:
        configure_encryption(None)


async def test_rotate_keys_with_nothing_stored_changes_nothing(
    vault: TokenVault, token_keys: KeyRing
) -> None:
    # proves: T5
    assert await vault.rotate_keys() == 0


async def test_refresh_due_workers_share_the_work_without_overlap(
    pgstack_migrated_db: Database,
    pgstack_migrated_settings: Any,
    provider: FakeProvider,
    token_keys: KeyRing,
) -> None:
    # proves: T3, T4
    vault = TokenVault(pgstack_migrated_db)
    for n in range(6):
        await vault.save("crm", f"due-{n}", f"at-{n}", await provider.grant(), expires_in=60)
    await vault.save("crm", "fresh", "at-fresh", await provider.grant(), expires_in=7200)
    await vault.save("mail", "other-provider", "at-m", "rt-m", expires_in=60)

    slow = FakeProvider(provider.dsn, delay=0.05)
    second_db = Database(pgstack_migrated_settings)
    await second_db.connect()
    try:
        other = TokenVault(second_db)
        summaries = await asyncio.gather(
            vault.refresh_due({"crm": slow.refresh}),
            other.refresh_due({"crm": slow.refresh}),
        )
    finally:
        await second_db.disconnect()
    assert sum(s.refreshed for s in summaries) == 6
    assert all(s.failed == 0 for s in summaries)
    calls = await provider.calls()
    assert len(calls) == 6 and all(accepted for _, accepted in calls)
    assert len({sent for sent, _ in calls}) == 6  # no refresh token sent twice
    assert await vault.needing_refresh() == [
        t for t in await vault.needing_refresh() if t.provider == "mail"
    ]
    assert (await vault.get("crm", "fresh")).access_token == "at-fresh"
    again = await vault.refresh_due({"crm": slow.refresh}, within=timedelta(minutes=5))
    assert (again.refreshed, again.failed) == (0, 0)
