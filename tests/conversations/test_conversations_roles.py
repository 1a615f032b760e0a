"""The production shape: `db init` roles, the service as the application role, RLS holding.

The database is made by `pgstack db init` and migrated by the owner; the service connects as
the application role, which owns nothing and has no BYPASSRLS. Conversations, messages and
the query log of one tenant are then out of another's reach even in raw SQL.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from pgstack.analytics import QueryAnalytics
from pgstack.config import Settings
from pgstack.conversations import Conversations
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import NotFoundError
from pgstack.identity import Identity, User
from pgstack.orm import tenant_context
from pgstack.testing.templates import _admin, run_async

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tenancy"))

from tenancy_rls_setup import ACME, GLOBEX, cli, raw

SET_TENANT = "SELECT set_config('pgstack.tenant_id', $1, true)"


@pytest.fixture
def roles(
    pgstack_server_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[URL, URL]]:
    """A `db init` database migrated by the owner: (owner URL, application URL)."""
    tag = uuid.uuid4().hex[:10]
    database = f"pgstack_conv_{tag}"
    owner = pgstack_server_url.set(
        username=f"pgstack_owner_{tag}", password=f"o-{tag}", database=database
    )
    app = pgstack_server_url.set(
        username=f"pgstack_app_{tag}", password=f"a-{tag}", database=database
    )
    monkeypatch.chdir(tmp_path)  # no stray .env or pyproject.toml
    env: dict[str, str | None] = {
        "DATABASE_URL": raw(app),
        "DATABASE_MIGRATION_URL": raw(owner),
        "PGSTACK_ENV": "development",
    }
    try:
        made = cli("db", "init", "--admin-url", raw(pgstack_server_url), env=env)
        assert made.exit_code == 0, made.output
        migrated = cli("db", "upgrade", env=env)
        assert migrated.exit_code == 0, migrated.output
        run_async(
            lambda: _admin(
                owner,
                "INSERT INTO tenants (id, external_id, name) VALUES "
                f"('{ACME}', 'acme', 'acme'), ('{GLOBEX}', 'globex', 'globex')",
            )
        )
        yield owner, app
    finally:
        run_async(
            lambda: _admin(
                pgstack_server_url,
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{app.username}"',
                f'DROP ROLE IF EXISTS "{owner.username}"',
            )
        )


@pytest.fixture
async def app_db(roles: tuple[URL, URL]) -> AsyncIterator[Database]:
    settings = Settings(  # type: ignore[call-arg]
        database_url=raw(roles[1]),
        database_pool_size=4,
        database_max_overflow=0,
        environment="test",
        _env_file=None,
    )
    db = Database(settings)
    await db.connect()
    try:
        yield db
    finally:
        await db.disconnect()


async def _user(db: Database, email: str) -> User:
    return await Identity(db).users.create(email, "violet Harbour 42 lanterns drift")


async def test_the_application_role_reaches_one_tenants_conversations_only(
    app_db: Database, roles: tuple[URL, URL]
) -> None:
    # proves: N3, V1
    ada = await _user(app_db, "ada@acme.example")
    conversations = Conversations(app_db)
    with tenant_context(ACME):
        chat = await conversations.start(ada.id, "bot", title="acme only")
        await conversations.append(chat.id, ada.id, "user", "acme secret", tokens=4)
    with tenant_context(GLOBEX):
        assert await conversations.list(ada.id) == []

    conn = await asyncpg.connect(asyncpg_dsn(roles[1]))
    try:
        # no tenant: no rows at all
        assert await conn.fetchval("SELECT count(*) FROM conversation_messages") == 0
        assert await conn.fetchval("SELECT count(*) FROM conversation_sessions") == 0
        async with conn.transaction():
            await conn.execute(SET_TENANT, str(GLOBEX))
            assert await conn.fetchval("SELECT count(*) FROM conversation_messages") == 0
            # nor may GLOBEX write into ACME's session, or bump its totals
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO conversation_messages (session_id, tenant_id, seq, role, "
                    "content) VALUES ($1, $2, 99, 'user', 'forged')",
                    chat.id,
                    ACME,
                )
        async with conn.transaction():
            await conn.execute(SET_TENANT, str(GLOBEX))
            updated = await conn.execute(
                "UPDATE conversation_sessions SET message_count = 0 WHERE id = $1", chat.id
            )
            assert updated == "UPDATE 0"
        # The append function runs as its caller: naming GLOBEX finds no ACME session, and
        # naming ACME inside a GLOBEX transaction is refused, not moved to ACME.
        append = (
            "SELECT seq FROM pgstack_conversation_append($1, $2, $3, 'user', 'forged', 1, "
            "NULL, NULL, NULL)"
        )
        assert await conn.fetch(append, chat.id, ada.id, GLOBEX) == []
        async with conn.transaction():
            await conn.execute(SET_TENANT, str(GLOBEX))
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="another tenant"):
                await conn.fetch(append, chat.id, ada.id, ACME)
        async with conn.transaction():
            await conn.execute(SET_TENANT, str(ACME))
            assert await conn.fetchval("SELECT content FROM conversation_messages") == (
                "acme secret"
            )
            totals = "SELECT message_count, token_count FROM conversation_sessions"
            assert tuple(await conn.fetchrow(totals)) == (1, 4)
    finally:
        await conn.close()


async def test_the_sweeper_and_cleanup_visit_every_tenant_as_the_application_role(
    app_db: Database,
) -> None:
    # proves: N3, V1, V2
    ada = await _user(app_db, "ada@acme.example")
    quick = Conversations(app_db, idle_timeout=timedelta(minutes=1))
    analytics = QueryAnalytics(app_db)
    for tenant in (ACME, GLOBEX):
        with tenant_context(tenant):
            for _ in range(3):
                await quick.start(ada.id, "bot")
            await analytics.log(ada.id, "old question", "search", "success", 12.0)
            await app_db.run(
                text("UPDATE conversation_sessions SET expires_at = now() - interval '1 hour'")
            )
            await app_db.run(text("UPDATE query_logs SET created_at = now() - interval '100 days'"))
            await analytics.log(ada.id, "new question", "search", "success", 12.0)
    assert await quick.expire(batch_size=2) == 6
    assert await analytics.cleanup(timedelta(days=30), batch_size=1) == 2
    for tenant in (ACME, GLOBEX):
        with tenant_context(tenant):
            assert {s.status for s in await quick.list(ada.id)} == {"expired"}
            history = await analytics.history(ada.id)
            assert [e.query_text for e in history] == ["new question"]


async def test_the_commands_expire_and_clean_up_every_tenant_as_the_application_role(
    app_db: Database, roles: tuple[URL, URL]
) -> None:
    # proves: V1, V2
    ada = await _user(app_db, "ada@acme.example")
    quick = Conversations(app_db, idle_timeout=timedelta(minutes=1))
    analytics = QueryAnalytics(app_db)
    for tenant in (ACME, GLOBEX):
        with tenant_context(tenant):
            await quick.start(ada.id, "bot")
            await quick.start(ada.id, "bot")
            await analytics.log(ada.id, "old", "search", "success", 1.0)
            await app_db.run(
                text("UPDATE conversation_sessions SET expires_at = now() - interval '1 hour'")
            )
            await app_db.run(text("UPDATE query_logs SET created_at = now() - interval '40 days'"))
            await analytics.log(ada.id, "new", "search", "success", 1.0)
    env: dict[str, str | None] = {"DATABASE_URL": raw(roles[1]), "PGSTACK_ENV": "development"}
    expired = await asyncio.to_thread(
        cli, "conversations", "expire", "--batch-size", "1", "--json", env=env
    )
    assert expired.exit_code == 0, expired.output
    assert json.loads(expired.output) == {"expired": 4}
    cleaned = await asyncio.to_thread(
        cli, "analytics", "cleanup", "--older-than-days", "30", env=env
    )
    assert cleaned.exit_code == 0, cleaned.output
    assert "deleted 2 query log entries" in cleaned.output
    again = await asyncio.to_thread(cli, "conversations", "expire", env=env)
    assert "expired 0 idle session(s)" in again.output
    refused = await asyncio.to_thread(
        cli, "analytics", "cleanup", "--older-than-days", "0", env=env
    )
    assert refused.exit_code != 0


async def test_concurrent_appends_as_the_application_role_number_without_gaps(
    app_db: Database,
) -> None:
    # proves: V1, N3
    ada = await _user(app_db, "ada@acme.example")
    conversations = Conversations(app_db)
    assert app_db.read_lane is not None  # the one-statement path, under row-level security
    with tenant_context(ACME):
        chat = await conversations.start(ada.id, "bot")

        async def writer(n: int) -> list[int]:
            return [
                (await conversations.append(chat.id, ada.id, "user", f"{n}", tokens=3)).seq
                for _ in range(10)
            ]

        results = await asyncio.gather(*(writer(n) for n in range(8)))
        assert sorted(s for r in results for s in r) == list(range(1, 81))
        after = await conversations.get(chat.id, ada.id)
        assert (after.message_count, after.token_count) == (80, 240)
    with tenant_context(GLOBEX), pytest.raises(NotFoundError):
        await conversations.append(chat.id, ada.id, "user", "cross-tenant")
