"""The identity checks every request makes (session token, API key) on the read lane.

Every test runs twice: once as is (the check is one statement on the read lane, and the test
checks the lane served it), once with the fast path switched off (the same statement in a
read-only transaction). Same users, same keys, same refusals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, text

from pgstack.db.database import Database
from pgstack.errors import AuthenticationError
from pgstack.identity import Identity, User
from pgstack.repository import fast
from pgstack.testing import record_statements

from .conftest import STRONG, bearer, problem


@pytest.fixture(params=["fast", "ordinary"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Which path the checks take; yields the fast path's outcomes (True: it served)."""
    served: list[bool] = []
    if request.param == "ordinary":

        async def declined(*args: Any, **kwargs: Any) -> tuple[bool, Any]:
            return False, None  # sends nothing: the ordinary path runs the statement

        monkeypatch.setattr(fast, "fetch_one", declined)
        yield served
        assert served == []
        return
    original = fast.fetch_one

    async def spy(*args: Any, **kwargs: Any) -> tuple[bool, Any]:
        done, row = await original(*args, **kwargs)
        served.append(done)
        return done, row

    monkeypatch.setattr(fast, "fetch_one", spy)
    yield served
    assert served and all(served), "the fast path did not serve the checks"


def _columns(obj: Any) -> dict[str, Any]:
    return {a.key: getattr(obj, a.key) for a in inspect(type(obj)).column_attrs}


async def _sql(db: Database, statement: str) -> None:
    async with db.transaction() as session:
        await session.execute(text(statement))


async def test_a_session_token_gives_its_user_as_stored(
    identity: Identity, pgstack_migrated_db: Database, alice: User, path: list[bool]
) -> None:
    # proves: I3
    login = await identity.auth.login("alice@example.com", STRONG)
    with record_statements(pgstack_migrated_db) as log:
        user = await identity.auth.user_for_session(login.token)
    async with pgstack_migrated_db.session() as session:
        stored = await session.get(User, alice.id)
        assert _columns(user) == _columns(stored)
    assert isinstance(user, User) and user.created_at.tzinfo is not None
    state = inspect(user)
    assert state.detached and not state.modified  # as a closed transaction leaves it
    assert login.token not in " ".join(log)  # only its digest travels, as a parameter
    if path:
        # One statement, no BEGIN READ ONLY / COMMIT around it.
        assert len(log) == 1 and log[0].lstrip().upper().startswith("SELECT"), log


async def test_ended_expired_and_unknown_sessions_are_refused(
    identity: Identity, pgstack_migrated_db: Database, alice: User, path: list[bool]
) -> None:
    # proves: I3
    for token in ("pgss_unknown", "", "x" * 10_000, "pgss_' OR 1=1 --"):
        with pytest.raises(AuthenticationError, match="sign in again"):
            await identity.auth.user_for_session(token)
    ended = await identity.auth.login("alice@example.com", STRONG)
    await identity.auth.logout(ended.token)
    with pytest.raises(AuthenticationError, match="sign in again"):
        await identity.auth.user_for_session(ended.token)
    live = await identity.auth.login("alice@example.com", STRONG)
    assert (await identity.auth.user_for_session(live.token)).id == alice.id
    await identity.users.set_active(alice.id, False)
    with pytest.raises(AuthenticationError):
        await identity.auth.user_for_session(live.token)
    await identity.users.set_active(alice.id, True)
    with pytest.raises(AuthenticationError):  # deactivating ended the session for good
        await identity.auth.user_for_session(live.token)
    live = await identity.auth.login("alice@example.com", STRONG)
    assert (await identity.auth.user_for_session(live.token)).id == alice.id
    await _sql(pgstack_migrated_db, "UPDATE login_sessions SET expires_at = now() - interval '1s'")
    with pytest.raises(AuthenticationError):
        await identity.auth.user_for_session(live.token)


