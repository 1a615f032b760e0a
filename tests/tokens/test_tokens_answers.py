"""Refresher answers of every shape real clients return; nothing after the answer loses it."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, quote_plus

import asyncpg
import httpx
import pytest
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from httpx_oauth.oauth2 import OAuth2, OAuth2Token, RefreshTokenError
from sqlalchemy.engine import URL
from tokens_fake_provider import TOKEN_URL, FakeProvider, token_endpoint

from pgstack.crypto import KeyRing
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import TokenRefreshError
from pgstack.tokens import TokenVault

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
EPOCH = int(NOW.timestamp())


def clocked(db: Database, **kwargs: Any) -> TokenVault:
    return TokenVault(db, refresh_timeout=5, clock=lambda: NOW, **kwargs)


# -- real clients against a provider that rotates --------------------------------------------


async def test_authlib_client_refreshes_and_rotates_through_the_vault(
    vault: TokenVault, provider: FakeProvider
) -> None:
    # proves: T6
    first = await provider.grant()
    await vault.save("crm", "acme", "at-0", first, expires_in=-1)
    async with AsyncOAuth2Client(
        "client-id", "client-secret", transport=httpx.ASGITransport(app=token_endpoint(provider))
    ) as client:

        async def refresher(refresh_token: str) -> Any:
            return await client.refresh_token(TOKEN_URL, refresh_token=refresh_token)

        answer = await refresher(await provider.grant())
        # What the issue met: Authlib answers with expires_in and an integer epoch expires_at.
        assert isinstance(answer["expires_at"], int) and answer["expires_in"] == 3600
        tokens = await asyncio.gather(
            *(vault.get_valid_token("crm", "acme", refresher) for _ in range(10))
        )
        second = await vault.get("crm", "acme")
        await _expire(vault)
        third = await vault.get_valid_token("crm", "acme", refresher)
    assert {t.access_token for t in tokens} == {second.access_token}
    assert second.refresh_token not in (None, first)
    assert third.access_token != second.access_token
    calls = [sent for sent, _ in await provider.calls()]
    assert calls[1:] == [first, second.refresh_token]  # each refresh token sent once
    assert all(accepted for _, accepted in await provider.calls())
    assert [h.success for h in await vault.history("crm", "acme")] == [True, True]


class _AsgiOAuth2(OAuth2):
    """httpx-oauth's generic client, its HTTP going to the fake provider in-process."""

    def __init__(self, app: Any) -> None:
        super().__init__("client-id", "client-secret", TOKEN_URL, TOKEN_URL, TOKEN_URL)
        self._app = app

    def get_httpx_client(self) -> Any:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self._app))


async def test_httpx_oauth_client_refreshes_through_the_vault_and_its_errors_are_coded(
    vault: TokenVault, provider: FakeProvider
) -> None:
    # proves: T6
    first = await provider.grant()
    await vault.save("crm", "acme", "at-0", first, expires_in=-1)
    client = _AsgiOAuth2(token_endpoint(provider))
    tokens = await asyncio.gather(
        *(vault.get_valid_token("crm", "acme", client.refresh_token) for _ in range(10))
    )
    assert len({t.access_token for t in tokens}) == 1
    assert tokens[0].refresh_token not in (None, first)
    assert len(await provider.calls()) == 1
    # The provider refuses a used refresh token: the audit names the error code it sent.
    await vault.save("crm", "reused", "at-r", first, expires_in=-1)
    with pytest.raises(TokenRefreshError, match="RefreshTokenError: invalid_grant"):
        await vault.get_valid_token("crm", "reused", client.refresh_token)
    [attempt] = await vault.history("crm", "reused")
    assert attempt.error_message is not None
    assert attempt.error_message.startswith("RefreshTokenError: invalid_grant")


# -- shapes ----------------------------------------------------------------------------------

