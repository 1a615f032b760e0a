"""A database in the production shape: `db init` roles, migrations run by the owner."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from pgstack.testing.templates import _admin, run_async

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tenancy_rls_setup import ACME, GLOBEX, RlsApp, cli, raw, write_project


@pytest.fixture
def rls_app(
    pgstack_server_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RlsApp]:
    """A new database made by `db init`, migrated by the owner, with tenants ACME and GLOBEX."""
    tag = uuid.uuid4().hex[:10]
    database = f"pgstack_rls_{tag}"
    folder = tmp_path / "rlsapp"
    app = RlsApp(
        admin=pgstack_server_url,
        owner=pgstack_server_url.set(
            username=f"pgstack_owner_{tag}", password=f"o-{tag}", database=database
        ),
        app=pgstack_server_url.set(
            username=f"pgstack_app_{tag}", password=f"a-{tag}", database=database
        ),
        project=write_project(folder),
    )
    monkeypatch.chdir(tmp_path)  # no stray .env or pyproject.toml
    env: dict[str, str | None] = {
        "DATABASE_URL": raw(app.app),
        "DATABASE_MIGRATION_URL": raw(app.owner),
        "PGSTACK_ENV": "development",
    }
    try:
        made = cli("db", "init", "--admin-url", raw(app.admin), env=env)
        assert made.exit_code == 0, made.output
        migrated = cli("db", "upgrade", "--project", str(folder), env=env)
        assert migrated.exit_code == 0, migrated.output
        run_async(
            lambda: _admin(
                app.owner,
                f"INSERT INTO tenants (id, name) VALUES ('{ACME}', 'acme'), ('{GLOBEX}', 'globex')",
            )
        )
        yield app
    finally:
        run_async(
            lambda: _admin(
                pgstack_server_url,
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{app.app.username}"',
                f'DROP ROLE IF EXISTS "{app.owner.username}"',
            )
        )
