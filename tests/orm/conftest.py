"""Fixtures for model tests: tables of a test-local declarative base, created per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from sqlalchemy import MetaData

from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.database import Database

CreateTables = Callable[[MetaData], Awaitable[None]]


@pytest.fixture
async def create_tables(pgstack_db: Database) -> AsyncIterator[CreateTables]:
    """Create a test base's tables now; they are dropped when the test ends."""
    created: list[MetaData] = []

    async def create(metadata: MetaData) -> None:
        async with pgstack_db.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
        created.append(metadata)

    yield create
    async with pgstack_db.engine.begin() as conn:
        for metadata in reversed(created):
            await conn.run_sync(metadata.drop_all)


@pytest.fixture
def encryption_ring() -> Iterator[KeyRing]:
    """A fresh process-wide key ring for the test (two keys, k2 newest), reset afterwards."""
    ring = KeyRing.parse(f"{generate_key('k2')},{generate_key('k1')}")
    configure_encryption(ring)
    yield ring
    configure_encryption(None)
