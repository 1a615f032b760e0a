"""EncryptedText and the key ring.

Unreadable in raw SQL, decrypts after a key rotation, fails loudly when a value is moved,
altered or its key is gone; keys never show.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.config import Settings
from pgstack.crypto import KeyRing, configure_encryption, generate_key, get_key_ring
from pgstack.db.database import Database
from pgstack.errors import ConfigurationError, EncryptionError
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    BigIntPrimaryKey,
    EncryptedText,
    ModelMixin,
)

# The create_tables fixture (conftest.py): creates a base's tables, dropped after the test.
CreateTables = Callable[[MetaData], Awaitable[None]]


class VaultBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Credential(BigIntPrimaryKey, VaultBase):
    __tablename__ = "vault_credentials"
    account: Mapped[str]
    access_token: Mapped[str | None] = mapped_column(EncryptedText())
    refresh_token: Mapped[str | None] = mapped_column(EncryptedText())


class Archive(BigIntPrimaryKey, VaultBase):
    __tablename__ = "vault_archive"
    access_token: Mapped[str | None] = mapped_column(EncryptedText())


@pytest.fixture(autouse=True)
async def tables(create_tables: CreateTables) -> None:
    await create_tables(VaultBase.metadata)


async def store(db: Database, **values: str) -> int:
    async with db.transaction() as session:
        return (await Repository(session, Credential).create(account="crm", **values)).id


async def load(db: Database, id: int) -> Credential:
    async with db.session() as session:
        return await Repository(session, Credential).get(id)


async def test_values_are_unreadable_in_raw_sql(
    pgstack_db: Database, encryption_ring: KeyRing
) -> None:
    # proves: M4
    id = await store(pgstack_db, access_token="ya29.SECRET-TOKEN", refresh_token="1//REFRESH")
    async with pgstack_db.session() as session:
        raw = (
            await session.execute(text("SELECT access_token, refresh_token FROM vault_credentials"))
        ).one()
    for value in raw:
        assert "SECRET" not in value and "REFRESH" not in value
        assert value.startswith("v1:k2:")  # format version and the key that sealed it
    assert raw[0] != raw[1]
    loaded = await load(pgstack_db, id)
    assert (loaded.access_token, loaded.refresh_token) == ("ya29.SECRET-TOKEN", "1//REFRESH")


async def test_the_same_plaintext_encrypts_differently_each_time(
    pgstack_db: Database, encryption_ring: KeyRing
) -> None:
    # proves: M4
    await store(pgstack_db, access_token="same")
    await store(pgstack_db, access_token="same")
    async with pgstack_db.session() as session:
        values = (await session.execute(text("SELECT access_token FROM vault_credentials"))).all()
    assert values[0] != values[1]


async def test_values_decrypt_after_a_key_rotation(pgstack_db: Database) -> None:
    # proves: M4
    old_key, new_key = generate_key("2025"), generate_key("2026")
    configure_encryption(old_key)
    try:
        id = await store(pgstack_db, access_token="before rotation")
        configure_encryption(f"{new_key},{old_key}")  # newest first, old one kept
        assert (await load(pgstack_db, id)).access_token == "before rotation"
        newer = await store(pgstack_db, access_token="after rotation")
        sealed = await _raw(pgstack_db, newer)
        assert sealed.startswith("v1:2026:")
        ring = get_key_ring()
        old_sealed = await _raw(pgstack_db, id)
        assert ring.needs_reencryption(old_sealed) and not ring.needs_reencryption(sealed)
        rotated = ring.reencrypt(old_sealed, "vault_credentials.access_token")
        configure_encryption(new_key)  # old key retired after re-encryption
        assert ring.kids == ("2026", "2025")
        assert KeyRing.parse(new_key).decrypt_text(rotated, "vault_credentials.access_token") == (
            "before rotation"
        )
        # Without the old key, the old value fails loudly and names the missing key.
        with pytest.raises(EncryptionError, match="key '2025', which is not in"):
            await load(pgstack_db, id)
    finally:
        configure_encryption(None)


async def _raw(db: Database, id: int) -> str:
    async with db.session() as session:
        value = await session.scalar(
            text("SELECT access_token FROM vault_credentials WHERE id = :id"), {"id": id}
        )
    assert isinstance(value, str)
    return value


async def test_a_value_moved_to_another_column_fails_loudly(
    pgstack_db: Database, encryption_ring: KeyRing
) -> None:
    # proves: M4
    id = await store(pgstack_db, access_token="token", refresh_token="refresh")
    async with pgstack_db.transaction() as session:
        await session.execute(text("UPDATE vault_credentials SET refresh_token = access_token"))
    with pytest.raises(EncryptionError, match="copied from another column"):
        await load(pgstack_db, id)


async def test_a_value_moved_to_another_table_fails_loudly(
    pgstack_db: Database, encryption_ring: KeyRing
) -> None:
    # proves: M4
    await store(pgstack_db, access_token="token")
    async with pgstack_db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO vault_archive (access_token) "
                "SELECT access_token FROM vault_credentials"
            )
        )
    async with pgstack_db.session() as session:
        with pytest.raises(EncryptionError, match=r"vault_archive\.access_token failed"):
            await Repository(session, Archive).list()


@pytest.mark.parametrize("position", [8, 20, -3])
async def test_a_tampered_value_fails_loudly(
    pgstack_db: Database, encryption_ring: KeyRing, position: int
) -> None:
    # proves: M4
    id = await store(pgstack_db, access_token="transfer 10 EUR")
    sealed = await _raw(pgstack_db, id)
    head, _, body = sealed.rpartition(":")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[position] ^= 0x01
    forged = f"{head}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    async with pgstack_db.transaction() as session:
        await session.execute(
            text("UPDATE vault_credentials SET access_token = :v WHERE id = :id"),
            {"v": forged, "id": id},
        )
    with pytest.raises(EncryptionError, match="failed authentication"):
        await load(pgstack_db, id)


async def test_plain_text_written_around_pgstack_is_refused(
    pgstack_db: Database, encryption_ring: KeyRing
) -> None:
    # proves: M4
    id = await store(pgstack_db, access_token="x")
    async with pgstack_db.transaction() as session:
        await session.execute(text("UPDATE vault_credentials SET access_token = 'plain'"))
    with pytest.raises(EncryptionError, match="not a pgstack-encrypted value"):
        await load(pgstack_db, id)


async def test_writing_without_keys_is_a_clear_error(
    pgstack_db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    # proves: M4
    monkeypatch.delenv("PGSTACK_ENCRYPTION_KEYS", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env either
    configure_encryption(None)
    try:
        with pytest.raises(EncryptionError, match="set PGSTACK_ENCRYPTION_KEYS"):
            await store(pgstack_db, access_token="x")
    finally:
        configure_encryption(None)


async def test_the_ring_is_read_from_the_environment(
    pgstack_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: M4
    monkeypatch.setenv("PGSTACK_ENCRYPTION_KEYS", f"{generate_key('env')}")
    configure_encryption(None)
    try:
        assert get_key_ring().kids == ("env",)
        id = await store(pgstack_db, access_token="from env")
        assert (await _raw(pgstack_db, id)).startswith("v1:env:")
        assert (await load(pgstack_db, id)).access_token == "from env"
    finally:
        configure_encryption(None)


def test_keys_never_show(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # proves: M4
    caplog.set_level(logging.DEBUG)
    entry = generate_key("k1")
    key_text = entry.split(":", 1)[1]
    ring = KeyRing.parse(entry)
    assert repr(ring) == "KeyRing(kids=['k1'])" and key_text not in repr(ring)
    settings = Settings(encryption_keys=entry, _env_file=None)
    assert key_text not in repr(settings) and key_text not in str(settings.summary())
    assert key_text not in caplog.text
    monkeypatch.setenv("PGSTACK_ENCRYPTION_KEYS", entry[:-6])  # a truncated key
    with pytest.raises(ConfigurationError, match="PGSTACK_ENCRYPTION_KEYS") as info:
        Settings(_env_file=None)
    assert key_text[:10] not in info.value.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("nokid", "no key id"),
        ("k1:not-base64!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "needs 32"),
        ("", "No encryption keys"),
        ("bad id:AAAA", "not valid"),
    ],
)
def test_malformed_key_rings_are_refused(raw: str, message: str) -> None:
    # proves: M4
    with pytest.raises(EncryptionError, match=message):
        KeyRing.parse(raw)
    key = generate_key("k1")
    with pytest.raises(EncryptionError, match="appears twice"):
        KeyRing.parse(f"{key},{key}")
