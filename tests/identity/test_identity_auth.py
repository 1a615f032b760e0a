"""Authentication: equal timing, lockout, sessions, password change, reset and verification."""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import AuthenticationError, InvalidInputError
from pgstack.identity import Identity, IdentityConfig, User

from .conftest import OTHER_STRONG, STRONG, reset_token


async def _sql(db: Database, statement: str, **params: object) -> None:
    async with db.transaction() as session:
        await session.execute(text(statement), params)


async def test_unknown_email_takes_as_long_as_a_wrong_password(
    pgstack_migrated_db: Database,
) -> None:
    # proves: I3
    # A high limit keeps the wrong-password account unlocked: both paths stay comparable.
    identity = Identity(pgstack_migrated_db, IdentityConfig(max_failed_logins=1000))
    await identity.users.create("known@example.com", STRONG)

    async def duration(email: str) -> float:
        start = time.perf_counter()
        with pytest.raises(AuthenticationError) as failure:
            await identity.auth.authenticate(email, "not the password at all")
        elapsed = time.perf_counter() - start
        messages.add(failure.value.message)
        return elapsed

    messages: set[str] = set()
    await duration("warm@example.com")
    # A leak (no hash for an unknown address) shows in every measurement, at well under
    # 0.8; a busy machine can tilt one measurement, so up to three are taken.
    ratios: list[float] = []
    for _ in range(3):
        unknown: list[float] = []
        wrong: list[float] = []
        for _ in range(30):  # interleaved, so machine noise hits both alike
            unknown.append(await duration("nobody@example.com"))
            wrong.append(await duration("known@example.com"))
        ratios.append(statistics.median(unknown) / statistics.median(wrong))
        if 0.8 < ratios[-1] < 1.2:
            break
    assert 0.8 < ratios[-1] < 1.2, f"median unknown/wrong, each measurement: {ratios}"
    assert len(messages) == 1, "the answer must not say whether the account exists"


async def test_lockout_refuses_even_the_right_password_until_it_passes(
    pgstack_migrated_db: Database,
) -> None:
    # proves: I3
    identity = Identity(
        pgstack_migrated_db, IdentityConfig(max_failed_logins=3, lockout=timedelta(minutes=5))
    )
    user = await identity.users.create("locky@example.com", STRONG)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await identity.auth.authenticate("locky@example.com", "wrong password here")
    with pytest.raises(AuthenticationError):
        await identity.auth.authenticate("locky@example.com", STRONG)
    stored = await identity.users.get(user.id)
    assert stored.locked_until is not None
    assert (stored.locked_until - stored.updated_at) > timedelta(minutes=4)
    # The lock passes (moved into the past rather than waiting five minutes).
    await _sql(
        pgstack_migrated_db,
        "UPDATE users SET locked_until = now() - interval '1 second' WHERE id = :id",
        id=user.id,
    )
    signed_in = await identity.auth.authenticate("locky@example.com", STRONG)
    assert signed_in.failed_login_count == 0 and signed_in.locked_until is None


async def test_success_resets_the_failure_count_and_records_the_login(
    identity: Identity, alice: User
) -> None:
    # proves: I3, I1
    for _ in range(4):
        with pytest.raises(AuthenticationError):
            await identity.auth.authenticate("alice@example.com", "wrong password here")
    assert (await identity.users.get(alice.id)).failed_login_count == 4
    user = await identity.auth.authenticate("ALICE@example.com", STRONG)
    assert user.failed_login_count == 0 and user.login_count == 1
    assert user.last_login_at is not None
    user = await identity.auth.authenticate("alice@example.com", STRONG)
    assert user.login_count == 2


async def test_inactive_deleted_and_external_users_cannot_log_in(identity: Identity) -> None:
    # proves: I3
    ext = await identity.users.create("ext@example.com", provider="github", provider_user_id="7")
    with pytest.raises(AuthenticationError):
        await identity.auth.authenticate("ext@example.com", STRONG)
    user = await identity.users.create("gone@example.com", STRONG)
    await identity.users.set_active(user.id, False)
    with pytest.raises(AuthenticationError, match="deactivated"):
        await identity.auth.authenticate("gone@example.com", STRONG)
    await identity.users.delete(user.id)
    with pytest.raises(AuthenticationError, match="wrong"):
        await identity.auth.authenticate("gone@example.com", STRONG)
    assert ext.is_external


