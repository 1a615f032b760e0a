"""The agent service as its users, their keys and hostile callers meet it: HTTP, real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import URL

from pgstack import Database
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject
from pgstack.testing import assert_migrations_roundtrip, assert_no_drift

from .conftest import (
    PASSWORD,
    IdentityProvider,
    Outbox,
    away_from_boundary,
    bearer,
    builder,
    new_workspace,
    problem,
    sign_up,
)

HERE = Path(__file__).resolve().parents[1]
AGENT = {"name": "support-bot", "model": "gpt-4o-mini", "tools": ["orders.lookup"]}


async def admin_token(client: httpx.AsyncClient, db: Database) -> str:
    """A service administrator, made as an operator would (`pgstack users create-admin`)."""
    await Identity(db).users.create("root@example.com", PASSWORD, roles=["admin"], verified=True)
    answer = await client.post(
        "/auth/login", json={"email": "root@example.com", "password": PASSWORD}
    )
    return str(answer.json()["access_token"])


async def join(
    client: httpx.AsyncClient, owner: str, workspace: str, token: str, email: str, role: str
) -> None:
    """The owner invites `email` with `role`; its user accepts with the e-mailed token."""
    invited = await client.post(
        f"/tenants/{workspace}/invitations",
        json={"email": email, "role": role},
        headers=bearer(owner),
    )
    assert invited.status_code == 201, invited.text
    accepted = await client.post(
        "/tenants/invitations/accept",
        json={"token": invited.json()["token"]},
        headers=bearer(token),
    )
    assert accepted.status_code == 200, accepted.text


async def test_sign_up_verify_sign_in_and_make_a_workspace(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: X1, I1, I3 (sign-up with a verification link, sign-in), N1 (a workspace)
    email = "ada@example.com"
    weak = await client.post("/auth/register", json={"email": email, "password": "password1"})
    problem(weak, 422)
    assert (
        await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    ).status_code == 202
    login = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    unverified = str(login.json()["access_token"])
    refused = problem(
        await client.post(
            "/workspaces", json={"slug": "acme", "name": "Acme"}, headers=bearer(unverified)
        ),
        403,
    )
    assert "Verify your e-mail" in refused["detail"]

    token = await sign_up(client, outbox, "grace@example.com")
    wrong = await client.post(
        "/auth/login", json={"email": "grace@example.com", "password": "x" * 12}
    )
    problem(wrong, 401)
    me = (await client.get("/auth/me", headers=bearer(token))).json()
    assert (me["email"], me["provider"], me["email_verified_at"] is not None) == (
        "grace@example.com",
        "local",
        True,
    )
    workspace = await new_workspace(client, token, "acme")
    mine = (await client.get("/tenants", headers=bearer(token))).json()
    assert [(t["tenant"]["id"], t["role"]) for t in mine] == [(workspace, "owner")]
    taken = await client.post(
        "/workspaces", json={"slug": "acme", "name": "Again"}, headers=bearer(token)
    )
    problem(taken, 409)


async def test_a_user_of_the_external_provider_signs_in_with_its_groups(
    client: httpx.AsyncClient, idp: IdentityProvider, outbox: Outbox
) -> None:
    # proves: X1, I1 (a user of a registered external provider; groups from the provider)
    token = idp.id_token("00u-lin", "lin@corp.example", name="Lin", groups=["agent-builders"])
    first = await client.post("/auth/sso/okta", json={"id_token": token})
    assert first.status_code == 200, first.text
    session = first.json()["access_token"]
    me = (await client.get("/auth/me", headers=bearer(session))).json()
    assert (me["email"], me["provider"], me["groups"], me["name"]) == (
        "lin@corp.example",
        "okta",
        ["agent-builders"],
        "Lin",
    )
    # Dropped from the group at the provider: dropped here at the next sign-in; same user.
    again = await client.post(
        "/auth/sso/okta", json={"id_token": idp.id_token("00u-lin", "lin@corp.example")}
    )
    assert again.json()["groups"] == []
    me_again = (await client.get("/auth/me", headers=bearer(again.json()["access_token"]))).json()
    assert (me_again["id"], me_again["login_count"]) == (me["id"], 2)
    # No password to sign in with.
    problem(
        await client.post("/auth/login", json={"email": "lin@corp.example", "password": PASSWORD}),
        401,
    )

    # Concurrent first sign-ins of one person make one user.
    fresh = idp.id_token("00u-kai", "kai@corp.example")
    answers = await asyncio.gather(
        *(client.post("/auth/sso/okta", json={"id_token": fresh}) for _ in range(4))
    )
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    ids = {
        (await client.get("/auth/me", headers=bearer(a.json()["access_token"]))).json()["id"]
        for a in answers
    }
    assert len(ids) == 1

    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "forged": idp.id_token("00u-lin", "lin@corp.example", key=forged_key),
        "expired": idp.id_token(
            "00u-lin", "lin@corp.example", exp=1_600_000_000, iat=1_599_999_000
        ),
        "audience": idp.id_token("00u-lin", "lin@corp.example", aud="another-app"),
        "issuer": idp.id_token("00u-lin", "lin@corp.example", iss="https://evil.example"),
        "groups": idp.id_token("00u-lin", "lin@corp.example", groups="admin"),
        "no email": idp.id_token("00u-lin", None),  # type: ignore[arg-type]
        "garbage": "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
    }
    for what, id_token in bad.items():
        body = problem(await client.post("/auth/sso/okta", json={"id_token": id_token}), 401)
        assert id_token not in str(body), what
    assert (
        "expired"
        in problem(await client.post("/auth/sso/okta", json={"id_token": bad["expired"]}), 401)[
            "detail"
        ]
    )

    # Odd claims from the provider itself are refused as input, never a 5xx.
    odd = idp.id_token("00u-odd", "odd@corp.example", name=["not", "text"], groups=["a\x00b"])
    problem(await client.post("/auth/sso/okta", json={"id_token": odd}), 422)
    odd = idp.id_token("00u-odd", "odd@corp.example", name=["not", "text"])
    assert (await client.post("/auth/sso/okta", json={"id_token": odd})).status_code == 200

    # An address that already signs in with a password is not taken over by the provider.
    await sign_up(client, outbox, "mo@corp.example")
    takeover = idp.id_token("00u-mo", "mo@corp.example", groups=["agent-builders"])
    problem(await client.post("/auth/sso/okta", json={"id_token": takeover}), 409)


async def test_roles_and_groups_refuse_with_403(
    client: httpx.AsyncClient, outbox: Outbox, service_db: Database
) -> None:
    # proves: X1, I1 (roles and groups), I9 (admin routes), N5 (tenant roles), W2 (403)
    owner = await sign_up(client, outbox, "owner@example.com")
    member = await sign_up(client, outbox, "member@example.com")
    viewer = await sign_up(client, outbox, "viewer@example.com")
    workspace = await new_workspace(client, owner, "acme")
    await join(client, owner, workspace, member, "member@example.com", "member")
    await join(client, owner, workspace, viewer, "viewer@example.com", "viewer")
    here = {"X-Tenant-ID": workspace}

    # The owner is a workspace admin, but not in the group agent-builders yet.
    refused = problem(await client.post("/agents", json=AGENT, headers=bearer(owner, **here)), 403)
    assert "agent-builders" in refused["detail"]
    # Only a service administrator may put people in groups.
    me = (await client.get("/auth/me", headers=bearer(owner))).json()
    problem(
        await client.patch(
            f"/admin/users/{me['id']}", json={"groups": ["agent-builders"]}, headers=bearer(owner)
        ),
        403,
    )
    problem(await client.get("/admin/audit/entries", headers=bearer(owner)), 403)
    root = await admin_token(client, service_db)
    for email in ("owner@example.com", "member@example.com", "viewer@example.com"):
        user = await Identity(service_db).users.get_by_email(email)
        assert user is not None
        patched = await client.patch(
            f"/admin/users/{user.id}", json={"groups": ["agent-builders"]}, headers=bearer(root)
        )
        assert patched.status_code == 200, patched.text

    created = await client.post("/agents", json=AGENT, headers=bearer(owner, **here))
    assert created.status_code == 201, created.text
    # In the group, but not an admin of the workspace.
    refused = problem(
        await client.post("/agents", json={**AGENT, "name": "m"}, headers=bearer(member, **here)),
        403,
    )
    assert "tenant role admin" in refused["detail"]
    problem(
        await client.post("/agents", json={**AGENT, "name": "v"}, headers=bearer(viewer, **here)),
        403,
    )
    problem(await client.get("/audit", headers=bearer(member, **here)), 403)
    # Reading is for every member, viewers included; outsiders do not see the workspace.
    listed = await client.get("/agents", headers=bearer(viewer, **here))
    assert [a["name"] for a in listed.json()["items"]] == ["support-bot"]
    outsider = await sign_up(client, outbox, "eve@example.com")
    problem(await client.get("/agents", headers=bearer(outsider, **here)), 404)


async def test_an_api_key_is_held_to_its_scopes_and_its_tier(
    client: httpx.AsyncClient, outbox: Outbox, service_db: Database
) -> None:
    # proves: X1, I5 (scopes, rate-limit tier), I9, N4 (429 with Retry-After)
    owner = await sign_up(client, outbox, "owner@example.com")
    workspace = await new_workspace(client, owner, "acme")
    user = (await client.get("/auth/me", headers=bearer(owner))).json()
    keys = Identity(service_db).api_keys
    trial = await keys.create(
        uuid.UUID(user["id"]),
        "trial bot",
        scopes=["agents:read", "tenant:viewer"],
        rate_limit_tier="trial",
    )
    unscoped = await keys.create(uuid.UUID(user["id"]), "no scope", scopes=["tenant:viewer"])
    here = {"X-Tenant-ID": workspace}
    await away_from_boundary(3600)

    refused = problem(await client.get("/agents", headers=bearer(unscoped.key, **here)), 403)
    assert "agents:read" in refused["detail"]
    # A key cannot write with read scopes, whatever its user may do.
    problem(await client.post("/agents", json=AGENT, headers=bearer(trial.key, **here)), 403)

    # The trial tier allows 20 requests an hour (one was spent on the refused POST above).
    answers = await asyncio.gather(
        *(client.get("/agents", headers=bearer(trial.key, **here)) for _ in range(25))
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 19 + [429] * 6, codes
    limited = next(a for a in answers if a.status_code == 429)
    body = problem(limited, 429)
    assert body["violated-policies"] == ["tier-trial"]
    assert 0 < int(limited.headers["Retry-After"]) <= 3600
    assert trial.key not in limited.text
    # Other callers are counted on their own.
    assert (await client.get("/agents", headers=bearer(owner, **here))).status_code == 200


async def test_a_conversation_takes_concurrent_messages_and_reads_back_in_pages(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: X1, V1 (ordered append-only messages under concurrency, keyset pages, totals)
    owner = await sign_up(client, outbox, "owner@example.com")
    workspace = await new_workspace(client, owner, "acme")
    as_owner = bearer(owner, **{"X-Tenant-ID": workspace})
    started = await client.post(
        "/conversations", json={"agent_id": "support-bot", "title": "Refund"}, headers=as_owner
    )
    assert started.status_code == 201, started.text
    chat = started.json()["id"]

    sent = [f"message {n}" for n in range(40)]
    answers = await asyncio.gather(
        *(
            client.post(
                f"/conversations/{chat}/messages",
                json={"role": "user" if n % 2 else "assistant", "content": text, "tokens": n},
                headers=as_owner,
            )
            for n, text in enumerate(sent)
        )
    )
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    assert sorted(a.json()["seq"] for a in answers) == list(range(1, 41))

    pages, before = [], None
    while True:
        params = {"limit": 7, **({"before_seq": before} if before else {})}
        page = (
            await client.get(f"/conversations/{chat}/messages", params=params, headers=as_owner)
        ).json()
        pages.append([m["seq"] for m in page["messages"]])
        before = page["next_before"]
        if before is None:
            break
    assert [seq for page in reversed(pages) for seq in page] == list(range(1, 41))
    assert len(pages) == 6 and all(p == sorted(p) for p in pages)
    by_seq = {a.json()["seq"]: a.json()["content"] for a in answers}
    history = await client.get(
        f"/conversations/{chat}/messages", params={"limit": 200}, headers=as_owner
    )
    assert [m["content"] for m in history.json()["messages"]] == [by_seq[s] for s in range(1, 41)]
    totals = (await client.get(f"/conversations/{chat}", headers=as_owner)).json()
    assert (totals["message_count"], totals["token_count"]) == (40, sum(range(40)))

    # Another member of the workspace does not reach the owner's conversation.
    member = await sign_up(client, outbox, "member@example.com")
    await join(client, owner, workspace, member, "member@example.com", "member")
    problem(
        await client.get(
            f"/conversations/{chat}/messages", headers=bearer(member, **{"X-Tenant-ID": workspace})
        ),
        404,
    )


async def test_every_change_is_audited_with_the_request_id_and_the_actor(
    client: httpx.AsyncClient, outbox: Outbox, service_db: Database
) -> None:
    # proves: X1, A1 (actor, request id, IP, user agent), A3 (diffs in the same transaction)
    owner, workspace, user = await builder(client, outbox, service_db, "owner@example.com", "acme")
    here = {"X-Tenant-ID": workspace, "User-Agent": "agent-cli/1.0"}

    made = await client.post(
        "/agents", json=AGENT, headers=bearer(owner, **here, **{"X-Request-ID": "req-create-1"})
    )
    assert made.status_code == 201 and made.headers["X-Request-ID"] == "req-create-1"
    agent = made.json()
    patched = await client.patch(
        f"/agents/{agent['id']}",
        json={"version": 1, "model": "gpt-4o"},
        headers=bearer(owner, **here, **{"X-Request-ID": "req-patch-2"}),
    )
    assert patched.status_code == 200, patched.text
    stale = await client.patch(
        f"/agents/{agent['id']}",
        json={"version": 1, "model": "other"},
        headers=bearer(owner, **here, **{"X-Request-ID": "req-stale-3"}),
    )
    problem(stale, 409)
    deleted = await client.delete(
        f"/agents/{agent['id']}", headers=bearer(owner, **here, **{"X-Request-ID": "req-delete-4"})
    )
    assert deleted.status_code == 204

    trail = await client.get(
        "/audit",
        params={"resource_type": "agents", "resource_id": agent["id"]},
        headers=bearer(owner, **here),
    )
    assert trail.status_code == 200, trail.text
    entries = list(reversed(trail.json()["items"]))
    assert [(e["action"], e["request_id"]) for e in entries] == [
        ("agents.insert", "req-create-1"),
        ("agents.update", "req-patch-2"),
        ("agents.delete", "req-delete-4"),
    ]
    assert {(e["actor_id"], e["actor_type"], e["tenant_id"], e["user_agent"]) for e in entries} == {
        (str(user.id), "user", workspace, "agent-cli/1.0")
    }
    assert entries[0]["changes"]["name"] == {"new": "support-bot"}
    assert entries[1]["changes"] == {"model": {"old": "gpt-4o-mini", "new": "gpt-4o"}}
    assert entries[2]["changes"]["model"] == {"old": "gpt-4o"}

    # Sign-ins are security events of the service, with the request they came with.
    await client.post(
        "/auth/login",
        json={"email": "owner@example.com", "password": "wrong password 123"},
        headers={"X-Request-ID": "req-login-5"},
    )
    root = await admin_token(client, service_db)
    events = await client.get(
        "/admin/audit/entries",
        params={"action": "auth.login", "outcome": "failure"},
        headers=bearer(root),
    )
    [failed] = events.json()["items"]
    assert (failed["request_id"], failed["resource_id"]) == ("req-login-5", "owner@example.com")
    chain = await client.get(
        "/admin/audit/verify", params={"tenant_id": workspace}, headers=bearer(root)
    )
    assert chain.json()["ok"] is True and chain.json()["checked"] >= 3


async def test_the_health_route_shows_the_pool(
    client: httpx.AsyncClient, service_db: Database
) -> None:
    # proves: X1, C2 (pool statistics), C5
    idle = (await client.get("/health/pool")).json()
    assert idle["pool"]["size"] == service_db.settings.database_pool_size
    assert idle["pool"]["max_overflow"] == service_db.settings.database_max_overflow
    async with AsyncExitStack() as held:
        for _ in range(3):
            await held.enter_async_context(service_db.engine.connect())
        busy = (await client.get("/health/pool")).json()["pool"]
        # The background health monitor may hold one more connection at any moment.
        assert busy["checked_out"] >= 3
        assert busy["total"] == busy["checked_in"] + busy["checked_out"]
    after = (await client.get("/health/pool")).json()["pool"]
    assert after["checked_out"] <= busy["checked_out"] - 3
    assert after["checked_in"] >= 3
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["migrations"][0]["status"] == "pass"


@pytest.mark.parametrize(
    ("method", "path", "payload", "status"),
    [
        ("post", "/agents", {**AGENT, "name": "Support Bot"}, 422),
        ("post", "/agents", {**AGENT, "instructions": "a\x00b"}, 422),
        ("post", "/agents", {**AGENT, "tools": ["rm -rf"]}, 422),
        ("post", "/agents", {**AGENT, "owner": "me"}, 422),
        ("post", "/agents", AGENT, 409),
        ("get", "/agents?sort=id;DROP TABLE agents", None, 422),
        ("get", "/agents?tenant_id=0194f1b2-0000-7000-8000-000000000000", None, 422),
        ("get", "/agents?limit=100000", None, 422),
        ("get", "/agents/not-a-uuid", None, 422),
        ("get", "/agents/0194f1b2-0000-7000-8000-000000000000", None, 404),
        ("patch", "/agents/{id}", {"model": "no version"}, 422),
        ("get", "/audit?after=not-a-cursor", None, 422),
        ("post", "/workspaces", {"slug": "../etc", "name": "x"}, 422),
        ("post", "/auth/sso/okta", {"id_token": "a b"}, 422),
        ("post", "/auth/sso/okta", {"id_token": "x" * 20_000}, 422),
    ],
)
async def test_hostile_input_is_a_4xx_problem(
    client: httpx.AsyncClient,
    outbox: Outbox,
    service_db: Database,
    method: str,
    path: str,
    payload: object,
    status: int,
) -> None:
    # proves: X1, R2 (declared fields only, never SQL), I8 (no 5xx from any input), W2
    owner, workspace, _ = await builder(client, outbox, service_db, "owner@example.com", "acme")
    headers = bearer(owner, **{"X-Tenant-ID": workspace})
    existing = (await client.post("/agents", json=AGENT, headers=headers)).json()
    answer = await client.request(
        method, path.format(id=existing["id"]), json=payload, headers=headers
    )
    problem(answer, status)
    listed = (await client.get("/agents", headers=headers)).json()
    assert [a["name"] for a in listed["items"]] == ["support-bot"]


async def test_a_workspace_header_that_names_no_workspace_of_yours(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: X1, N2 (the tenant comes from a verified membership, never from a bare header)
    owner = await sign_up(client, outbox, "owner@example.com")
    await new_workspace(client, owner, "acme")
    other = await sign_up(client, outbox, "other@example.com")
    theirs = await new_workspace(client, other, "globex")
    for header, status in [("nonsense", 422), (str(uuid.uuid4()), 404), (theirs, 404)]:
        problem(
            await client.get("/agents", headers=bearer(owner, **{"X-Tenant-ID": header})), status
        )
    problem(await client.get("/agents", headers=bearer(owner)), 422)


@pytest.mark.parametrize("check", ["roundtrip", "drift"])
def test_migrations(check: str, pgstack_empty_url: URL, pgstack_migrated_url: URL) -> None:
    # proves: X1, G2, G4 (the app's revision on top of pgstack's: up, down, up; no drift)
    project = MigrationProject.from_pyproject(HERE)
    if check == "roundtrip":
        assert_migrations_roundtrip(pgstack_empty_url, project=project)
    else:
        assert_no_drift(pgstack_migrated_url, project=project)


async def test_sign_in_attempts_through_the_provider_are_limited_per_address(
    client: httpx.AsyncClient, idp: IdentityProvider
) -> None:
    # proves: X1, N4 (per-address limit in PostgreSQL), W2 (429 with Retry-After)
    await away_from_boundary(60)
    fetches = idp.fetches
    garbage = {"id_token": "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vcGUifQ.e30.c2ln"}
    codes = [(await client.post("/auth/sso/okta", json=garbage)).status_code for _ in range(31)]
    assert codes == [401] * 30 + [429]
    limited = await client.post("/auth/sso/okta", json={"id_token": idp.id_token("u", "u@x.io")})
    body = problem(limited, 429)
    assert body["violated-policies"] == ["sso"] and int(limited.headers["Retry-After"]) <= 60
    assert idp.fetches - fetches <= 30  # refused attempts never reach the provider
