"""Fixtures for the token vault: a key ring, a vault on a migrated database, a fake provider."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.tokens import TokenVault

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tokens_fake_provider import FakeProvider


@pytest.fixture
def token_key_text() -> str:
    """The test's key ring as PGSTACK_ENCRYPTION_KEYS text (for other processes)."""
    return generate_key("t1")


@pytest.fixture
def token_keys(token_key_text: str) -> Iterator[KeyRing]:
    """A fresh process-wide key ring for the test, reset afterwards."""
    ring = KeyRing.parse(token_key_text)
    configure_encryption(ring)
    yield ring
    configure_encryption(None)


@pytest.fixture
def vault(pgstack_migrated_db: Database, token_keys: KeyRing) -> TokenVault:
    return TokenVault(pgstack_migrated_db, refresh_timeout=5.0)


@pytest.fixture
async def provider(pgstack_migrated_url: URL) -> FakeProvider:
    fake = FakeProvider(asyncpg_dsn(pgstack_migrated_url))
    await fake.setup()
    return fake