IN_AN_HOUR = NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("answer", "expires_at"),
    [
        # Authlib's OAuth2Token: both fields, integer epoch.
        ({"expires_in": 3600, "expires_at": EPOCH + 3600}, IN_AN_HOUR),
        # requests-oauthlib: both fields, float epoch.
        ({"expires_in": 3600.0, "expires_at": EPOCH + 3600.25}, IN_AN_HOUR),
        # httpx-oauth's OAuth2Token, built from the provider's JSON.
        (OAuth2Token({"access_token": "x", "expires_at": EPOCH + 3600}), IN_AN_HOUR),
        # Raw provider JSON: seconds as text, an ISO-8601 expiry, a naive one (UTC).
        ({"expires_in": "3600"}, IN_AN_HOUR),
        ({"expires_at": "2030-01-01T13:00:00Z"}, IN_AN_HOUR),
        ({"expires_at": "2030-01-01T14:00:00+01:00"}, IN_AN_HOUR),
        ({"expires_at": "2030-01-01T13:00:00"}, IN_AN_HOUR),
        ({"expires_at": str(EPOCH + 3600)}, IN_AN_HOUR),
        ({"expires_at": IN_AN_HOUR}, IN_AN_HOUR),
        # Both, disagreeing: the earlier wins, so the token is never used past either.
        ({"expires_in": 60, "expires_at": EPOCH + 3600}, NOW + timedelta(seconds=60)),
        # No expiry at all.
        ({}, None),
    ],
)
async def test_every_shape_real_clients_return_is_stored_with_its_expiry(
    pgstack_migrated_db: Database, token_keys: KeyRing, answer: Any, expires_at: Any
) -> None:
    # proves: T6
    vault = clocked(pgstack_migrated_db)
    await vault.save("crm", "acme", "at-0", "rt-0", expires_at=NOW - timedelta(seconds=1))

    async def refresher(refresh_token: str) -> Any:
        shaped = answer if isinstance(answer, OAuth2Token) else dict(answer)
        shaped.update(access_token="at-1", refresh_token="rt-1", token_type="bearer")
        return shaped

    token = await vault.get_valid_token("crm", "acme", refresher)
    assert (token.access_token, token.refresh_token) == ("at-1", "rt-1")
    if expires_at is None:
        assert token.expires_at is None
    else:
        assert token.expires_at is not None
        assert abs(token.expires_at - expires_at) < timedelta(seconds=1)
    assert token.token_type == "bearer"


async def test_an_answer_without_a_refresh_token_keeps_the_old_one(
    pgstack_migrated_db: Database, token_keys: KeyRing
) -> None:
    # proves: T6
    vault = clocked(pgstack_migrated_db)
    await vault.save("crm", "acme", "at-0", "rt-0", expires_at=NOW)

    async def refresher(refresh_token: str) -> Any:
        return {"access_token": "at-1", "expires_in": 3600, "scope": "a b"}

    token = await vault.get_valid_token("crm", "acme", refresher)
    assert (token.access_token, token.refresh_token, token.scopes) == ("at-1", "rt-0", ("a", "b"))


@pytest.mark.parametrize(
    "broken",
    [
        {"expires_in": "soon"},
        {"expires_in": 10**400},
        {"expires_in": float("nan")},
        {"expires_at": 10**20},
        {"expires_at": "next tuesday"},
        {"expires_at": True},
        {"access_token": None},
        {"access_token": 42},
        {"token_type": ["bearer"]},
        {"scope": {"a": 1}},
    ],
)
async def test_an_unusable_answer_still_stores_the_rotated_refresh_token(
    pgstack_migrated_db: Database, token_keys: KeyRing, broken: dict[str, Any]
) -> None:
    # proves: T6
    vault = clocked(pgstack_migrated_db, backoff_base=timedelta(seconds=0))
    await vault.save("crm", "acme", "at-0", "rt-0", expires_at=NOW)
    sent: list[str] = []

    async def refresher(refresh_token: str) -> Any:
        sent.append(refresh_token)
        if len(sent) == 1:
            return {"access_token": "at-1", "refresh_token": "rt-1", **broken}
        return {"access_token": "at-2", "refresh_token": "rt-2", "expires_in": 3600}

    with pytest.raises(TokenRefreshError, match="answer was unusable"):
        await vault.get_valid_token("crm", "acme", refresher)
    stored = await vault.get("crm", "acme")
    assert stored.refresh_token == "rt-1"  # what the provider rotated to is kept
    assert stored.last_error is not None and "answer was unusable" in stored.last_error
    [failure] = await vault.history("crm", "acme")
    assert not failure.success and failure.error_message == stored.last_error
    # The next attempt sends the rotated token, not the one the provider retired.
    token = await vault.get_valid_token("crm", "acme", refresher)
    assert sent == ["rt-0", "rt-1"]
    assert (token.access_token, token.refresh_token) == ("at-2", "rt-2")


# -- nothing after the answer loses it -------------------------------------------------------


@pytest.mark.parametrize("stopped", ["caller", "background worker"])
async def test_a_refresh_cancelled_after_the_provider_answered_loses_nothing(
    vault: TokenVault, provider: FakeProvider, stopped: str
) -> None:
    # proves: T6
    first = await provider.grant()
    await vault.save("crm", "acme", "at-0", first, expires_in=60)
    answered = asyncio.Event()

    async def refresher(refresh_token: str) -> Any:
        answer = await provider.refresh(refresh_token)
        answered.set()
        return answer

    work = (
        vault.get_valid_token("crm", "acme", refresher)
        if stopped == "caller"
        else vault.refresh_due({"crm": refresher})
    )
    task: asyncio.Task[Any] = asyncio.create_task(work)
    await answered.wait()
    # The caller goes away (a closed request, a deploy) while the answer is being stored.
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10):
        while not await vault.history("crm", "acme"):
            await asyncio.sleep(0.02)
    stored = await vault.get("crm", "acme")
    assert stored.refresh_token not in (None, first)
    assert stored.access_token != "at-0"
    [attempt] = await vault.history("crm", "acme")
    assert attempt.success
    # The stored refresh token is the one the provider issued: the next refresh works.
    await _expire(vault)
    again = await vault.get_valid_token("crm", "acme", provider.refresh)
    assert again.access_token != stored.access_token
    assert all(accepted for _, accepted in await provider.calls())


