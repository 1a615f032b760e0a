"""A migrated database per test (pgstack's plugin), an encryption key, the fake provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from crm_agent import provider

from pgstack.crypto import configure_encryption, generate_key
from pgstack.migrations import MigrationProject

pytest_plugins = ["pgstack.testing.plugin"]

HERE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pgstack_migration_project() -> MigrationProject:
    return MigrationProject.from_pyproject(HERE)


@pytest.fixture
def encryption_key() -> Iterator[str]:
    key = generate_key("test")
    configure_encryption(key)
    yield key
    configure_encryption(None)


@pytest.fixture
def crm(monkeypatch: pytest.MonkeyPatch) -> Iterator[provider.FakeCRM]:
    """A fake provider served over HTTP; the agent's refresher is pointed at it."""
    fake = provider.FakeCRM()
    with provider.ProviderServer(fake) as server:
        monkeypatch.setenv("CRM_TOKEN_URL", server.token_url)
        monkeypatch.setenv("CRM_CLIENT_ID", provider.CLIENT_ID)
        monkeypatch.setenv("CRM_CLIENT_SECRET", provider.CLIENT_SECRET)
        yield fake
