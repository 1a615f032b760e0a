"""Binding an API key to a tenant: revoked, rotated-out and expired keys are refused, and a
key whose user is not a member gets a message that names the tenant and the fix."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli.main import app
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import ConflictError, NotFoundError
from pgstack.identity import Identity
from pgstack.tenancy import Tenancy

from .conftest import STRONG, make_user

runner = CliRunner()


def _bound(url: URL) -> list[tuple[object, ...]]:
    async def fetch() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            rows = await conn.fetch("SELECT api_key_id, tenant_id FROM tenant_api_keys")
            return [tuple(r) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_bind_key_refuses_a_revoked_key_and_names_the_fix_for_a_non_member(
    pgstack_migrated_url: URL,
) -> None:
    # proves: N5, I5
    env = {"DATABASE_URL": pgstack_migrated_url.render_as_string(hide_password=False)}

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env, input=f"{STRONG}\n{STRONG}\n")
        assert result.exit_code == code, result.output
        return result.output

    def new_key(email: str, name: str) -> str:
        made = run("api-keys", "create", "--email", email, "--name", name)
        found = re.search(r"created API key ([0-9a-f-]{36})", made)
        assert found is not None, made
        return found.group(1)

    run("users", "create-admin", "--email", "root@example.com")
    run("users", "create-admin", "--email", "bob@example.com")
    run("tenants", "create", "T1", "--name", "Acme", "--owner-email", "root@example.com")
    tenant_id = json_id(run("tenants", "show", "T1"))
    key = new_key("bob@example.com", "ci")

    refused = run("tenants", "bind-key", "T1", key, code=1)
    assert refused == (
        f"error: bob@example.com, the user of API key {key}, is not a member of tenant T1: "
        "add them first with `pgstack tenants add-member T1 --email bob@example.com`, then "
        "run bind-key again.\n"
    )
    assert tenant_id not in refused
    assert _bound(pgstack_migrated_url) == []

    run("tenants", "add-member", "T1", "--email", "bob@example.com")
    assert run("tenants", "bind-key", "T1", key) == f"API key {key} now acts for tenant T1 only\n"
    assert [str(k) for k, _ in _bound(pgstack_migrated_url)] == [key]

    revoked = new_key("bob@example.com", "old")
    run("api-keys", "revoke", revoked)
    assert run("tenants", "bind-key", "T1", revoked, code=1) == (
        f"error: API key {revoked} is revoked: a revoked key cannot be bound to a tenant. "
        "Bind the key that replaced it, or create a new one.\n"
    )
    # Revoked and its user no member: the key's state is what is said first.
    run("users", "create-admin", "--email", "eve@example.com")
    eves = new_key("eve@example.com", "eve")
    run("api-keys", "revoke", eves)
    assert f"API key {eves} is revoked" in run("tenants", "bind-key", "T1", eves, code=1)
    assert [str(k) for k, _ in _bound(pgstack_migrated_url)] == [key]


def json_id(shown: str) -> str:
    found = re.search(r'"id": "([0-9a-f-]{36})"', shown)
    assert found is not None, shown
    return found.group(1)


async def test_the_service_refuses_keys_that_can_no_longer_act(
    pgstack_migrated_db: Database, identity: Identity, tenancy: Tenancy
) -> None:
    # proves: N5, I5
    ada = await make_user(identity, "ada@example.com")
    acme = await tenancy.tenants.create("TACME", "Acme", owner_id=ada.id)
    rotated = (await identity.api_keys.create(ada.id, "rotated")).api_key
    successor = await identity.api_keys.rotate(rotated.id, grace=timedelta(hours=1))
    with pytest.raises(ConflictError, match=rf"^API key {rotated.id} is revoked from .* UTC"):
        await tenancy.memberships.bind_api_key(rotated.id, acme.id)

    expired = (await identity.api_keys.create(ada.id, "expired")).api_key
    async with pgstack_migrated_db.transaction() as session:
        await session.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": expired.id},
        )
    with pytest.raises(ConflictError, match=rf"^API key {expired.id} expired at "):
        await tenancy.memberships.bind_api_key(expired.id, acme.id)

    bob = await make_user(identity, "bob@example.com")
    bobs = (await identity.api_keys.create(bob.id, "bob")).api_key
    with pytest.raises(NotFoundError) as refused:
        await tenancy.memberships.bind_api_key(bobs.id, acme.id)
    assert refused.value.message == (
        f"The user of API key {bobs.id} is not a member of tenant {acme.id}: add them to the "
        "tenant first (memberships.add, or an invitation they accept), then bind the key."
    )

    await tenancy.memberships.bind_api_key(successor.api_key.id, acme.id)
    async with pgstack_migrated_db.transaction(readonly=True) as session:
        rows = (await session.execute(text("SELECT api_key_id FROM tenant_api_keys"))).all()
    assert [r[0] for r in rows] == [successor.api_key.id]
