"""The identity router and dependencies: flows over HTTP, and errors as problem details."""

from __future__ import annotations

import httpx
import pyotp
import pytest

from pgstack.config import Settings
from pgstack.identity import Identity
from pgstack.web import create_app
from pgstack.web.modules import builtin_routers

from .conftest import OTHER_STRONG, STRONG, Outbox, bearer, login, problem, verified_session


async def test_register_verify_login_me_logout(client: httpx.AsyncClient, outbox: Outbox) -> None:
    # proves: W2, I1, I3
    created = await client.post(
        "/auth/register", json={"email": "Zoe@Example.com", "password": STRONG, "name": "Zoe"}
    )
    assert created.status_code == 202, created.text
    assert "password" not in created.text and "hash" not in created.text
    token = await login(client, "zoe@example.com", STRONG)
    me = await client.get("/auth/me", headers=bearer(token))
    assert me.status_code == 200 and me.json()["email_verified_at"] is None
    assert me.json()["email"] == "zoe@example.com"
    verified = await client.post("/auth/verify", json={"token": outbox.last("email_verification")})
    assert verified.status_code == 200 and verified.json()["email_verified_at"]
    assert (await client.post("/auth/logout", headers=bearer(token))).status_code == 204
    problem(await client.get("/auth/me", headers=bearer(token)), 401)


