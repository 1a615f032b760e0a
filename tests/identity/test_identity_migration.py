"""The identity revision: a round trip, no drift from the models, no ENUM types left behind."""

from __future__ import annotations

from sqlalchemy.engine import URL

from pgstack.migrations import MigrationProject, downgrade, upgrade
from pgstack.migrations.project import pgstack_metadata
from pgstack.testing import assert_migrations_roundtrip, assert_no_drift, schema_snapshot

PGSTACK_ONLY = MigrationProject.pgstack_only()


def test_identity_revision_round_trips_without_drift(pgstack_empty_url: URL) -> None:
    # proves: I1, G2, G4, D5
    assert_migrations_roundtrip(pgstack_empty_url, project=PGSTACK_ONLY)
    assert_no_drift(pgstack_empty_url, pgstack_metadata(), project=PGSTACK_ONLY)
    snapshot = schema_snapshot(pgstack_empty_url)
    for table in ("users", "api_keys", "user_tokens", "recovery_codes", "login_sessions"):
        assert f"relation public.{table} (r)" in snapshot
    assert any("fk_api_keys_user_id_users" in line and "CASCADE" in line for line in snapshot)
    assert any(line.startswith("constraint ck_users_provider") for line in snapshot)

    downgrade(pgstack_empty_url, "pgstack_0001", project=PGSTACK_ONLY)
    after = schema_snapshot(pgstack_empty_url)
    assert not any("users" in line or "api_keys" in line for line in after)
    assert not any(line.startswith("type ") for line in after), "no type may be left behind"
    upgrade(pgstack_empty_url, project=PGSTACK_ONLY)
