"""The token vault stores, reads and deletes provider tokens, encrypted and bound to their row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.engine import URL

from pgstack.crypto import KeyRing
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import EncryptionError, InvalidInputError, NotFoundError
from pgstack.migrations import MigrationProject, check
from pgstack.testing import assert_migrations_roundtrip, schema_snapshot
from pgstack.tokens import TokenVault

TOKEN_TABLES = ("oauth_tokens", "token_refresh_audit")


async def test_save_then_get_returns_the_decrypted_token(vault: TokenVault) -> None:
    # proves: T1
    saved = await vault.save(
        "hubspot", "acme", "at-1", "rt-1", expires_in=1800, scopes="crm.read crm.write"
    )
    token = await vault.get("hubspot", "acme")
    assert (token.access_token, token.refresh_token) == ("at-1", "rt-1")
    assert token.scopes == ("crm.read", "crm.write")
    assert token.token_type == "Bearer"
    assert token.id == saved.id and token.version == 1
    assert token.expires_at is not None
    assert timedelta(minutes=29) < token.expires_at - datetime.now(UTC) <= timedelta(minutes=30)
    assert "at-1" not in repr(token) and "rt-1" not in repr(token)


async def test_save_upserts_one_row_and_keeps_the_refresh_token_when_none_given(
    vault: TokenVault, pgstack_migrated_url: URL
) -> None:
    # proves: T1
    tenant = uuid.uuid4()
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        await conn.execute(
            "INSERT INTO tenants (id, external_id, name) VALUES ($1, 'acme', 'acme')", tenant
        )
        first = await vault.save(
            "google", "a@x.io", "at-1", "rt-1", expires_in=60, tenant_id=tenant
        )
        expires = datetime.now(UTC) + timedelta(hours=2)
        second = await vault.save(
            "google", "a@x.io", "at-2", expires_at=expires, scopes=["mail"], tenant_id=tenant
        )
        assert second.id == first.id and second.version == 2
        assert second.tenant_id == tenant == first.tenant_id
        assert (second.access_token, second.refresh_token) == ("at-2", "rt-1")
        assert second.scopes == ("mail",)
        assert second.expires_at == expires
        assert await conn.fetchval("SELECT count(*) FROM oauth_tokens") == 1
    finally:
        await conn.close()


async def test_save_refuses_contradictory_or_naive_expiry(vault: TokenVault) -> None:
    # proves: T1
    with pytest.raises(InvalidInputError, match="not both"):
        await vault.save("p", "a", "at", expires_in=10, expires_at=datetime.now(UTC))
    with pytest.raises(InvalidInputError, match="naive"):
        await vault.save("p", "a", "at", expires_at=datetime.now())


async def test_get_of_an_unknown_account_is_not_found(vault: TokenVault) -> None:
    # proves: T2
    with pytest.raises(NotFoundError, match="provider 'hubspot', account 'nobody'"):
        await vault.get("hubspot", "nobody")


async def test_is_expired_uses_a_five_minute_buffer_by_default(vault: TokenVault) -> None:
    # proves: T2
    soon = await vault.save("p", "soon", "at", "rt", expires_in=240)
    later = await vault.save("p", "later", "at", "rt", expires_in=600)
    forever = await vault.save("p", "forever", "at", "rt")
    assert vault.is_expired(soon) and not vault.is_expired(later)
    assert vault.is_expired(later, buffer=timedelta(minutes=15))
    assert not vault.is_expired(forever)
    assert soon.status() == "expiring" and later.status() == "valid"
    assert forever.status() == "no-expiry"


async def test_as_dict_is_sdk_shaped(vault: TokenVault) -> None:
    # proves: T2
    expires = datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    token = await vault.save("p", "a", "at", "rt", expires_at=expires, token_type="bearer")
    shaped = vault.as_dict(token)
    assert shaped["access_token"] == "at" and shaped["refresh_token"] == "rt"
    assert shaped["expires_at"] == "2099-01-02T03:04:05Z"
    assert shaped["token_type"] == "bearer"
    assert isinstance(shaped["expires_in"], int) and shaped["expires_in"] > 0
    old = await vault.save("p", "old", "at", "rt", expires_in=-100)
    assert vault.as_dict(old)["expires_in"] == 0


async def test_delete_removes_the_token(vault: TokenVault) -> None:
    # proves: T2
    await vault.save("p", "a", "at", "rt", expires_in=60)
    assert await vault.delete("p", "a") is True
    assert await vault.delete("p", "a") is False
    with pytest.raises(NotFoundError):
        await vault.get("p", "a")


async def test_needing_refresh_lists_tokens_expiring_within_the_window(vault: TokenVault) -> None:
    # proves: T4
    await vault.save("p", "in-2-min", "at", "rt", expires_in=120)
    await vault.save("p", "in-20-min", "at", "rt", expires_in=1200)
    await vault.save("p", "expired", "at", "rt", expires_in=-60)
    await vault.save("p", "never", "at", "rt")
    due = await vault.needing_refresh()
    assert [t.account for t in due] == ["expired", "in-2-min"]
    due = await vault.needing_refresh(within=timedelta(minutes=30))
    assert [t.account for t in due] == ["expired", "in-2-min", "in-20-min"]
    assert all(not hasattr(t, "access_token") for t in due)


async def test_raw_sql_finds_no_plaintext_token(
    vault: TokenVault, pgstack_migrated_url: URL
) -> None:
    # proves: T1
    secrets = {f"access-{uuid.uuid4().hex}", f"refresh-{uuid.uuid4().hex}"}
    access, refresh = sorted(secrets)
    await vault.save("p", "a", access, refresh, expires_in=-1)

    async def refresher(old: str) -> dict[str, object]:
        raise RuntimeError(f"provider said no to {old}")

    await vault.save("p", "b", "at", refresh, expires_in=-1)
    with pytest.raises(Exception, match="provider said no to \\*\\*\\*"):
        await vault.get_valid_token("p", "b", refresher)
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        rows = []
        for table in TOKEN_TABLES:
            rows += [str(tuple(row)) for row in await conn.fetch(f"SELECT * FROM {table}")]
    finally:
        await conn.close()
    dump = "\n".join(rows)
    assert "provider said no to ***" in dump
    for secret in secrets:
        assert secret not in dump


async def test_a_ciphertext_copied_to_another_row_fails_to_decrypt(
    vault: TokenVault, pgstack_migrated_url: URL
) -> None:
    # proves: T1
    await vault.save("hubspot", "victim", "victim-access", "victim-refresh", expires_in=3600)
    await vault.save("hubspot", "attacker", "attacker-access", "attacker-refresh")
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        await conn.execute(
            "UPDATE oauth_tokens SET access_token = (SELECT access_token FROM oauth_tokens "
            "WHERE account = 'victim') WHERE account = 'attacker'"
        )
    finally:
        await conn.close()
    with pytest.raises(
        EncryptionError,
        match=r"access token of provider 'hubspot', account "
        r"'attacker' cannot be decrypted.*copied from another",
    ):
        await vault.get("hubspot", "attacker")
    assert (await vault.get("hubspot", "victim")).access_token == "victim-access"


async def test_history_lists_attempts_newest_first(vault: TokenVault) -> None:
    # proves: T4
    await vault.save("p", "a", "at-0", "rt-0", expires_in=-1)
    answers = iter([RuntimeError("boom"), {"access_token": "at-1", "expires_in": 3600}])

    async def refresher(old: str) -> dict[str, object]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    fast_retry = TokenVault(vault.db, backoff_base=timedelta(0))
    with pytest.raises(Exception, match="boom"):
        await fast_retry.get_valid_token("p", "a", refresher)
    token = await fast_retry.get_valid_token("p", "a", refresher)
    assert token.access_token == "at-1" and token.refresh_token == "rt-0"
    attempts = await vault.history("p", "a")
    assert [a.success for a in attempts] == [True, False]
    assert attempts[1].error_message == "RuntimeError: boom"
    assert attempts[0].new_expires_at == token.expires_at
    assert attempts[0].previous_expires_at == attempts[1].previous_expires_at
    assert await vault.history("p", "other") == []


def test_tokens_migration_round_trips_and_matches_the_models(
    pgstack_empty_url: URL, token_keys: KeyRing
) -> None:
    # proves: G2, T1
    project = MigrationProject.pgstack_only()
    assert_migrations_roundtrip(pgstack_empty_url, project=project)
    snapshot = schema_snapshot(pgstack_empty_url)
    assert "relation public.oauth_tokens (r)" in snapshot
    assert any("uq_oauth_tokens_tenant_id_provider_account" in line for line in snapshot)
    assert any("ix_oauth_tokens_expires_at" in line for line in snapshot)
    problems = [
        p
        for p in check(pgstack_empty_url, project=project)
        if any(table in p for table in TOKEN_TABLES)
    ]
    assert problems == []