async def test_an_api_key_gives_its_row_and_user_as_stored(
    identity: Identity, pgstack_migrated_db: Database, alice: User, path: list[bool]
) -> None:
    # proves: I5
    issued = await identity.api_keys.create(alice.id, "ci", scopes=["reports:read"])
    await identity.api_keys.verify(issued.key)  # the first use writes last_used_at
    with record_statements(pgstack_migrated_db) as log:
        verified = await identity.api_keys.verify(issued.key)
    async with pgstack_migrated_db.session() as session:
        key_row = await session.get(type(issued.api_key), issued.api_key.id)
        user_row = await session.get(User, alice.id)
        assert _columns(verified.api_key) == _columns(key_row)
        assert _columns(verified.user) == _columns(user_row)
    assert verified.api_key.scopes == ["reports:read"] and verified.user.email == alice.email
    verified.require_scopes("reports:read")
    assert inspect(verified.api_key).detached and inspect(verified.user).detached
    assert issued.key not in " ".join(log)
    if path:
        # Used within the touch interval: one statement and no write.
        assert len(log) == 1 and log[0].lstrip().upper().startswith("SELECT"), log


async def test_refused_keys_stay_refused(
    identity: Identity, pgstack_migrated_db: Database, alice: User, path: list[bool]
) -> None:
    # proves: I5
    revoked = await identity.api_keys.create(alice.id, "revoked")
    live = await identity.api_keys.create(alice.id, "live")
    assert (await identity.api_keys.verify(revoked.key)).api_key.id == revoked.api_key.id
    await identity.api_keys.revoke(revoked.api_key.id)
    with pytest.raises(AuthenticationError, match="not valid"):
        await identity.api_keys.verify(revoked.key)
    # The right prefix with another secret: found by prefix, refused by the hash.
    forged = live.key[: len("pgs_") + 9] + revoked.key[len("pgs_") + 9 :]
    with pytest.raises(AuthenticationError):
        await identity.api_keys.verify(forged)
    await identity.users.set_active(alice.id, False)
    with pytest.raises(AuthenticationError, match="not valid"):
        await identity.api_keys.verify(live.key)
    await identity.users.set_active(alice.id, True)
    assert (await identity.api_keys.verify(live.key)).user.id == alice.id
    await identity.users.delete(alice.id)
    with pytest.raises(AuthenticationError, match="not valid"):
        await identity.api_keys.verify(live.key)


async def test_many_requests_check_at_once(
    identity: Identity, alice: User, path: list[bool]
) -> None:
    # proves: I3, I5
    login = await identity.auth.login("alice@example.com", STRONG)
    issued = await identity.api_keys.create(alice.id, "busy")
    await identity.api_keys.verify(issued.key)
    users = await asyncio.gather(*(identity.auth.user_for_session(login.token) for _ in range(30)))
    keys = await asyncio.gather(*(identity.api_keys.verify(issued.key) for _ in range(30)))
    assert {u.id for u in users} == {alice.id} and len({id(u) for u in users}) == 30
    assert {k.api_key.id for k in keys} == {issued.api_key.id}
    assert {k.user.id for k in keys} == {alice.id}


async def test_over_http_both_credentials_work_and_bad_ones_are_401(
    client: httpx.AsyncClient, identity: Identity, alice: User, path: list[bool]
) -> None:
    # proves: W2, I3, I5
    login = await identity.auth.login("alice@example.com", STRONG)
    issued = await identity.api_keys.create(alice.id, "http", scopes=["reports:read"])
    for token in (login.token, issued.key):
        me = await client.get("/auth/me", headers=bearer(token))
        assert me.status_code == 200 and me.json()["email"] == "alice@example.com", me.text
        reports = await client.get("/reports", headers=bearer(token))
        assert reports.json() == {"email": "alice@example.com"}
    problem(await client.get("/auth/me", headers=bearer("pgss_" + "a" * 43)), 401)
    mistyped = issued.key[:-1] + ("1" if issued.key.endswith("0") else "0")
    problem(await client.get("/auth/me", headers=bearer(mistyped)), 401)
    await identity.api_keys.revoke(issued.api_key.id)
    problem(await client.get("/auth/me", headers=bearer(issued.key)), 401)


