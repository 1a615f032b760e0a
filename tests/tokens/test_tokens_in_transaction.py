"""`TokenVault.save(..., session=)` joins the caller's transaction; without it, it commits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack.audit import AuditLog
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import NotFoundError
from pgstack.tokens import TokenVault

COUNTS = "SELECT (SELECT count(*) FROM oauth_tokens), (SELECT count(*) FROM audit_log)"


@pytest.fixture
async def raw(pgstack_migrated_url: URL) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own: it sees only what is committed."""
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_rolled_back_transaction_keeps_no_token_and_no_entry(
    vault: TokenVault, pgstack_migrated_db: Database, raw: asyncpg.Connection
) -> None:
    # proves: T1
    db = pgstack_migrated_db
    with pytest.raises(RuntimeError, match="connect failed"):
        async with db.transaction() as session:
            saved = await vault.save("crm", "acme", "at-1", "rt-1", expires_in=60, session=session)
            await AuditLog(db).record(
                "crm.connected", resource_type="oauth_token", resource_id=saved.id, session=session
            )
            assert (saved.access_token, saved.refresh_token, saved.version) == ("at-1", "rt-1", 1)
            in_tx = "SELECT count(*) FROM oauth_tokens WHERE account = 'acme'"
            assert await session.scalar(text(in_tx)) == 1
            # Not committed on a connection of its own: nobody else sees it yet.
            assert tuple(await raw.fetchrow(COUNTS)) == (0, 0)
            with pytest.raises(NotFoundError):
                await vault.get("crm", "acme")
            raise RuntimeError("connect failed")
    assert tuple(await raw.fetchrow(COUNTS)) == (0, 0)
    with pytest.raises(NotFoundError):
        await vault.get("crm", "acme")


async def test_a_replacement_rolled_back_leaves_the_stored_token_as_it_was(
    vault: TokenVault, pgstack_migrated_db: Database, raw: asyncpg.Connection
) -> None:
    # proves: T1
    first = await vault.save("crm", "acme", "at-1", "rt-1", expires_in=3600)
    with pytest.raises(RuntimeError):
        async with pgstack_migrated_db.transaction() as session:
            second = await vault.save("crm", "acme", "at-2", "rt-2", session=session)
            assert (second.id, second.version, second.access_token) == (first.id, 2, "at-2")
            raise RuntimeError("undo")
    kept = await vault.get("crm", "acme")
    assert (kept.id, kept.version, kept.access_token, kept.refresh_token) == (
        first.id,
        1,
        "at-1",
        "rt-1",
    )
    assert tuple(await raw.fetchrow(COUNTS)) == (1, 0)


async def test_a_committed_transaction_keeps_the_token_with_the_callers_rows(
    vault: TokenVault, pgstack_migrated_db: Database, raw: asyncpg.Connection
) -> None:
    # proves: T1
    db = pgstack_migrated_db
    async with db.transaction() as session:
        saved = await vault.save(
            "crm", "acme", "at-1", "rt-1", expires_in=3600, scopes="a b", session=session
        )
        await AuditLog(db).record(
            "crm.connected", resource_type="oauth_token", resource_id=saved.id, session=session
        )
    assert tuple(await raw.fetchrow(COUNTS)) == (1, 1)
    token = await vault.get("crm", "acme")
    assert (token.id, token.access_token, token.refresh_token, token.scopes) == (
        saved.id,
        "at-1",
        "rt-1",
        ("a", "b"),
    )
    [entry] = (await AuditLog(db).entries(action="crm.connected")).items
    assert entry["resource_id"] == str(saved.id)


async def test_a_connections_transaction_works_the_same(
    vault: TokenVault, pgstack_migrated_db: Database, raw: asyncpg.Connection
) -> None:
    # proves: T1
    with pytest.raises(RuntimeError):
        async with pgstack_migrated_db.engine.begin() as conn:
            await vault.save("crm", "gone", "at-0", session=conn)
            raise RuntimeError("undo")
    async with pgstack_migrated_db.engine.begin() as conn:
        await vault.save("crm", "kept", "at-1", session=conn)
    assert [r["account"] for r in await raw.fetch("SELECT account FROM oauth_tokens")] == ["kept"]


async def test_without_a_session_save_commits_by_itself(
    vault: TokenVault, pgstack_migrated_db: Database, raw: asyncpg.Connection
) -> None:
    # proves: T1
    with pytest.raises(RuntimeError):
        async with pgstack_migrated_db.transaction() as session:
            await session.execute(text("SELECT 1"))
            await vault.save("crm", "acme", "at-1", "rt-1")
            assert tuple(await raw.fetchrow(COUNTS)) == (1, 0)  # committed already
            raise RuntimeError("the caller's own work fails")
    assert (await vault.get("crm", "acme")).access_token == "at-1"
    assert tuple(await raw.fetchrow(COUNTS)) == (1, 0)