async def test_forgot_and_reset_never_reveal_accounts(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: W2, I3
    await client.post("/auth/register", json={"email": "yan@example.com", "password": STRONG})
    known = await client.post("/auth/forgot", json={"email": "yan@example.com"})
    unknown = await client.post("/auth/forgot", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    reset = outbox.last("password_reset")
    ok = await client.post("/auth/reset", json={"token": reset, "new_password": OTHER_STRONG})
    assert ok.status_code == 204
    problem(await client.post("/auth/reset", json={"token": reset, "new_password": STRONG}), 401)
    await login(client, "yan@example.com", OTHER_STRONG)


async def test_two_factor_over_http(client: httpx.AsyncClient) -> None:
    # proves: W2, I4
    await client.post("/auth/register", json={"email": "tf@example.com", "password": STRONG})
    token = await login(client, "tf@example.com", STRONG)
    enrol = await client.post("/auth/2fa/enrol", headers=bearer(token))
    secret = enrol.json()["secret"]
    confirmed = await client.post(
        "/auth/2fa/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=bearer(token)
    )
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == 10
    needs = problem(
        await client.post("/auth/login", json={"email": "tf@example.com", "password": STRONG}),
        401,
    )
    assert "two-factor" in str(needs["detail"])
    ok = await client.post(
        "/auth/login", json={"email": "tf@example.com", "password": STRONG, "otp": codes[0]}
    )
    assert ok.status_code == 200


async def test_api_keys_with_scopes_over_http(client: httpx.AsyncClient, outbox: Outbox) -> None:
    # proves: W2, I5
    token = await verified_session(client, outbox, "k@example.com")
    created = await client.post(
        "/auth/api-keys", json={"name": "ci", "scopes": ["reports:read"]}, headers=bearer(token)
    )
    assert created.status_code == 201
    key = created.json()["key"]
    assert (await client.get("/reports", headers=bearer(key))).json() == {"email": "k@example.com"}
    listed = await client.get("/auth/api-keys", headers=bearer(key))
    assert [k["prefix"] for k in listed.json()] == [created.json()["prefix"]]
    assert "key" not in listed.json()[0] and key not in listed.text

    narrow = await client.post(
        "/auth/api-keys", json={"name": "narrow", "scopes": ["other"]}, headers=bearer(token)
    )
    denied = problem(await client.get("/reports", headers=bearer(narrow.json()["key"])), 403)
    assert "reports:read" in str(denied["detail"])
    # An API key cannot mint more keys.
    problem(await client.post("/auth/api-keys", json={"name": "x"}, headers=bearer(key)), 403)

    rotated = await client.post(
        f"/auth/api-keys/{created.json()['id']}/rotate",
        json={"grace_seconds": 0},
        headers=bearer(token),
    )
    assert rotated.status_code == 201
    problem(await client.get("/reports", headers=bearer(key)), 401)
    new_key = rotated.json()["key"]
    assert (await client.get("/reports", headers=bearer(new_key))).status_code == 200
    revoke = await client.delete(f"/auth/api-keys/{rotated.json()['id']}", headers=bearer(token))
    assert revoke.status_code == 204
    problem(await client.get("/reports", headers=bearer(new_key)), 401)


async def test_admin_routes_need_the_admin_role(
    client: httpx.AsyncClient, pgstack_migrated_settings: Settings
) -> None:
    # proves: W2, I1, I6
    await client.post("/auth/register", json={"email": "pat@example.com", "password": STRONG})
    user_token = await login(client, "pat@example.com", STRONG)
    problem(await client.get("/admin/users", headers=bearer(user_token)), 403)

    identity: Identity = client.app.state.pgstack_identity  # type: ignore[attr-defined]
    await identity.users.create("root@example.com", STRONG, roles=["admin"])
    admin = bearer(await login(client, "root@example.com", STRONG))
    page = await client.get(
        "/admin/users", params={"email": "pat", "status": "active"}, headers=admin
    )
    assert page.status_code == 200 and page.json()["total"] == 1
    pat_id = page.json()["items"][0]["id"]
    patched = await client.patch(
        f"/admin/users/{pat_id}", json={"roles": ["editor"], "is_active": False}, headers=admin
    )
    assert patched.json()["roles"] == ["editor"] and patched.json()["is_active"] is False
    problem(await client.get("/auth/me", headers=bearer(user_token)), 401)
    stats = await client.get("/admin/users/statistics", headers=admin)
    assert stats.json()["total"] == 2 and stats.json()["by_status"]["inactive"] == 1
    assert (await client.delete(f"/admin/users/{pat_id}", headers=admin)).status_code == 204
    problem(await client.get(f"/admin/users/{pat_id}", headers=admin), 404)


async def test_errors_are_problem_details_never_500(client: httpx.AsyncClient) -> None:
    # proves: W2, I3, I5
    register = {"email": "dup@example.com", "password": STRONG}
    assert (await client.post("/auth/register", json=register)).status_code == 202
    token = await login(client, "dup@example.com", STRONG)
    identity: Identity = client.app.state.pgstack_identity  # type: ignore[attr-defined]
    boss = await identity.users.create("boss@example.com", STRONG, roles=["admin"])
    admin = bearer(await login(client, "boss@example.com", STRONG))

    cases: list[tuple[httpx.Response, int]] = [
        # 401: no, wrong or malformed credentials
        (await client.get("/auth/me"), 401),
        (await client.get("/auth/me", headers=bearer("pgss_not-a-session")), 401),
        (await client.get("/auth/me", headers=bearer("pgs_mistyped_key")), 401),
        (await client.post("/auth/login", json={**register, "password": "wrong one"}), 401),
        (await client.post("/auth/verify", json={"token": "made-up"}), 401),
        # 403: a known caller without the role
        (await client.get("/admin/users", headers=bearer(token)), 403),
        # 404: unknown ids
        (await client.get(f"/admin/users/{'0' * 8}-0000-7000-8000-{'0' * 12}", headers=admin), 404),
        (
            await client.delete(
                f"/auth/api-keys/{'0' * 8}-0000-7000-8000-{'0' * 12}", headers=bearer(token)
            ),
            404,
        ),
        # 409: removing the last administrator
        (await client.delete(f"/admin/users/{boss.id}", headers=admin), 409),
        # 422: malformed or refused input
        (
            await client.post("/auth/register", json={"email": "not-an-email", "password": STRONG}),
            422,
        ),
        (
            await client.post(
                "/auth/register", json={"email": "w@example.com", "password": "weak"}
            ),
            422,
        ),
        (await client.post("/auth/login", json={"email": "dup@example.com"}), 422),
        (await client.post("/auth/login", content=b"{not json"), 422),
        # Not a user id: a 422 naming user_id (and PATCH or DELETE on /statistics is a 405).
        (await client.get("/admin/users/not-a-uuid", headers=admin), 422),
        (await client.delete("/admin/users/statistics", headers=admin), 405),
        (await client.get("/admin/users", params={"status": "asleep"}, headers=admin), 422),
        (await client.get("/admin/users", params={"sort": "password_hash"}, headers=admin), 422),
    ]
    for response, status in cases:
        body = problem(response, status)
        assert STRONG not in response.text
        assert body["detail"]


async def test_registration_can_be_closed(
    pgstack_migrated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: W2
    monkeypatch.setenv("PGSTACK_REGISTRATION", "false")
    settings = Settings()
    assert settings.registration is False
    app = create_app(
        pgstack_migrated_settings,
        monitor_interval=None,
        routers=builtin_routers(registration=settings.registration),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"email": "walk-in@example.com", "password": STRONG}
            assert (await client.post("/auth/register", json=body)).status_code == 404
            assert "/auth/register" not in (await client.get("/openapi.json")).json()["paths"]
            # Signing in still works: only open sign-up is gone.
            assert (await client.post("/auth/login", json=body)).status_code == 401
