"""Key rotation re-encrypts every encrypted column online; background refresh shares work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from tokens_fake_provider import FakeProvider

from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.identity.models import User
from pgstack.migrations import pgstack_metadata
from pgstack.orm import EncryptedText
from pgstack.orm.rotation import (
    EncryptedColumn,
    RotationReport,
    encrypted_columns,
    key_usage,
    rotate_keys,
)
from pgstack.tokens import TokenVault

ROWS = 30


class AppBase(DeclarativeBase):
    """An application's own models, on a base of their own."""

    metadata = MetaData()


class Note(AppBase):
    __tablename__ = "rotation_app_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    secret: Mapped[str | None] = mapped_column(EncryptedText())


async def _raw_values(url: URL) -> list[str]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT access_token AS v FROM oauth_tokens UNION ALL "
            "SELECT refresh_token FROM oauth_tokens UNION ALL "
            "SELECT totp_secret FROM users UNION ALL SELECT secret FROM rotation_app_notes"
        )
    finally:
        await conn.close()
    return [row["v"] for row in rows if row["v"] is not None]


@dataclass(frozen=True)
class Seeded:
    vault: TokenVault
    old_key: str
    new_key: str


@pytest.fixture
async def seeded(pgstack_migrated_db: Database, provider: FakeProvider) -> AsyncIterator[Seeded]:
    """Tokens, two-factor secrets and application notes under key `old`; then `new` deployed.

    The service's key ring then has the new key first, the old one after it: the moment a
    rotation starts.
    """
    old_key, new_key = generate_key("old"), generate_key("new")
    configure_encryption(old_key)
    db = pgstack_migrated_db
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(AppBase.metadata.create_all)
        vault = TokenVault(db)
        for n in range(ROWS):
            await vault.save("crm", f"acct-{n}", f"at-{n}", f"rt-{n}", expires_in=3600)
        await vault.save("crm", "busy", "at-busy", await provider.grant(), expires_in=10)
        async with db.transaction() as session:
            for n in range(ROWS):
                session.add(User(email=f"u{n}@example.com", totp_secret=f"TOTP{n}"))
                session.add(Note(id=n, secret=f"note-{n}"))
            session.add(Note(id=ROWS, secret=None))
        configure_encryption(f"{new_key},{old_key}")
        yield Seeded(vault, old_key, new_key)
    finally:
        configure_encryption(None)


def _columns() -> list[EncryptedColumn]:
    return encrypted_columns([pgstack_metadata(), AppBase.metadata])


async def test_rotation_under_concurrent_reads_and_writes_loses_nothing(
    pgstack_migrated_db: Database,
    pgstack_migrated_url: URL,
    provider: FakeProvider,
    seeded: Seeded,
) -> None:
    # proves: T5
    vault = seeded.vault
    assert {c.name for c in _columns()} == {
        "oauth_tokens.access_token",
        "oauth_tokens.refresh_token",
        "users.totp_secret",
        "rotation_app_notes.secret",
    }
    assert all(v.startswith("v1:old:") for v in await _raw_values(pgstack_migrated_url))

    done = asyncio.Event()
    reads = writes = 0
    written: dict[int, str] = {}

    async def read_tokens(offset: int) -> None:
        nonlocal reads
        n = offset
        while not done.is_set():
            token = await vault.get("crm", f"acct-{n % ROWS}")
            assert token.access_token == f"at-{n % ROWS}"
            reads += 1
            n += 1
            await asyncio.sleep(0)

    async def read_users_and_notes() -> None:
        nonlocal reads
        while not done.is_set():
            async with pgstack_migrated_db.session() as session:
                users = (await session.scalars(select(User))).all()
                assert {u.totp_secret for u in users} == {f"TOTP{n}" for n in range(ROWS)}
                notes = (await session.scalars(select(Note))).all()
                assert len(notes) == ROWS + 1
            reads += 1
            await asyncio.sleep(0)

    async def write_notes() -> None:
        nonlocal writes
        while not done.is_set():
            n = writes % ROWS
            value = f"note-{n}-v{writes}"
            async with pgstack_migrated_db.transaction() as session:
                note = await session.get(Note, n)
                assert note is not None
                note.secret = value
            written[n] = value
            writes += 1
            await asyncio.sleep(0.01)

    async def rotate() -> RotationReport:
        try:
            await asyncio.sleep(0.05)  # let the load get going
            return await rotate_keys(pgstack_migrated_db, _columns(), batch_size=7)
        finally:
            done.set()

    slow = FakeProvider(provider.dsn, delay=0.1)
    *_, refreshed, report = await asyncio.gather(
        read_tokens(0),
        read_tokens(11),
        read_users_and_notes(),
        write_notes(),
        vault.get_valid_token("crm", "busy", slow.refresh),
        rotate(),
    )
    assert reads > 0 and writes > 0
    assert report.done and report.failures == [] and report.remaining == []
    assert report.reencrypted > 0
    again = await rotate_keys(pgstack_migrated_db, _columns(), batch_size=7)
    assert again.reencrypted == 0  # a second run changes nothing

    configure_encryption(seeded.new_key)  # the old key is gone
    assert all(v.startswith("v1:new:") for v in await _raw_values(pgstack_migrated_url))
    for n in range(ROWS):
        token = await vault.get("crm", f"acct-{n}")
        assert (token.access_token, token.refresh_token) == (f"at-{n}", f"rt-{n}")
    assert (await vault.get("crm", "busy")).access_token == refreshed.access_token
    async with pgstack_migrated_db.session() as session:
        users = (await session.scalars(select(User))).all()
        assert sorted(u.totp_secret or "" for u in users) == sorted(f"TOTP{n}" for n in range(ROWS))
        notes = {n.id: n.secret for n in (await session.scalars(select(Note))).all()}
    assert notes == {n: written.get(n, f"note-{n}") for n in range(ROWS)} | {ROWS: None}
    usage = await key_usage(pgstack_migrated_db, _columns())
    assert {u.kid for u in usage} == {"new"}