async def test_sessions_are_opaque_hashed_and_end_at_logout(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I3, W2
    login = await identity.auth.login("alice@example.com", STRONG)
    assert login.token not in repr(login)
    assert (await identity.auth.user_for_session(login.token)).id == alice.id
    async with pgstack_migrated_db.transaction() as session:
        stored = await session.scalar(text("SELECT token_hash FROM login_sessions"))
    assert stored != login.token and login.token not in str(stored)
    await identity.auth.logout(login.token)
    with pytest.raises(AuthenticationError, match="sign in again"):
        await identity.auth.user_for_session(login.token)
    second = await identity.auth.login("alice@example.com", STRONG)
    await _sql(pgstack_migrated_db, "UPDATE login_sessions SET expires_at = now() - interval '1s'")
    with pytest.raises(AuthenticationError):
        await identity.auth.user_for_session(second.token)


async def test_change_password_needs_the_current_one_and_ends_sessions(
    identity: Identity, alice: User
) -> None:
    # proves: I3
    login = await identity.auth.login("alice@example.com", STRONG)
    with pytest.raises(AuthenticationError, match="password is wrong"):
        await identity.auth.change_password(alice.id, "not it at all", OTHER_STRONG)
    with pytest.raises(InvalidInputError, match="at least 12"):
        await identity.auth.change_password(alice.id, STRONG, "short")
    await identity.auth.change_password(alice.id, STRONG, OTHER_STRONG)
    with pytest.raises(AuthenticationError):
        await identity.auth.authenticate("alice@example.com", STRONG)
    assert await identity.auth.authenticate("alice@example.com", OTHER_STRONG)
    with pytest.raises(AuthenticationError):
        await identity.auth.user_for_session(login.token)


async def test_reset_tokens_are_single_use_expiring_and_die_with_a_password_change(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I3
    assert await identity.auth.request_password_reset("nobody@example.com") is None
    token = await reset_token(identity, "Alice@example.com")
    assert token is not None and len(token) >= 43

    # A weak new password leaves the token usable.
    with pytest.raises(InvalidInputError):
        await identity.auth.reset_password(token, "weak")
    user = await identity.auth.reset_password(token, OTHER_STRONG)
    assert user.id == alice.id
    assert await identity.auth.authenticate("alice@example.com", OTHER_STRONG)
    with pytest.raises(AuthenticationError, match="already used"):
        await identity.auth.reset_password(token, STRONG)

    expired = await reset_token(identity, "alice@example.com")
    assert expired is not None
    await _sql(pgstack_migrated_db, "UPDATE user_tokens SET expires_at = now() - interval '1s'")
    with pytest.raises(AuthenticationError):
        await identity.auth.reset_password(expired, STRONG)

    before_change = await reset_token(identity, "alice@example.com")
    assert before_change is not None
    await identity.auth.change_password(alice.id, OTHER_STRONG, STRONG)
    with pytest.raises(AuthenticationError):
        await identity.auth.reset_password(before_change, OTHER_STRONG)
    assert await identity.auth.authenticate("alice@example.com", STRONG)

    with pytest.raises(AuthenticationError):
        await identity.auth.reset_password("made-up-token", OTHER_STRONG)


async def test_email_verification_token_is_single_use_and_purpose_bound(
    identity: Identity, alice: User
) -> None:
    # proves: I3
    token = await identity.auth.request_email_verification(alice.id)
    with pytest.raises(AuthenticationError):
        await identity.auth.reset_password(token, OTHER_STRONG)
    user = await identity.auth.verify_email(token)
    assert user.is_verified
    with pytest.raises(AuthenticationError):
        await identity.auth.verify_email(token)
    with pytest.raises(InvalidInputError, match="already verified"):
        await identity.auth.request_email_verification(alice.id)


async def test_purge_removes_only_long_ended_sessions_and_tokens(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I3
    live = await identity.auth.login("alice@example.com", STRONG)
    old = await identity.auth.login("alice@example.com", STRONG)
    await identity.auth.logout(old.token)
    fresh_token = await reset_token(identity, "alice@example.com")
    await _sql(
        pgstack_migrated_db,
        "UPDATE login_sessions SET revoked_at = now() - interval '3 days' "
        "WHERE revoked_at IS NOT NULL",
    )
    await _sql(
        pgstack_migrated_db,
        "INSERT INTO user_tokens (id, user_id, purpose, token_hash, expires_at) "
        "VALUES (gen_random_uuid(), :u, 'password_reset', 'x', now() - interval '2 days')",
        u=alice.id,
    )
    assert await identity.auth.purge_expired() == 2
    assert (await identity.auth.user_for_session(live.token)).id == alice.id
    assert fresh_token is not None
    assert await identity.auth.reset_password(fresh_token, OTHER_STRONG)


async def test_deactivating_through_update_ends_sessions_like_set_active(
    identity: Identity, alice: User
) -> None:
    # proves: I3
    login = await identity.auth.login("alice@example.com", STRONG)
    await identity.users.update(alice.id, is_active=False)
    await identity.users.update(alice.id, is_active=True)
    # Active again, but the session from before stays ended.
    with pytest.raises(AuthenticationError):
        await identity.auth.user_for_session(login.token)
