"""The service as operators meet it: probes, and migrations that go up, down and up."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from pgstack.migrations import MigrationProject
from pgstack.testing import assert_migrations_roundtrip, assert_no_drift

HERE = Path(__file__).resolve().parents[1]


async def test_probes(client: httpx.AsyncClient) -> None:
    # proves: X4, C5 (liveness; readiness with the migrations at head)
    live = await client.get("/health")
    assert live.status_code == 200 and live.json()["status"] == "pass"
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["migrations"][0]["status"] == "pass"


@pytest.mark.parametrize("check", ["roundtrip", "drift"])
def test_migrations(check: str, pgstack_empty_url: URL, pgstack_migrated_url: URL) -> None:
    # proves: X4, G2, G4 (the app's revision on top of pgstack's: up, down, up; no drift)
    project = MigrationProject.from_pyproject(HERE)
    if check == "roundtrip":
        assert_migrations_roundtrip(pgstack_empty_url, project=project)
    else:
        assert_no_drift(pgstack_migrated_url, project=project)