async def test_an_interrupted_rotation_resumes_where_it_stopped(
    pgstack_migrated_db: Database, seeded: Seeded
) -> None:
    # proves: T5
    total = sum(u.values for u in await key_usage(pgstack_migrated_db, _columns()))

    class Interrupted(Exception):
        pass

    batches = 0

    def stop_after_two_batches(column: EncryptedColumn, n: int) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        await rotate_keys(
            pgstack_migrated_db, _columns(), batch_size=5, progress=stop_after_two_batches
        )
    usage = await key_usage(pgstack_migrated_db, _columns())
    done = sum(u.values for u in usage if u.kid == "new")
    assert done == 10  # two committed batches of five
    assert sum(u.values for u in usage if u.kid == "old") == total - done

    report = await rotate_keys(pgstack_migrated_db, _columns(), batch_size=5)
    assert report.reencrypted == total - done  # nothing done twice
    assert report.done


async def test_a_value_no_key_can_decrypt_is_reported_and_the_rest_rotates(
    pgstack_migrated_db: Database, pgstack_migrated_url: URL, seeded: Seeded
) -> None:
    # proves: T5
    conn = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        await conn.execute("UPDATE rotation_app_notes SET secret = 'v1:lost:AAAA' WHERE id = 3")
    finally:
        await conn.close()
    report = await rotate_keys(pgstack_migrated_db, _columns(), lock_wait=0.5)
    assert len(report.failures) == 1
    assert report.failures[0].startswith("rotation_app_notes.secret id=3:")
    assert "'lost'" in report.failures[0]
    assert [(u.column, u.kid, u.values) for u in report.remaining] == [
        ("rotation_app_notes.secret", "lost", 1)
    ]
    assert not report.done


async def test_rotate_keys_with_nothing_stored_changes_nothing(
    vault: TokenVault, token_keys: KeyRing
) -> None:
    # proves: T5
    assert await vault.rotate_keys() == 0


async def test_refresh_due_workers_share_the_work_without_overlap(
    pgstack_migrated_db: Database,
    pgstack_migrated_settings: Any,
    provider: FakeProvider,
    token_keys: KeyRing,
) -> None:
    # proves: T3, T4
    vault = TokenVault(pgstack_migrated_db)
    for n in range(6):
        await vault.save("crm", f"due-{n}", f"at-{n}", await provider.grant(), expires_in=60)
    await vault.save("crm", "fresh", "at-fresh", await provider.grant(), expires_in=7200)
    await vault.save("mail", "other-provider", "at-m", "rt-m", expires_in=60)

    slow = FakeProvider(provider.dsn, delay=0.05)
    second_db = Database(pgstack_migrated_settings)
    await second_db.connect()
    try:
        other = TokenVault(second_db)
        summaries = await asyncio.gather(
            vault.refresh_due({"crm": slow.refresh}),
            other.refresh_due({"crm": slow.refresh}),
        )
    finally:
        await second_db.disconnect()
    assert sum(s.refreshed for s in summaries) == 6
    assert all(s.failed == 0 for s in summaries)
    calls = await provider.calls()
    assert len(calls) == 6 and all(accepted for _, accepted in calls)
    assert len({sent for sent, _ in calls}) == 6  # no refresh token sent twice
    assert await vault.needing_refresh() == [
        t for t in await vault.needing_refresh() if t.provider == "mail"
    ]
    assert (await vault.get("crm", "fresh")).access_token == "at-fresh"
    again = await vault.refresh_due({"crm": slow.refresh}, within=timedelta(minutes=5))
    assert (again.refreshed, again.failed) == (0, 0)
