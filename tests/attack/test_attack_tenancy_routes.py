"""Cross-tenant ids in paths and bodies, invitations replayed and raced, the last owner raced.

Each is an attack through the HTTP routes that the routes withstand; kept so they go on doing so.
"""

from __future__ import annotations

import asyncio

import httpx

from pgstack.identity import Identity
from pgstack.tenancy import Tenancy
from tests.tenancy.conftest import World, bearer, login, make_user, problem


async def test_an_admin_of_a_cannot_reach_b_through_ids_in_a_paths(
    client: httpx.AsyncClient, tenancy: Tenancy, world: World
) -> None:
    # proves: N5, N2
    b_invite = await tenancy.memberships.invite(world.b.id, "someone@b.example", "member")
    admin = await login(client, world.admin.email)
    a = world.a.id
    problem(
        await client.delete(
            f"/tenants/{a}/invitations/{b_invite.membership.id}", headers=bearer(admin)
        ),
        404,
    )
    for method, kwargs in (("PATCH", {"json": {"role": "viewer"}}), ("DELETE", {})):
        answer = await client.request(
            method, f"/tenants/{a}/members/{world.b_owner.id}", headers=bearer(admin), **kwargs
        )
        problem(answer, 404)
    # The header may not name B either, nor disagree with the path.
    problem(await client.get("/tenants/current", headers=bearer(admin, world.b.id)), 404)
    problem(await client.get(f"/tenants/{a}/members", headers=bearer(admin, world.b.id)), 422)
    open_b = await tenancy.memberships.list(world.b.id, include_invitations=True)
    assert b_invite.membership.id in {row.id for row, _ in open_b}
    assert await tenancy.memberships.role_of(world.b.id, world.b_owner.id) == "owner"


async def test_an_invitation_raced_and_replayed_joins_once(
    client: httpx.AsyncClient, identity: Identity, tenancy: Tenancy, world: World
) -> None:
    # proves: N5
    issued = await tenancy.memberships.invite(world.a.id, "dora@example.com", "member")
    dora = await make_user(identity, "dora@example.com")
    token = await login(client, dora.email)
    answers = await asyncio.gather(
        *(
            client.post(
                "/tenants/invitations/accept", json={"token": issued.token}, headers=bearer(token)
            )
            for _ in range(6)
        )
    )
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) == 1 and set(codes) <= {200, 401, 409}, codes
    # Replayed after leaving: the token was spent.
    left = await client.delete(f"/tenants/{world.a.id}/members/{dora.id}", headers=bearer(token))
    assert left.status_code == 204
    replay = await client.post(
        "/tenants/invitations/accept", json={"token": issued.token}, headers=bearer(token)
    )
    problem(replay, 401)
    assert await tenancy.memberships.role_of(world.a.id, dora.id) is None


async def test_two_owners_leaving_at_once_leave_one_owner(
    client: httpx.AsyncClient, tenancy: Tenancy, world: World
) -> None:
    # proves: N5
    await tenancy.memberships.change_role(world.a.id, world.admin.id, "owner")
    tokens = [await login(client, u.email) for u in (world.owner, world.admin)]
    users = (world.owner, world.admin)
    answers = await asyncio.gather(
        *(
            client.delete(f"/tenants/{world.a.id}/members/{u.id}", headers=bearer(t))
            for u, t in zip(users, tokens, strict=True)
        )
    )
    assert sorted(a.status_code for a in answers) == [204, 409]
    roles = [await tenancy.memberships.role_of(world.a.id, u.id) for u in users]
    assert sorted(r or "gone" for r in roles) == ["gone", "owner"]
