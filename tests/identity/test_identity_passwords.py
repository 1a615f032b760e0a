"""Passwords: argon2id hashes, bcrypt and weak-argon2 upgrades at login, strength, generation."""

from __future__ import annotations

import asyncio

import bcrypt
import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import InvalidInputError
from pgstack.identity import (
    Identity,
    IdentityConfig,
    PasswordHasher,
    User,
    check_password_strength,
    generate_password,
    require_strong_password,
)

from .conftest import STRONG


async def _stored_hash(db: Database, user: User) -> str:
    async with db.transaction() as session:
        value = await session.scalar(
            text("SELECT password_hash FROM users WHERE id = :id"), {"id": user.id}
        )
    assert isinstance(value, str)
    return value


async def _set_hash(db: Database, user: User, value: str) -> None:
    async with db.transaction() as session:
        await session.execute(
            text("UPDATE users SET password_hash = :h WHERE id = :id"), {"h": value, "id": user.id}
        )


async def test_new_hashes_are_argon2id_with_owasp_parameters(
    pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I2
    stored = await _stored_hash(pgstack_migrated_db, alice)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert STRONG not in stored


async def test_a_bcrypt_user_logs_in_and_is_upgraded_to_argon2id(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I2
    legacy = bcrypt.hashpw(STRONG.encode(), bcrypt.gensalt(12)).decode()
    await _set_hash(pgstack_migrated_db, alice, legacy)
    user = await identity.auth.authenticate("alice@example.com", STRONG)
    assert user.id == alice.id
    stored = await _stored_hash(pgstack_migrated_db, alice)
    assert stored.startswith("$argon2id$") and stored != legacy
    assert await identity.auth.authenticate("alice@example.com", STRONG)


async def test_a_hash_with_older_argon2_parameters_is_upgraded_at_login(
    pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I2
    weak = PasswordHasher(IdentityConfig(argon2_memory_kib=8 * 1024, argon2_time_cost=1))
    await _set_hash(pgstack_migrated_db, alice, weak.hash(STRONG))
    assert "m=8192,t=1" in await _stored_hash(pgstack_migrated_db, alice)
    await Identity(pgstack_migrated_db).auth.authenticate("alice@example.com", STRONG)
    assert "m=19456,t=2,p=1" in await _stored_hash(pgstack_migrated_db, alice)


async def test_a_wrong_password_does_not_upgrade_a_bcrypt_hash(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I2
    legacy = bcrypt.hashpw(STRONG.encode(), bcrypt.gensalt(4)).decode()
    await _set_hash(pgstack_migrated_db, alice, legacy)
    with pytest.raises(Exception, match="wrong"):
        await identity.auth.authenticate("alice@example.com", STRONG + "x")
    assert await _stored_hash(pgstack_migrated_db, alice) == legacy


async def test_hashing_runs_off_the_event_loop() -> None:
    # proves: I2
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await PasswordHasher().ahash(STRONG)
    seen = ticks
    task.cancel()
    # On the loop, the hash would finish before the ticker ever ran.
    assert seen > 1


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short1!Ab", "at least 12 characters"),
        ("password1234", "commonly used password"),
        ("alice.liddell.2024", "e-mail address or name"),
        ("aaaaaaaaaaaaaaaa", "too easy to guess"),
    ],
)
def test_weak_passwords_are_refused_with_what_to_fix(password: str, problem: str) -> None:
    # proves: I2
    strength = check_password_strength(
        password, email="alice.liddell@example.com", name="Alice Liddell"
    )
    assert not strength.acceptable
    assert any(problem in p for p in strength.problems), strength.problems
    assert strength.suggestions
    assert password not in repr(strength)
    with pytest.raises(InvalidInputError, match=problem):
        require_strong_password(password, email="alice.liddell@example.com", name="Alice Liddell")


def test_strength_is_a_score_from_0_to_100() -> None:
    # proves: I2
    weak = check_password_strength("password1234")
    strong = check_password_strength(STRONG)
    assert 0 <= weak.score < 50 < strong.score <= 100
    assert strong.acceptable and not strong.problems
    assert not check_password_strength(
        STRONG, config=IdentityConfig(password_min_length=40)
    ).acceptable


def test_generated_passwords_are_random_strong_and_mixed() -> None:
    # proves: I2
    passwords = {generate_password() for _ in range(20)}
    assert len(passwords) == 20
    for password in passwords:
        assert len(password) == 20
        assert check_password_strength(password).acceptable
    assert len(generate_password(32)) == 32
    with pytest.raises(InvalidInputError):
        generate_password(8)


async def test_weak_password_at_sign_up_is_refused(identity: Identity) -> None:
    # proves: I2
    with pytest.raises(InvalidInputError, match="at least 12"):
        await identity.users.create("weak@example.com", "Sh0rt!")
    assert await identity.users.get_by_email("weak@example.com") is None


def test_passwords_longer_than_72_characters_are_scored_not_refused() -> None:
    # proves: I8, I2
    long = (STRONG + " ") * 3
    assert 72 < len(long) <= 1024
    assert check_password_strength(long).acceptable
    assert not check_password_strength("x" * 1025).acceptable


async def test_passwords_are_nfkc_normalised_and_old_hashes_still_verify(
    identity: Identity, pgstack_migrated_db: Database
) -> None:
    # proves: I8, I2
    # "\ufb01" is the ligature fi; "e\u0301" is e and a combining acute accent.
    typed = "violet Harbour 42 \ufb01re lant\u0065\u0301rns"
    user = await identity.users.create("nf@example.com", typed)
    assert await identity.auth.authenticate(
        "nf@example.com", "violet Harbour 42 fire lant\u00e9rns"
    )
    # A hash made before normalisation, from the raw form: it verifies and is replaced.
    raw_hash = PasswordHasher()._hash.hash(typed)
    await _set_hash(pgstack_migrated_db, user, raw_hash)
    assert await identity.auth.authenticate("nf@example.com", typed)
    assert await _stored_hash(pgstack_migrated_db, user) != raw_hash
    assert await identity.auth.authenticate(
        "nf@example.com", "violet Harbour 42 fire lant\u00e9rns"
    )