async def test_login_is_three_statements_and_counts_like_before(
    identity: Identity, pgstack_migrated_db: Database, alice: User, path: list[bool]
) -> None:
    # proves: I1, I3
    await _sql(pgstack_migrated_db, "UPDATE users SET failed_login_count = 2")
    with record_statements(pgstack_migrated_db) as log:
        login = await identity.auth.login("ALICE@example.com", STRONG)
    assert login.user.id == alice.id and login.token.startswith("pgss_")
    assert inspect(login.user).detached and login.user.login_count == 1
    assert login.user.failed_login_count == 0 and login.user.last_login_at is not None
    assert (await identity.auth.user_for_session(login.token)).id == alice.id
    assert login.token not in " ".join(log)
    async with pgstack_migrated_db.session() as session:
        stored = await session.get(User, alice.id)
        assert stored is not None and _columns(stored) == _columns(login.user)
        count = await session.scalar(text("SELECT count(*) FROM login_sessions"))
        assert count == 1
    # The sign-in's security event is one INSERT into the audit log, besides.
    assert sum("INSERT INTO audit_log" in s for s in log) == 1, log
    words = [s.lstrip().split()[0].upper() for s in log if "INSERT INTO audit_log" not in s]
    if path:
        # Each statement is atomic by itself: no BEGIN/COMMIT around any of them.
        assert words == ["UPDATE", "UPDATE", "INSERT"], log
    else:
        assert words.count("UPDATE") == 2 and words.count("INSERT") == 1, log


async def test_concurrent_wrong_guesses_lock_the_account(
    pgstack_migrated_db: Database, path: list[bool]
) -> None:
    # proves: I7
    from pgstack.identity import IdentityConfig

    guarded = Identity(pgstack_migrated_db, IdentityConfig(max_failed_logins=5))
    victim = await guarded.users.create("victim@example.com", STRONG)
    checked: list[str] = []
    original = guarded.hasher.verify_and_update

    def counting(password: str, stored: str | None) -> tuple[bool, str | None]:
        if stored is not None and stored == victim.password_hash:
            checked.append(password)
        return original(password, stored)

    guarded.hasher.verify_and_update = counting  # type: ignore[method-assign]
    guesses = [guarded.auth.login("victim@example.com", f"wrong guess {n}") for n in range(12)]
    results = await asyncio.gather(*guesses, return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results)
    assert len(checked) == 5  # the lockout admitted five guesses, however many came at once
    with pytest.raises(AuthenticationError):
        await guarded.auth.login("victim@example.com", STRONG)  # locked: even the right one
    await _sql(pgstack_migrated_db, "UPDATE users SET locked_until = now() - interval '1s'")
    assert (await guarded.auth.login("victim@example.com", STRONG)).user.id == victim.id
    with pytest.raises(AuthenticationError):
        await guarded.auth.login("nobody@example.com", STRONG)


async def test_login_after_the_server_dropped_every_connection(
    identity: Identity, pgstack_migrated_db: Database, alice: User, path: list[bool]
) -> None:
    # proves: I3, R6
    first = await identity.auth.login("alice@example.com", STRONG)  # the lane's connection opens
    async with pgstack_migrated_db.session() as admin:
        await admin.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    await asyncio.sleep(0.05)  # the drop reaches the client, as between two requests
    again = await identity.auth.login("alice@example.com", STRONG)
    assert again.user.id == alice.id and again.token != first.token
    assert again.user.login_count == 2  # each login counted once: nothing was sent twice
    assert (await identity.auth.user_for_session(again.token)).id == alice.id
