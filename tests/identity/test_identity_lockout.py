"""The lockout under attack: concurrent guesses, and every secret check feeding one count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import AuthenticationError
from pgstack.identity import Identity, IdentityConfig, User
from pgstack.identity import totp as totp_module

from .conftest import OTHER_STRONG, STRONG

LIMIT = 5
WRONG = "not the password at all"
NOW = 1_800_000_015.0  # a pinned clock, mid-step: codes at NOW - 30 and NOW are both fresh


def count_real_checks(identity: Identity, user: User) -> list[str]:
    """Each password compared against `user`'s real hash (dummy-hash checks are not counted)."""
    checked: list[str] = []
    original: Callable[..., Any] = identity.hasher.verify_and_update

    def counting(password: str, stored: str | None) -> tuple[bool, str | None]:
        if stored is not None and stored == user.password_hash:
            checked.append(password)
        return original(password, stored)  # type: ignore[no-any-return]

    identity.hasher.verify_and_update = counting  # type: ignore[method-assign]
    return checked


@pytest.fixture
def guarded(pgstack_migrated_db: Database) -> Identity:
    return Identity(
        pgstack_migrated_db,
        IdentityConfig(max_failed_logins=LIMIT, lockout=timedelta(minutes=5), clock=lambda: NOW),
    )


@pytest.fixture
async def victim(guarded: Identity) -> User:
    return await guarded.users.create("victim@example.com", STRONG)


async def _unlock(identity: Identity, user: User) -> None:
    async with identity.db.transaction() as session:
        await session.execute(
            text("UPDATE users SET locked_until = now() - interval '1 second' WHERE id = :id"),
            {"id": user.id},
        )


async def _refused(call: Any) -> bool:
    try:
        await call
    except AuthenticationError:
        return True
    return False


async def test_fifty_concurrent_guesses_check_at_most_the_limit(
    guarded: Identity, victim: User
) -> None:
    # proves: I7, I3
    checked = count_real_checks(guarded, victim)
    results = await asyncio.gather(
        *(_refused(guarded.auth.authenticate("victim@example.com", WRONG)) for _ in range(50))
    )
    assert all(results)
    assert 0 < len(checked) <= LIMIT, f"{len(checked)} guesses checked against the real hash"
    # The right password now is refused, and is not even compared: the account is locked.
    with pytest.raises(AuthenticationError):
        await guarded.auth.authenticate("victim@example.com", STRONG)
    assert STRONG not in checked
    stored = await guarded.users.get(victim.id)
    assert stored.locked_until is not None and stored.failed_login_count == LIMIT


async def test_a_right_password_racing_wrong_ones_does_not_lift_the_lock(
    guarded: Identity, victim: User
) -> None:
    # proves: I7
    attempts = [guarded.auth.authenticate("victim@example.com", WRONG) for _ in range(30)]
    attempts.insert(20, guarded.auth.authenticate("victim@example.com", STRONG))
    await asyncio.gather(*(_refused(a) for a in attempts))
    # Whatever the order, the wrong guesses lock the account and the lock stays.
    stored = await guarded.users.get(victim.id)
    assert stored.locked_until is not None
    with pytest.raises(AuthenticationError):
        await guarded.auth.authenticate("victim@example.com", STRONG)


async def test_the_attempt_that_reaches_the_limit_may_still_succeed(
    guarded: Identity, victim: User
) -> None:
    # proves: I7, I3
    for _ in range(LIMIT - 1):
        with pytest.raises(AuthenticationError):
            await guarded.auth.authenticate("victim@example.com", WRONG)
    user = await guarded.auth.authenticate("victim@example.com", STRONG)
    assert user.failed_login_count == 0 and user.locked_until is None


async def test_change_password_and_disable_feed_the_same_lockout(
    guarded: Identity, victim: User
) -> None:
    # proves: I7
    checked = count_real_checks(guarded, victim)
    enrolment = await guarded.two_factor.enrol(victim.id)
    await guarded.two_factor.confirm(victim.id, pyotp.TOTP(enrolment.secret).at(NOW))
    guesses = [guarded.two_factor.disable(victim.id, password=WRONG) for _ in range(20)]
    assert all(await asyncio.gather(*(_refused(g) for g in guesses)))
    assert len(checked) <= LIMIT
    # Locked now for every check: login, password change and disabling, even when right.
    with pytest.raises(AuthenticationError):
        await guarded.auth.change_password(victim.id, STRONG, OTHER_STRONG)
    with pytest.raises(AuthenticationError):
        await guarded.two_factor.disable(victim.id, password=STRONG)
    with pytest.raises(AuthenticationError):
        await guarded.auth.authenticate("victim@example.com", STRONG)
    stored = await guarded.users.get(victim.id)
    assert stored.two_factor_enabled and stored.locked_until is not None
    assert STRONG not in checked


async def test_change_password_guesses_lock_the_login(guarded: Identity, victim: User) -> None:
    # proves: I7
    for _ in range(LIMIT):
        with pytest.raises(AuthenticationError):
            await guarded.auth.change_password(victim.id, WRONG, OTHER_STRONG)
    with pytest.raises(AuthenticationError):
        await guarded.auth.change_password(victim.id, STRONG, OTHER_STRONG)
    with pytest.raises(AuthenticationError):
        await guarded.auth.authenticate("victim@example.com", STRONG)
    # The lock was not cleared by the refused right password either.
    assert (await guarded.users.get(victim.id)).locked_until is not None


async def test_concurrent_wrong_codes_check_at_most_the_limit(
    guarded: Identity, victim: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: I7, I4
    enrolment = await guarded.two_factor.enrol(victim.id)
    totp = pyotp.TOTP(enrolment.secret)
    # Confirmed with the previous step's code, so the current step's code stays unspent.
    await guarded.two_factor.confirm(victim.id, totp.at(NOW - 30))
    codes_checked: list[str] = []
    original = totp_module._accept_totp

    async def counting(session: Any, config: Any, user: User, code: str) -> bool:
        codes_checked.append(code)
        return await original(session, config, user, code)

    monkeypatch.setattr(totp_module, "_accept_totp", counting)
    right = totp.at(NOW)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    verdicts = await asyncio.gather(
        *(guarded.two_factor.verify(victim.id, wrong) for _ in range(30))
    )
    assert not any(verdicts)
    assert 0 < len(codes_checked) <= LIMIT
    # Locked: the right password with a fresh right code is refused too.
    with pytest.raises(AuthenticationError):
        await guarded.auth.authenticate("victim@example.com", STRONG, otp=right)
    assert not await guarded.two_factor.verify(victim.id, right)
    # The lock, not a replay, refused it: once the lock passes, the same code works.
    await _unlock(guarded, victim)
    assert await guarded.two_factor.verify(victim.id, right)
