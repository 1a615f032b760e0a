"""Two-factor: enrol, confirm, verify with replay protection, recovery codes, disabling."""

from __future__ import annotations

import pyotp
import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import AuthenticationError, InvalidInputError
from pgstack.identity import Identity, IdentityConfig, TwoFactorRequiredError, User

from .conftest import STRONG

# The clock is pinned mid-step, so no test can straddle a 30-second boundary.
NOW = 1_800_000_015.0


@pytest.fixture
def identity(pgstack_migrated_db: Database) -> Identity:
    return Identity(pgstack_migrated_db, IdentityConfig(clock=lambda: NOW))


def _code(secret: str, steps_back: int = 0) -> str:
    return pyotp.TOTP(secret).at(int(NOW) - 30 * steps_back)


async def _enrolled(identity: Identity, user: User) -> tuple[str, list[str]]:
    enrolment = await identity.two_factor.enrol(user.id)
    assert enrolment.provisioning_uri.startswith("otpauth://totp/")
    assert "alice%40example.com" in enrolment.provisioning_uri
    assert enrolment.secret not in repr(enrolment)
    # A code from the previous step is still inside the ±1 window.
    codes = await identity.two_factor.confirm(user.id, _code(enrolment.secret, 1))
    return enrolment.secret, codes


async def test_enrol_confirm_and_login_with_a_code(identity: Identity, alice: User) -> None:
    # proves: I4
    enrolment = await identity.two_factor.enrol(alice.id)
    with pytest.raises(AuthenticationError):
        await identity.two_factor.confirm(alice.id, _code(enrolment.secret, 5))
    code = _code(enrolment.secret)
    codes = await identity.two_factor.confirm(alice.id, code)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert (await identity.users.get(alice.id)).two_factor_enabled
    with pytest.raises(TwoFactorRequiredError):
        await identity.auth.authenticate("alice@example.com", STRONG)
    with pytest.raises(AuthenticationError, match="already used"):
        # The code that confirmed enrolment is spent.
        await identity.auth.authenticate("alice@example.com", STRONG, otp=code)


async def test_a_replayed_code_is_refused(identity: Identity, alice: User) -> None:
    # proves: I4
    secret, _ = await _enrolled(identity, alice)
    code = _code(secret)
    user = await identity.auth.authenticate("alice@example.com", STRONG, otp=code)
    assert user.id == alice.id
    with pytest.raises(AuthenticationError):
        await identity.auth.authenticate("alice@example.com", STRONG, otp=code)
    assert not await identity.two_factor.verify(alice.id, code)
    # An older code than the one used is a replay too, even inside the window.
    assert not await identity.two_factor.verify(alice.id, _code(secret, 1))
    # Codes from outside the ±1 window are refused.
    assert not await identity.two_factor.verify(alice.id, _code(secret, -3))


async def test_recovery_codes_work_once_each(identity: Identity, alice: User) -> None:
    # proves: I4
    _, codes = await _enrolled(identity, alice)
    assert await identity.two_factor.remaining_recovery_codes(alice.id) == 10
    assert await identity.auth.authenticate("alice@example.com", STRONG, otp=codes[0].upper())
    with pytest.raises(AuthenticationError):
        await identity.auth.authenticate("alice@example.com", STRONG, otp=codes[0])
    assert await identity.two_factor.remaining_recovery_codes(alice.id) == 9
    assert not await identity.two_factor.verify(alice.id, "aaaa-bbbb-cccc-dddd")
    # Typed without its dashes, or with spaces, a code is the same code.
    assert await identity.two_factor.verify(alice.id, codes[1].replace("-", ""))
    assert await identity.two_factor.verify(alice.id, codes[2].replace("-", " "))
    assert await identity.two_factor.remaining_recovery_codes(alice.id) == 7


async def test_secret_is_encrypted_and_codes_hashed_at_rest(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I4
    secret, codes = await _enrolled(identity, alice)
    async with pgstack_migrated_db.transaction() as session:
        stored = await session.scalar(text("SELECT totp_secret FROM users"))
        hashes = (await session.scalars(text("SELECT code_hash FROM recovery_codes"))).all()
    assert isinstance(stored, str) and stored.startswith("v1:id1:") and secret not in stored
    assert len(hashes) == 10 and not set(hashes) & set(codes)
    assert (await identity.users.get(alice.id)).totp_secret == secret
    assert secret not in repr(await identity.users.get(alice.id))


async def test_disabling_needs_a_code_or_the_password(identity: Identity, alice: User) -> None:
    # proves: I4
    _, codes = await _enrolled(identity, alice)
    with pytest.raises(InvalidInputError):
        await identity.two_factor.disable(alice.id)
    with pytest.raises(AuthenticationError, match="stays on"):
        await identity.two_factor.disable(alice.id, password="not the password at all")
    with pytest.raises(AuthenticationError):
        await identity.two_factor.disable(alice.id, code="aaaa-bbbb-cccc-dddd")
    assert (await identity.users.get(alice.id)).two_factor_enabled
    await identity.two_factor.disable(alice.id, code=codes[1])
    user = await identity.users.get(alice.id)
    assert not user.two_factor_enabled and user.totp_secret is None
    assert await identity.auth.authenticate("alice@example.com", STRONG)
    await _enrolled(identity, alice)
    await identity.two_factor.disable(alice.id, password=STRONG)
    assert await identity.two_factor.remaining_recovery_codes(alice.id) == 0


async def test_regenerating_recovery_codes_retires_the_old_ones(
    identity: Identity, alice: User
) -> None:
    # proves: I4
    secret, old = await _enrolled(identity, alice)
    new = await identity.two_factor.regenerate_recovery_codes(alice.id, _code(secret))
    assert not set(new) & set(old)
    assert not await identity.two_factor.verify(alice.id, old[0])
    assert await identity.two_factor.verify(alice.id, new[0])
