"""`pgstack users ...` and `pgstack api-keys ...` against a migrated database."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli.main import app
from pgstack.db.database import Database
from pgstack.errors import AuthenticationError
from pgstack.identity import Identity
from pgstack.testing.plugin import settings_for

from .conftest import STRONG

runner = CliRunner()


async def _verify(url: URL, key: str) -> str:
    async with Database(settings_for(url)) as db:
        return (await Identity(db).api_keys.verify(key)).user.email


def test_create_admin_list_and_api_keys(pgstack_migrated_url: URL) -> None:
    # proves: I1, I5
    env = {"DATABASE_URL": pgstack_migrated_url.render_as_string(hide_password=False)}
    created = runner.invoke(
        app,
        ["users", "create-admin", "--email", "Root@Example.com", "--name", "Root"],
        env=env,
        input=f"{STRONG}\n{STRONG}\n",
    )
    assert created.exit_code == 0, created.output
    assert "created administrator root@example.com" in created.output
    assert STRONG not in created.output

    again = runner.invoke(
        app, ["users", "create-admin", "--email", "root@example.com", "--generate"], env=env
    )
    assert again.exit_code == 1 and "already exists" in again.output

    listed = runner.invoke(app, ["users", "list", "--role", "admin"], env=env)
    assert listed.exit_code == 0 and "root@example.com" in listed.output

    key = runner.invoke(
        app,
        ["api-keys", "create", "--email", "root@example.com", "--name", "ci", "--scope", "a"],
        env=env,
    )
    assert key.exit_code == 0, key.output
    plaintext = key.output.strip().splitlines()[-1]
    assert plaintext.startswith("pgs_")
    assert asyncio.run(_verify(pgstack_migrated_url, plaintext)) == "root@example.com"
    key_id = key.output.split("created API key ")[1].split(";")[0]

    revoked = runner.invoke(app, ["api-keys", "revoke", key_id], env=env)
    assert revoked.exit_code == 0 and plaintext not in revoked.output
    with pytest.raises(AuthenticationError):
        asyncio.run(_verify(pgstack_migrated_url, plaintext))
    unknown = runner.invoke(
        app, ["api-keys", "create", "--email", "nobody@example.com", "--name", "x"], env=env
    )
    assert unknown.exit_code == 1 and "No user" in unknown.output
