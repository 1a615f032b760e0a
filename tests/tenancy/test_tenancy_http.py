"""Tenant isolation and roles as callers meet them: httpx against create_app and the routers."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.identity import Identity
from pgstack.tenancy import Tenancy
from pgstack.web import create_app
from pgstack.web.identity import identity_router
from pgstack.web.tenancy import tenancy_router

from .conftest import NotesBase, World, bearer, login, make_user, notes_router, problem


async def _key(
    identity: Identity, user_id: uuid.UUID, scopes: tuple[str, ...] = ("tenant:owner",)
) -> tuple[str, uuid.UUID]:
    # tenant:owner caps nothing: the key acts with its user's own role in the tenant.
    issued = await identity.api_keys.create(user_id, "ci", scopes=list(scopes))
    return issued.key, issued.api_key.id


@pytest.fixture
async def tokens(client: httpx.AsyncClient, identity: Identity, world: World) -> dict[str, str]:
    """A session token and an API key for each user of the world, by name."""
    out: dict[str, str] = {}
    for name in ("owner", "admin", "member", "viewer", "b_owner"):
        user = getattr(world, name)
        out[name] = await login(client, user.email)
        out[f"{name}_key"] = (await _key(identity, user.id))[0]
    return out


async def _note(client: httpx.AsyncClient, token: str, tenant: object, body: str) -> str:
    response = await client.post("/notes", json={"body": body}, headers=bearer(token, tenant))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize("kind", ["session", "api key"])
async def test_a_member_of_a_cannot_reach_b_rows_through_any_route(
    client: httpx.AsyncClient, world: World, tokens: dict[str, str], kind: str
) -> None:
    # proves: N2, R7
    me = tokens["member"] if kind == "session" else tokens["member_key"]
    a_note = await _note(client, me, world.a.id, "a's")
    b_note = await _note(client, tokens["b_owner"], world.b.id, "b's")

    listed = await client.get("/notes", headers=bearer(me, world.a.id))
    assert [n["body"] for n in listed.json()] == ["a's"]
    assert listed.json()[0]["tenant_id"] == str(world.a.id)
    assert listed.json()[0]["created_by"] == str(world.member.id)

    # Naming B: not a member, so B is answered like a tenant that does not exist.
    for method, url in (
        ("GET", "/notes"),
        ("GET", f"/notes/{b_note}"),
        ("DELETE", f"/notes/{b_note}"),
        ("POST", "/notes"),
    ):
        kwargs = {"json": {"body": "x"}} if method == "POST" else {}
        answer = await client.request(method, url, headers=bearer(me, world.b.id), **kwargs)
        problem(answer, 404)
    for url in (f"/tenants/{world.b.id}", f"/tenants/{world.b.id}/members"):
        problem(await client.get(url, headers=bearer(me)), 404)
    problem(
        await client.post(
            f"/tenants/{world.b.id}/invitations",
            json={"email": "x@example.com"},
            headers=bearer(me),
        ),
        404,
    )
    problem(
        await client.delete(
            f"/tenants/{world.b.id}/members/{world.b_owner.id}", headers=bearer(me)
        ),
        404,
    )

    # Within A, B's row id does not exist either: the query is scoped to A.
    problem(await client.get(f"/notes/{b_note}", headers=bearer(me, world.a.id)), 404)
    problem(await client.delete(f"/notes/{b_note}", headers=bearer(me, world.a.id)), 404)
    still = await client.get(f"/notes/{b_note}", headers=bearer(tokens["b_owner"], world.b.id))
    assert still.status_code == 200 and still.json()["body"] == "b's"
    # And B's owner cannot see A's note.
    problem(
        await client.get(f"/notes/{a_note}", headers=bearer(tokens["b_owner"], world.b.id)), 404
    )


@pytest.mark.parametrize("kind", ["session", "api key"])
async def test_a_viewer_reads_but_cannot_write(
    client: httpx.AsyncClient, world: World, tokens: dict[str, str], kind: str
) -> None:
    # proves: N5, N2
    note = await _note(client, tokens["member"], world.a.id, "hello")
    me = tokens["viewer"] if kind == "session" else tokens["viewer_key"]
    seen = await client.get("/notes", headers=bearer(me, world.a.id))
    assert seen.status_code == 200 and [n["body"] for n in seen.json()] == ["hello"]
    problem(await client.post("/notes", json={"body": "x"}, headers=bearer(me, world.a.id)), 403)
    problem(await client.delete(f"/notes/{note}", headers=bearer(me, world.a.id)), 403)
    problem(
        await client.patch(f"/tenants/{world.a.id}", json={"name": "mine"}, headers=bearer(me)),
        403,
    )
    problem(
        await client.post(
            f"/tenants/{world.a.id}/invitations",
            json={"email": "x@example.com"},
            headers=bearer(me),
        ),
        403,
    )
    problem(
        await client.patch(
            f"/tenants/{world.a.id}/members/{world.viewer.id}",
            json={"role": "owner"},
            headers=bearer(me),
        ),
        403,
    )
    after = await client.get("/notes", headers=bearer(tokens["member"], world.a.id))
    assert [n["body"] for n in after.json()] == ["hello"]


async def test_the_tenant_must_be_named_and_well_formed(
    client: httpx.AsyncClient, world: World, tokens: dict[str, str]
) -> None:
    # proves: N2, I8
    me = tokens["member"]
    assert "Name the tenant" in str(problem(await client.get("/notes", headers=bearer(me)), 422))
    hostile = [
        "not-a-uuid",
        "' OR 1=1 --",
        str(world.a.id) + "x",
        "0" * 64,
        str(world.a.id).upper() + " ",
    ]
    for value in hostile:
        answer = await client.get("/notes", headers=bearer(me, value))
        assert answer.status_code in (200, 422), (value, answer.text)
        if answer.status_code == 200:  # the same UUID spelled upper-case is the same tenant
            assert uuid.UUID(value.strip()) == world.a.id
    problem(await client.get("/notes", headers=bearer(me, "x" * 100)), 422)
    raw = {"Authorization": f"Bearer {me}", "X-Tenant-ID": "\u0430".encode() * 18}
    problem(await client.get("/notes", headers=raw), 422)
    # Path and header naming different tenants is refused, not resolved either way.
    problem(await client.get(f"/tenants/{world.a.id}", headers=bearer(me, world.b.id)), 422)
    spelled = bearer(me, str(world.a.id).upper())  # the same tenant, spelled otherwise
    assert (await client.get(f"/tenants/{world.a.id}", headers=spelled)).status_code == 200
    problem(await client.get("/notes", headers={"X-Tenant-ID": str(world.a.id)}), 401)


async def test_a_key_bound_to_a_tenant_acts_for_it_only(
    client: httpx.AsyncClient,
    identity: Identity,
    tenancy: Tenancy,
    world: World,
    tokens: dict[str, str],
) -> None:
    # proves: N2, I5
    await tenancy.memberships.add(world.b.id, world.member.id, "member")
    key, key_id = await _key(identity, world.member.id)
    await tenancy.memberships.bind_api_key(key_id, world.a.id)
    await _note(client, tokens["b_owner"], world.b.id, "b's")
    # No tenant named: the bound one.
    current = await client.get("/tenants/current", headers=bearer(key))
    assert current.json()["tenant"]["id"] == str(world.a.id)
    assert current.json()["role"] == "member"
    assert [
        t["tenant"]["id"] for t in (await client.get("/tenants", headers=bearer(key))).json()
    ] == [str(world.a.id)]
    # Naming B, where the user is a member too, is still refused for this key.
    problem(await client.get("/notes", headers=bearer(key, world.b.id)), 403)
    problem(await client.get(f"/tenants/{world.b.id}/members", headers=bearer(key)), 403)
    # The session of the same user reaches B.
    assert (await client.get("/notes", headers=bearer(tokens["member"], world.b.id))).json()
    # Leaving A ends the key's access to A, and the key does not fall back to B.
    await tenancy.memberships.remove(world.a.id, world.member.id)
    problem(await client.get("/notes", headers=bearer(key)), 404)
    problem(await client.get("/notes", headers=bearer(key, world.b.id)), 403)


async def test_concurrent_requests_of_two_tenants_never_see_each_other(
    client: httpx.AsyncClient, world: World, tokens: dict[str, str]
) -> None:
    # proves: N2 (the tenant context follows each request's own task)
    for i in range(3):
        await _note(client, tokens["owner"], world.a.id, f"a{i}")
        await _note(client, tokens["b_owner_key"], world.b.id, f"b{i}")

    async def read(token: str, tenant: uuid.UUID) -> tuple[uuid.UUID, set[str]]:
        answer = await client.get("/notes", headers=bearer(token, tenant))
        assert answer.status_code == 200, answer.text
        return tenant, {n["tenant_id"] for n in answer.json()}

    calls = [
        read(tokens["owner"], world.a.id) if i % 2 else read(tokens["b_owner_key"], world.b.id)
        for i in range(40)
    ]
    for tenant, seen in await asyncio.gather(*calls):
        assert seen == {str(tenant)}


async def test_members_invite_accept_change_roles_and_leave_over_http(
    client: httpx.AsyncClient, identity: Identity, world: World, tokens: dict[str, str]
) -> None:
    # proves: N5
    a = world.a.id
    # An admin cannot hand out the owner role; an owner can.
    problem(
        await client.post(
            f"/tenants/{a}/invitations",
            json={"email": "carol@example.com", "role": "owner"},
            headers=bearer(tokens["admin"]),
        ),
        403,
    )
    invited = await client.post(
        f"/tenants/{a}/invitations",
        json={"email": "carol@example.com", "role": "member"},
        headers=bearer(tokens["admin"]),
    )
    assert invited.status_code == 201, invited.text
    carol = await make_user(identity, "carol@example.com")
    carol_token = await login(client, carol.email)
    # Someone else holding the token cannot use it.
    problem(
        await client.post(
            "/tenants/invitations/accept",
            json={"token": invited.json()["token"]},
            headers=bearer(tokens["b_owner"]),
        ),
        401,
    )
    accepted = await client.post(
        "/tenants/invitations/accept",
        json={"token": invited.json()["token"]},
        headers=bearer(carol_token),
    )
    assert accepted.status_code == 200 and accepted.json()["role"] == "member"
    members = (await client.get(f"/tenants/{a}/members", headers=bearer(carol_token))).json()
    assert {m["email"]: m["role"] for m in members}["carol@example.com"] == "member"
    # An admin cannot demote the owner; the owner cannot leave as the last owner.
    problem(
        await client.patch(
            f"/tenants/{a}/members/{world.owner.id}",
            json={"role": "member"},
            headers=bearer(tokens["admin"]),
        ),
        403,
    )
    problem(
        await client.delete(
            f"/tenants/{a}/members/{world.owner.id}", headers=bearer(tokens["owner"])
        ),
        409,
    )
    # A member cannot remove someone else; a viewer can leave.
    problem(
        await client.delete(f"/tenants/{a}/members/{carol.id}", headers=bearer(tokens["member"])),
        403,
    )
    left = await client.delete(
        f"/tenants/{a}/members/{world.viewer.id}", headers=bearer(tokens["viewer"])
    )
    assert left.status_code == 204
    problem(await client.get("/notes", headers=bearer(tokens["viewer"], a)), 404)
    promoted = await client.patch(
        f"/tenants/{a}/members/{carol.id}", json={"role": "admin"}, headers=bearer(tokens["admin"])
    )
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    for bad in ({"role": "Owner!"}, {"role": ""}, {"role": "a" * 41}, {"role": "x\u0000"}, {}):
        problem(
            await client.patch(
                f"/tenants/{a}/members/{carol.id}", json=bad, headers=bearer(tokens["owner"])
            ),
            422,
        )


async def test_tenant_admin_routes_need_the_admin_role(
    client: httpx.AsyncClient, identity: Identity, world: World, tokens: dict[str, str]
) -> None:
    # proves: N1, W2
    root = await make_user(identity, "root@example.com", roles=["admin"])
    admin = bearer(await login(client, root.email))
    problem(await client.get("/admin/tenants", headers=bearer(tokens["owner"])), 403)
    problem(
        await client.post(
            "/admin/tenants",
            json={"external_id": "x", "name": "x"},
            headers=bearer(tokens["owner"]),
        ),
        403,
    )
    created = await client.post(
        "/admin/tenants",
        json={"external_id": "T999", "name": "Nine", "plan": "pro", "owner_id": str(root.id)},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    tid = created.json()["id"]
    problem(
        await client.post(
            "/admin/tenants", json={"external_id": "T999", "name": "Dup"}, headers=admin
        ),
        409,
    )
    by_ext = await client.get("/admin/tenants/by-external-id/T999", headers=admin)
    assert by_ext.json()["id"] == tid
    listing = await client.get("/admin/tenants?plan=pro", headers=admin)
    assert [t["external_id"] for t in listing.json()["items"]] == ["T999"]
    plan = await client.put(
        f"/admin/tenants/{tid}/plan", json={"plan": "enterprise"}, headers=admin
    )
    assert plan.json()["plan"] == "enterprise"
    # Suspending A locks its members out; a move the table does not allow is a 409.
    suspended = await client.post(f"/admin/tenants/{world.a.id}/suspend", headers=admin)
    assert suspended.json()["status"] == "suspended" and not suspended.json()["is_active"]
    problem(await client.get("/notes", headers=bearer(tokens["member"], world.a.id)), 403)
    problem(
        await client.put(
            f"/admin/tenants/{world.a.id}/status", json={"status": "past_due"}, headers=admin
        ),
        409,
    )
    await client.post(f"/admin/tenants/{world.a.id}/reactivate", headers=admin)
    assert (
        await client.get("/notes", headers=bearer(tokens["member"], world.a.id))
    ).status_code == 200
    for bad in (
        {"external_id": "", "name": "x"},
        {"external_id": "y", "name": "x", "status": "cancelled"},
        {"external_id": "y", "name": "x", "timezone": "Nowhere/None"},
        {"external_id": "y", "name": "x", "plan": "PRO PLAN"},
        {"external_id": "y", "name": "x\u0000"},
        {"external_id": "y", "name": "x", "owner_id": str(uuid.uuid4())},
        {"external_id": "y", "name": "x", "settings": []},
    ):
        answer = await client.post("/admin/tenants", json=bad, headers=admin)
        assert 400 <= answer.status_code < 500, (bad, answer.text)
    problem(await client.get("/admin/tenants?sort=password_hash", headers=admin), 422)
    problem(await client.get(f"/admin/tenants/{uuid.uuid4()}", headers=admin), 404)


async def test_login_by_username_and_profile_fields(
    client: httpx.AsyncClient, identity: Identity
) -> None:
    # proves: I1, I3
    user = await make_user(identity, "dora@example.com", username="Dora.Explorer")
    assert user.username == "dora.explorer"
    ok = await client.post(
        "/auth/login",
        json={"username": "DORA.explorer", "password": "violet Harbour 42 lanterns drift"},
    )
    assert ok.status_code == 200, ok.text
    token = ok.json()["access_token"]
    patched = await client.patch(
        "/auth/me",
        json={"bio": "maps", "avatar_url": "https://example.com/d.png"},
        headers=bearer(token),
    )
    assert patched.status_code == 200 and patched.json()["bio"] == "maps"
    assert patched.json()["username"] == "dora.explorer"
    # A wrong password by username gets the e-mail login's answer; both names count the lockout.
    wrong_user = await client.post(
        "/auth/login", json={"username": "dora.explorer", "password": "nope"}
    )
    wrong_email = await client.post(
        "/auth/login", json={"email": "dora@example.com", "password": "nope"}
    )
    unknown = await client.post("/auth/login", json={"username": "nobody", "password": "nope"})
    assert wrong_user.json()["detail"] == wrong_email.json()["detail"] == unknown.json()["detail"]
    assert (await identity.users.get(user.id)).failed_login_count == 2
    for body in (
        {"password": "x"},
        {"email": "dora@example.com", "username": "dora.explorer", "password": "x"},
        {"username": "a@b", "password": "x"},
    ):
        problem(await client.post("/auth/login", json=body), 422)
    other = await make_user(identity, "eve@example.com")
    eve = await login(client, other.email)
    problem(
        await client.patch("/auth/me", json={"username": "dora.explorer"}, headers=bearer(eve)), 409
    )
    problem(
        await client.patch("/auth/me", json={"username": "d\u043era"}, headers=bearer(eve)), 422
    )
    problem(
        await client.patch(
            "/auth/me", json={"avatar_url": "javascript:alert(1)"}, headers=bearer(eve)
        ),
        422,
    )


async def test_a_tenant_over_its_plan_limit_gets_429_and_others_do_not(
    pgstack_migrated_settings: Settings,
    pgstack_migrated_db: Database,
    identity: Identity,
    tenancy: Tenancy,
    world: World,
) -> None:
    # proves: N4, N2 — the plan's limit is counted per tenant by the tenant dependency itself
    settings = pgstack_migrated_settings.model_copy(
        update={"rate_limit_plans": {"default": "", "free": "3/minute"}}
    )
    await tenancy.tenants.change_plan(world.a.id, "free")
    await tenancy.tenants.change_plan(world.b.id, "team")  # not in the table: "default"
    async with pgstack_migrated_db.engine.begin() as conn:
        await conn.run_sync(NotesBase.metadata.create_all)
    app = create_app(
        settings,
        monitor_interval=None,
        routers=[identity_router(), tenancy_router(), notes_router()],
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            a_key = (await _key(identity, world.member.id))[0]
            b_key = (await _key(identity, world.b_owner.id))[0]
            answers = await asyncio.gather(
                *(client.get("/notes", headers=bearer(a_key, world.a.id)) for _ in range(8))
            )
            statuses = sorted(r.status_code for r in answers)
            assert statuses == [200] * 3 + [429] * 5, statuses
            refused = next(r for r in answers if r.status_code == 429)
            body = problem(refused, 429)
            assert "plan-free" in str(body), body
            assert 0 < int(refused.headers["Retry-After"]) <= 60
            assert "RateLimit" in refused.headers
            # Tenant B, on a plan without a limit, is not counted against A's quota.
            for _ in range(5):
                ok = await client.get("/notes", headers=bearer(b_key, world.b.id))
                assert ok.status_code == 200, ok.text


async def test_a_key_acts_in_a_tenant_only_within_its_tenant_scope(
    client: httpx.AsyncClient, identity: Identity, world: World
) -> None:
    # proves: I9, N2 — a key's scopes bound the tenant routes too
    a = world.a.id
    unscoped = (await _key(identity, world.owner.id, scopes=("items:read",)))[0]
    refused = await client.get("/notes", headers=bearer(unscoped, a))
    assert "tenant:member" in str(problem(refused, 403)["detail"])
    reader = (await _key(identity, world.owner.id, scopes=("tenant:viewer",)))[0]
    assert (await client.get("/notes", headers=bearer(reader, a))).status_code == 200
    problem(await client.post("/notes", json={"body": "x"}, headers=bearer(reader, a)), 403)
    # A member's key scoped tenant:owner still acts as a member: it cannot manage members.
    member = (await _key(identity, world.member.id))[0]
    await _note(client, member, a, "by a member's key")
    demote = await client.patch(
        f"/tenants/{a}/members/{world.viewer.id}", json={"role": "member"}, headers=bearer(member)
    )
    problem(demote, 403)
    # An owner's key scoped tenant:admin manages members but cannot touch the owner role.
    admin_key = (await _key(identity, world.owner.id, scopes=("tenant:admin",)))[0]
    promote = await client.patch(
        f"/tenants/{a}/members/{world.viewer.id}",
        json={"role": "member"},
        headers=bearer(admin_key),
    )
    assert promote.status_code == 200, promote.text
    crown = await client.patch(
        f"/tenants/{a}/members/{world.viewer.id}", json={"role": "owner"}, headers=bearer(admin_key)
    )
    problem(crown, 403)


async def test_a_malformed_id_in_a_path_is_a_422_naming_the_parameter(
    client: httpx.AsyncClient, world: World, tokens: dict[str, str], identity: Identity
) -> None:
    # proves: N2, I8, W2
    me = bearer(tokens["owner"])
    boss = await make_user(identity, "boss@example.com", roles=["admin"])
    admin = bearer(await login(client, boss.email))
    a, user = world.a.id, world.member.id
    bad_ids = [
        "not-a-uuid",
        f"{a}x",
        "0" * 64,
        "%00",
        "%E2%80%AE%D0%B0",
        "x" * 5000,
        "'%20OR%201=1",
    ]
    for bad in bad_ids:
        cases = [
            ("GET", f"/tenants/{bad}", me, ["tenant_id"]),
            ("PATCH", f"/tenants/{bad}", me, ["tenant_id"]),
            ("GET", f"/tenants/{bad}/members", me, ["tenant_id"]),
            ("POST", f"/tenants/{bad}/invitations", me, ["tenant_id"]),
            ("DELETE", f"/tenants/{a}/invitations/{bad}", me, ["invitation_id"]),
            ("PATCH", f"/tenants/{a}/members/{bad}", me, ["user_id"]),
            ("DELETE", f"/tenants/{bad}/members/{bad}", me, ["tenant_id", "user_id"]),
            ("GET", f"/admin/tenants/{bad}", admin, ["tenant_id"]),
            ("PUT", f"/admin/tenants/{bad}/plan", admin, ["tenant_id"]),
            ("PUT", f"/admin/tenants/{bad}/status", admin, ["tenant_id"]),
            ("POST", f"/admin/tenants/{bad}/suspend", admin, ["tenant_id"]),
            ("POST", f"/admin/tenants/{bad}/reactivate", admin, ["tenant_id"]),
            ("POST", f"/admin/tenants/{bad}/members", admin, ["tenant_id"]),
            ("GET", f"/admin/users/{bad}", admin, ["user_id"]),
            ("DELETE", f"/admin/users/{bad}/2fa", admin, ["user_id"]),
        ]
        for method, url, headers, names in cases:
            answer = await client.request(method, url, headers=headers, json={})
            body = problem(answer, 422)
            assert [e["loc"] for e in body["errors"]] == [["path", n] for n in names], url
            detail = str(body["detail"])
            assert all(n in detail for n in names) and "UUID" in detail, detail
    # Nor is a caller who has not signed in told anything else than that.
    problem(await client.get("/tenants/not-a-uuid"), 422)
    # What the router serves by name, and the methods of a path, stay as they were.
    assert (await client.get("/tenants/current", headers=bearer(tokens["owner"], a))).is_success
    problem(await client.patch("/tenants/current", headers=me), 405)
    answer = await client.delete("/admin/users/statistics", headers=admin)
    problem(answer, 405)
    assert answer.headers["Allow"] == "GET"
    problem(await client.delete(f"/tenants/{a}", headers=me), 405)
    # A path that fits no route at all, or no route of that method, is still not found.
    problem(await client.get("/tenants/not-a-uuid/nothing", headers=me), 404)
    problem(await client.put("/tenants/not-a-uuid", headers=me), 404)
    assert (await client.get(f"/tenants/{a}", headers=me)).status_code == 200
    assert (await client.get(f"/tenants/{a}/members/{user}", headers=me)).status_code == 405
