"""API keys: format and checksum, hashed storage, scopes, expiry, revoke, rotate, last use."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import string
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from pgstack.identity import Identity, User, generate_api_key, parse_api_key, require_scopes

from .conftest import STRONG


def _one_char_changed(key: str, position: int) -> str:
    old = key[position]
    new = next(c for c in string.ascii_letters + string.digits if c != old)
    return key[:position] + new + key[position + 1 :]


def test_key_format_prefix_secret_and_checksum() -> None:
    # proves: I5
    key, prefix = generate_api_key()
    assert key.startswith(f"pgs_{prefix}_") and len(prefix) == 8
    assert len(key) == len("pgs_") + 8 + 1 + 22 + 6
    assert parse_api_key(key) == prefix
    assert len({generate_api_key()[0] for _ in range(100)}) == 100


async def test_a_key_with_one_character_changed_is_refused_without_sql(
    identity: Identity, alice: User, statements: list[str]
) -> None:
    # proves: I5
    issued = await identity.api_keys.create(alice.id, "ci", scopes=["reports:read"])
    assert (await identity.api_keys.verify(issued.key)).user.id == alice.id
    statements.clear()
    # Every position after "pgs_": prefix, separator, secret and checksum alike.
    for position in range(4, len(issued.key)):
        with pytest.raises(AuthenticationError, match="mistyped"):
            await identity.api_keys.verify(_one_char_changed(issued.key, position))
    for mangled in (issued.key[:-1], issued.key + "x", "pgx" + issued.key[3:], "", "Bearer"):
        with pytest.raises(AuthenticationError, match="mistyped"):
            await identity.api_keys.verify(mangled)
    assert statements == []


async def test_only_a_hash_is_stored_and_the_key_is_shown_once(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I5
    issued = await identity.api_keys.create(alice.id, "ci")
    assert issued.key not in repr(issued) and issued.key not in repr(issued.api_key)
    async with pgstack_migrated_db.transaction() as session:
        row = (await session.execute(text("SELECT prefix, key_hash FROM api_keys"))).one()
    assert row.prefix == issued.api_key.prefix
    assert len(row.key_hash) >= 64 and issued.key not in row.key_hash
    listed = await identity.api_keys.list_for(alice.id)
    assert [k.id for k in listed] == [issued.api_key.id]


async def test_a_well_formed_unknown_key_is_refused(identity: Identity, alice: User) -> None:
    # proves: I5
    key, _ = generate_api_key()
    with pytest.raises(AuthenticationError, match="not valid"):
        await identity.api_keys.verify(key)


async def test_scopes_are_checked(identity: Identity, alice: User) -> None:
    # proves: I5
    issued = await identity.api_keys.create(alice.id, "ci", scopes=["reports:read", "users:read"])
    verified = await identity.api_keys.verify(issued.key)
    verified.require_scopes("reports:read")
    verified.require_scopes("reports:read", "users:read")
    with pytest.raises(PermissionDeniedError, match="reports:write"):
        verified.require_scopes("reports:read", "reports:write")
    admin = await identity.api_keys.create(alice.id, "all", scopes=["*"])
    require_scopes((await identity.api_keys.verify(admin.key)).api_key, "anything:at:all")


async def test_revoked_expired_and_deleted_user_keys_are_refused(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I5
    revoked = await identity.api_keys.create(alice.id, "revoked")
    await identity.api_keys.revoke(revoked.api_key.id)
    with pytest.raises(AuthenticationError):
        await identity.api_keys.verify(revoked.key)

    expired = await identity.api_keys.create(alice.id, "expired", expires_in=timedelta(hours=1))
    assert await identity.api_keys.verify(expired.key)
    async with pgstack_migrated_db.transaction() as session:
        await session.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1s' WHERE id = :id"),
            {"id": expired.api_key.id},
        )
    with pytest.raises(AuthenticationError):
        await identity.api_keys.verify(expired.key)

    live = await identity.api_keys.create(alice.id, "live")
    assert await identity.api_keys.verify(live.key)
    await identity.users.set_active(alice.id, False)
    with pytest.raises(AuthenticationError):
        await identity.api_keys.verify(live.key)
    await identity.users.set_active(alice.id, True)
    await identity.users.delete(alice.id)
    with pytest.raises(AuthenticationError):
        await identity.api_keys.verify(live.key)
    with pytest.raises(NotFoundError):
        await identity.api_keys.create(alice.id, "for a deleted user")


async def test_keys_go_with_their_user(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I5
    await identity.api_keys.create(alice.id, "one")
    await identity.api_keys.create(alice.id, "two")
    await identity.users.hard_delete(alice.id)
    async with pgstack_migrated_db.transaction() as session:
        assert await session.scalar(text("SELECT count(*) FROM api_keys")) == 0


async def test_rotate_keeps_the_old_key_for_the_grace_period(
    identity: Identity, pgstack_migrated_db: Database, alice: User
) -> None:
    # proves: I5
    old = await identity.api_keys.create(
        alice.id, "deploy", scopes=["deploy"], rate_limit_tier="premium"
    )
    new = await identity.api_keys.rotate(old.api_key.id, grace=timedelta(hours=1))
    assert new.key != old.key
    assert new.api_key.scopes == ["deploy"] and new.api_key.rate_limit_tier == "premium"
    assert (await identity.api_keys.verify(old.key)).api_key.id == old.api_key.id
    assert (await identity.api_keys.verify(new.key)).api_key.id == new.api_key.id
    # The grace period passes.
    async with pgstack_migrated_db.transaction() as session:
        await session.execute(
            text("UPDATE api_keys SET revoked_at = now() - interval '1s' WHERE id = :id"),
            {"id": old.api_key.id},
        )
    with pytest.raises(AuthenticationError):
        await identity.api_keys.verify(old.key)
    assert await identity.api_keys.verify(new.key)
    immediate = await identity.api_keys.rotate(new.api_key.id, grace=timedelta(0))
    with pytest.raises(AuthenticationError):
        await identity.api_keys.verify(new.key)
    assert await identity.api_keys.verify(immediate.key)


async def test_last_used_is_written_at_most_once_a_minute(
    identity: Identity, pgstack_migrated_db: Database, alice: User, statements: list[str]
) -> None:
    # proves: I5
    issued = await identity.api_keys.create(alice.id, "hot")
    statements.clear()
    first = await identity.api_keys.verify(issued.key)
    assert first.api_key.last_used_at is not None
    assert sum(s.lstrip().upper().startswith("UPDATE") for s in statements) == 1
    statements.clear()
    for _ in range(5):
        await identity.api_keys.verify(issued.key)
    assert not any(s.lstrip().upper().startswith("UPDATE") for s in statements)
    async with pgstack_migrated_db.transaction() as session:
        await session.execute(
            text("UPDATE api_keys SET last_used_at = now() - interval '61 seconds'")
        )
    statements.clear()
    await identity.api_keys.verify(issued.key)
    assert sum(s.lstrip().upper().startswith("UPDATE") for s in statements) == 1


async def test_revoking_someone_elses_key_is_not_found(identity: Identity, alice: User) -> None:
    # proves: I5
    bob = await identity.users.create("bob@example.com", "seven quiet Otters fold paper boats")
    issued = await identity.api_keys.create(alice.id, "mine")
    with pytest.raises(NotFoundError):
        await identity.api_keys.revoke(issued.api_key.id, user_id=bob.id)
    assert await identity.api_keys.verify(issued.key)


async def test_a_real_prefix_with_another_secret_and_a_valid_checksum_is_refused(
    identity: Identity, alice: User
) -> None:
    # proves: I5
    issued = await identity.api_keys.create(alice.id, "ci")
    body = f"pgs_{issued.api_key.prefix}_{'A' * 22}"
    # The checksum is a public CRC32: an attacker computes it, so only the hash stands.
    forged = body + _base62(zlib.crc32(body.encode()), 6)
    assert parse_api_key(forged) == issued.api_key.prefix
    with pytest.raises(AuthenticationError, match="not valid"):
        await identity.api_keys.verify(forged)


def _base62(number: int, width: int) -> str:
    digits = string.digits + string.ascii_uppercase + string.ascii_lowercase
    out = ""
    for _ in range(width):
        number, digit = divmod(number, 62)
        out = digits[digit] + out
    return out


PEPPER = "p" * 32
OLD_PEPPER = "o" * 32


@asynccontextmanager
async def _peppered(settings: Settings, peppers: str | None) -> AsyncIterator[Identity]:
    secret = SecretStr(peppers) if peppers is not None else None
    async with Database(settings.model_copy(update={"api_key_peppers": secret})) as db:
        yield Identity(db)


async def _stored_hash(db: Database, key_id: object) -> str:
    async with db.transaction() as session:
        value = await session.scalar(
            text("SELECT key_hash FROM api_keys WHERE id = :id"), {"id": key_id}
        )
    return str(value)


async def test_keys_are_stored_as_a_peppered_hmac_and_peppers_rotate(
    pgstack_migrated_settings: Settings,
) -> None:
    # proves: I9, I5
    async with _peppered(pgstack_migrated_settings, OLD_PEPPER) as old:
        user = await old.users.create("pep@example.com", STRONG)
        issued = await old.api_keys.create(user.id, "ci")
        made_old = await _stored_hash(old.db, issued.api_key.id)
        assert made_old.startswith("hmac$")
        assert (
            made_old[5:]
            == hmac.new(OLD_PEPPER.encode(), issued.key.encode(), hashlib.sha256).hexdigest()
        )
    # Without the pepper, a stolen table's hashes cannot even be checked against a guess.
    async with _peppered(pgstack_migrated_settings, None) as bare:
        with pytest.raises(AuthenticationError):
            await bare.api_keys.verify(issued.key)
    # A new pepper in front: the old one still verifies, and the key is re-hashed on use.
    async with _peppered(pgstack_migrated_settings, f"{PEPPER},{OLD_PEPPER}") as rotated:
        assert (await rotated.api_keys.verify(issued.key)).user.id == user.id
        now = await _stored_hash(rotated.db, issued.api_key.id)
        assert (
            now != made_old
            and now[5:]
            == hmac.new(PEPPER.encode(), issued.key.encode(), hashlib.sha256).hexdigest()
        )
    async with _peppered(pgstack_migrated_settings, PEPPER) as newest:
        assert await newest.api_keys.verify(issued.key)


async def test_plain_sha256_keys_verify_and_are_upgraded_on_use(
    pgstack_migrated_settings: Settings,
) -> None:
    # proves: I9, I5
    async with _peppered(pgstack_migrated_settings, None) as bare:
        user = await bare.users.create("legacy@example.com", STRONG)
        issued = await bare.api_keys.create(user.id, "old")
        assert (
            await _stored_hash(bare.db, issued.api_key.id)
            == hashlib.sha256(issued.key.encode()).hexdigest()
        )
    async with _peppered(pgstack_migrated_settings, PEPPER) as peppered:
        assert await peppered.api_keys.verify(issued.key)
        assert (await _stored_hash(peppered.db, issued.api_key.id)).startswith("hmac$")
        assert await peppered.api_keys.verify(issued.key)


async def test_production_refuses_keys_without_a_pepper(
    pgstack_migrated_settings: Settings,
) -> None:
    # proves: I9
    production = pgstack_migrated_settings.model_copy(update={"environment": "production"})
    async with Database(production) as db:
        identity = Identity(db)
        user = await identity.users.create("prod@example.com", STRONG)
        with pytest.raises(ConfigurationError, match="PGSTACK_API_KEY_PEPPERS"):
            await identity.api_keys.create(user.id, "ci")


def test_a_short_pepper_is_a_configuration_error() -> None:
    # proves: I9
    with pytest.raises(ConfigurationError, match="PGSTACK_API_KEY_PEPPERS"):
        Settings(api_key_peppers=SecretStr(f"{PEPPER},short"))


async def test_concurrent_rotations_make_one_new_key(identity: Identity, alice: User) -> None:
    # proves: I5
    issued = await identity.api_keys.create(alice.id, "deploy")
    results = await asyncio.gather(
        *(identity.api_keys.rotate(issued.api_key.id, grace=timedelta(0)) for _ in range(5)),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1, results
    assert all(isinstance(r, InvalidInputError) for r in results if r not in made)
    assert [k.id for k in await identity.api_keys.list_for(alice.id)] == [made[0].api_key.id]


async def test_expiry_given_two_ways_is_an_error(identity: Identity, alice: User) -> None:
    # proves: I5
    with pytest.raises(InvalidInputError, match="not both"):
        await identity.api_keys.create(
            alice.id, "ci", expires_in=timedelta(days=1), expires_at=datetime.now(UTC)
        )
    with pytest.raises(InvalidInputError, match="control characters"):
        await identity.api_keys.create(alice.id, "ci", scopes=["a\x00b"])
