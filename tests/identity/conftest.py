"""Fixtures for identity tests: a migrated database of the test's own and its services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.database import Database
from pgstack.identity import Identity, User
from pgstack.testing import record_statements

STRONG = "violet Harbour 42 lanterns drift"
OTHER_STRONG = "seven quiet Otters fold paper boats"


@pytest.fixture(autouse=True)
def identity_keys() -> Iterator[KeyRing]:
    """A fresh key ring, so TOTP secrets (EncryptedText) can be stored; reset afterwards."""
    ring = KeyRing.parse(generate_key("id1"))
    configure_encryption(ring)
    yield ring
    configure_encryption(None)


@pytest.fixture
def identity(pgstack_migrated_db: Database) -> Identity:
    """The identity services on this test's migrated database, with default settings."""
    return Identity(pgstack_migrated_db)


@pytest.fixture
async def alice(identity: Identity) -> User:
    """A local user with the password STRONG."""
    return await identity.users.create("Alice@Example.com", STRONG, name="Alice Liddell")


@pytest.fixture
def statements(pgstack_migrated_db: Database) -> Iterator[list[str]]:
    """Every SQL statement the test's Database sends from now on."""
    with record_statements(pgstack_migrated_db) as log:
        yield log


async def reset_token(identity: Identity, email: str) -> str | None:
    """The password-reset token issued for `email`, or None when it has no local account."""
    issued = await identity.auth.request_password_reset(email)
    return issued.token if issued is not None else None
