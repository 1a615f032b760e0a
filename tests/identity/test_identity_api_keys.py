"""API keys: format and checksum, hashed storage, scopes, expiry, revoke, rotate, last use."""

from __future__ import annotations

import string
from datetime import timedelta

import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from pgstack.identity import Identity, User, generate_api_key, parse_api_key, require_scopes


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
    assert len(row.key_hash) == 64 and issued.key not in row.key_hash
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
