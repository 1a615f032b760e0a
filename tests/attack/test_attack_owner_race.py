"""Only an owner grants or takes the owner role: the rule must hold under concurrency.

The member routes read the target's role, decided whether the caller may touch it, and only
then locked the tenant to change it. An owner who promoted the target in between (the race
is forced here by holding the tenant's lock) let an admin demote, or remove, an owner.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import httpx
import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.tenancy import Tenancy
from tests.tenancy.conftest import World, bearer, login, problem


async def _until_waiting_on_a_lock(db: Database, task: Awaitable[object]) -> None:
    for _ in range(200):
        async with db.engine.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the request never waited for the tenant's lock")


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_an_admin_cannot_demote_or_remove_someone_made_owner_meanwhile(
    client: httpx.AsyncClient,
    pgstack_migrated_db: Database,
    tenancy: Tenancy,
    world: World,
    method: str,
) -> None:
    # proves: N5, I9
    db = pgstack_migrated_db
    token = await login(client, world.admin.email)
    url = f"/tenants/{world.a.id}/members/{world.member.id}"
    async with db.engine.connect() as owner_tx:
        # An owner's change in flight: it holds the tenant's lock, as lock_tenant takes it.
        await owner_tx.execute(
            text("SELECT 1 FROM tenants WHERE id = :t FOR UPDATE"), {"t": world.a.id}
        )
        kwargs = {"json": {"role": "viewer"}} if method == "PATCH" else {}
        request = asyncio.ensure_future(
            client.request(method, url, headers=bearer(token), **kwargs)
        )
        await _until_waiting_on_a_lock(db, request)
        # The owner makes the member an owner, and commits.
        await owner_tx.execute(
            text(
                "UPDATE tenant_memberships SET role = 'owner' WHERE tenant_id = :t AND user_id = :u"
            ),
            {"t": world.a.id, "u": world.member.id},
        )
        await owner_tx.commit()
    answer = await request
    problem(answer, 403)
    assert await tenancy.memberships.role_of(world.a.id, world.member.id) == "owner"


async def test_an_admin_still_changes_and_removes_members(
    client: httpx.AsyncClient, tenancy: Tenancy, world: World
) -> None:
    # proves: N5
    token = await login(client, world.admin.email)
    url = f"/tenants/{world.a.id}/members/{world.member.id}"
    changed = await client.patch(url, json={"role": "viewer"}, headers=bearer(token))
    assert changed.status_code == 200 and changed.json()["role"] == "viewer"
    problem(await client.patch(url, json={"role": "owner"}, headers=bearer(token)), 403)
    owner = f"/tenants/{world.a.id}/members/{world.owner.id}"
    problem(await client.patch(owner, json={"role": "member"}, headers=bearer(token)), 403)
    problem(await client.delete(owner, headers=bearer(token)), 403)
    assert (await client.delete(url, headers=bearer(token))).status_code == 204
    assert await tenancy.memberships.role_of(world.a.id, world.member.id) is None
    unknown = f"/tenants/{world.a.id}/members/{uuid.uuid4()}"
    problem(await client.delete(unknown, headers=bearer(token)), 404)