async def test_a_connection_lost_after_the_provider_answered_loses_nothing(
    vault: TokenVault, provider: FakeProvider, pgstack_migrated_url: URL
) -> None:
    # proves: T6
    first = await provider.grant()
    await vault.save("crm", "acme", "at-0", first, expires_in=-1)

    async def refresher(refresh_token: str) -> Any:
        answer = await provider.refresh(refresh_token)
        # The connection holding the row lock dies before the answer is written.
        killer = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
        try:
            killed = await killer.fetchval(
                "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l "
                "JOIN pg_database d ON d.oid = l.database AND d.datname = current_database() "
                "WHERE l.relation = 'oauth_tokens'::regclass AND l.mode = 'RowShareLock' "
                "AND l.pid <> pg_backend_pid()"
            )
        finally:
            await killer.close()
        assert killed == 1
        return answer

    token = await vault.get_valid_token("crm", "acme", refresher)
    stored = await vault.get("crm", "acme")
    assert stored.refresh_token == token.refresh_token
    assert stored.refresh_token not in (None, first)
    assert [h.success for h in await vault.history("crm", "acme")] == [True]
    await _expire(vault)
    await vault.get_valid_token("crm", "acme", provider.refresh)
    assert all(accepted for _, accepted in await provider.calls())


# -- redaction -------------------------------------------------------------------------------

SECRET = 'rt/Zx+9="q"&é<ab>'


def _encodings(secret: str) -> list[str]:
    return [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    ]


@pytest.mark.parametrize("form", range(5))
async def test_an_error_quoting_the_refresh_token_in_any_encoding_never_stores_or_logs_it(
    pgstack_migrated_db: Database,
    token_keys: KeyRing,
    caplog: pytest.LogCaptureFixture,
    form: int,
) -> None:
    # proves: T3, T6
    vault = clocked(pgstack_migrated_db)
    await vault.save("crm", "acme", "at-secret-0", SECRET, expires_at=NOW)
    quoted = _encodings(SECRET)[form]

    async def refresher(refresh_token: str) -> Any:
        raise RuntimeError(f"POST /token body=grant_type=refresh_token&refresh_token={quoted}")

    caplog.set_level(logging.WARNING, logger="pgstack.tokens")
    with pytest.raises(TokenRefreshError) as raised:
        await vault.get_valid_token("crm", "acme", refresher)
    stored = await vault.get("crm", "acme")
    [attempt] = await vault.history("crm", "acme")
    texts = [str(stored.last_error), str(attempt.error_message), caplog.text, str(raised.value)]
    for text in texts:
        for encoded in _encodings(SECRET):
            assert encoded not in text
    assert stored.last_error is not None and stored.last_error.startswith("RuntimeError: ")


@pytest.mark.parametrize(
    "error",
    [
        OAuthError(error="invalid_grant", description="Token is not active"),
        RefreshTokenError(
            f"refresh failed for {SECRET}",
            httpx.Response(400, json={"error": "invalid_grant", "error_description": SECRET}),
        ),
        httpx.HTTPStatusError(
            f"400 for refresh_token={quote(SECRET)}",
            request=httpx.Request("POST", TOKEN_URL),
            response=httpx.Response(400, json={"error": "invalid_grant"}),
        ),
    ],
    ids=["authlib", "httpx-oauth", "httpx"],
)
async def test_a_provider_error_is_recorded_as_type_and_error_code(
    pgstack_migrated_db: Database, token_keys: KeyRing, error: Exception
) -> None:
    # proves: T3, T6
    vault = clocked(pgstack_migrated_db)
    await vault.save("crm", "acme", "at-0", SECRET, expires_at=NOW)

    async def refresher(refresh_token: str) -> Any:
        raise error

    with pytest.raises(TokenRefreshError):
        await vault.get_valid_token("crm", "acme", refresher)
    stored = await vault.get("crm", "acme")
    assert stored.last_error is not None
    assert stored.last_error.startswith(f"{type(error).__name__}: invalid_grant")
    for encoded in _encodings(SECRET):
        assert encoded not in stored.last_error


async def _expire(vault: TokenVault) -> None:
    token = await vault.get("crm", "acme")
    await vault.save(
        "crm", "acme", token.access_token, expires_at=datetime.now(UTC) - timedelta(minutes=1)
    )
