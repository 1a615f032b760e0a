"""Through HTTP, as the application role: the request id, actor and IP reach the audit log;
sign-ins, lockouts and key revocations are security events; the admin router reads them."""

from __future__ import annotations

import httpx

from pgstack.audit import AuditLog
from pgstack.db.database import Database
from pgstack.identity import Identity
from pgstack.web.audit import client_ip, parse_proxies

from .conftest import CONFIG, STRONG
from .conftest import security_entries as _security


async def test_login_lockout_and_key_revocation_carry_the_clients_request_id(
    app_db: Database, client: httpx.AsyncClient
) -> None:
    # proves: A1, A3, C7
    identity = Identity(app_db, CONFIG)
    ada = await identity.users.create("ada@example.com", STRONG, verified=True)

    signed_in = await client.post(
        "/auth/login",
        json={"email": "ada@example.com", "password": STRONG},
        headers={"X-Request-ID": "req-login-1", "User-Agent": "pytest-browser"},
    )
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.headers["X-Request-ID"] == "req-login-1"
    token = signed_in.json()["access_token"]
    [login] = [e for e in await _security(app_db, "auth.login") if e["outcome"] == "success"]
    assert login["request_id"] == "req-login-1"
    assert login["actor_id"] == str(ada.id) and login["user_agent"] == "pytest-browser"
    assert login["ip"] == "127.0.0.1"

    made = await client.post(
        "/auth/api-keys",
        json={"name": "ci", "password": STRONG},
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-key-1"},
    )
    assert made.status_code == 201, made.text
    key_id = made.json()["id"]
    revoked = await client.delete(
        f"/auth/api-keys/{key_id}",
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-revoke-1"},
    )
    assert revoked.status_code == 204, revoked.text
    [revocation] = await _security(app_db, "api_key.revoked")
    assert revocation["request_id"] == "req-revoke-1"
    assert revocation["resource_id"] == key_id and revocation["actor_id"] == str(ada.id)
    assert revocation["actor_type"] == "user"

    for attempt in range(CONFIG.max_failed_logins):
        wrong = await client.post(
            "/auth/login",
            json={"email": "ada@example.com", "password": "not the password at all"},
            headers={"X-Request-ID": f"req-guess-{attempt}"},
        )
        assert wrong.status_code == 401
    [lockout] = await _security(app_db, "auth.lockout")
    assert lockout["request_id"] == f"req-guess-{CONFIG.max_failed_logins - 1}"
    assert lockout["resource_id"] == str(ada.id) and lockout["outcome"] == "failure"
    failures = [e for e in await _security(app_db, "auth.login") if e["outcome"] == "failure"]
    assert len(failures) == CONFIG.max_failed_logins
    for entry in failures:  # the password tried is never kept
        assert "not the password" not in str(entry)
    assert (await AuditLog(app_db).verify()).ok


async def test_a_hostile_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    # proves: C7
    for hostile in ["x" * 129, "a b", "id;DROP TABLE audit_log", "\u00e9t\u00e9"]:
        answer = await client.get("/health", headers={"X-Request-ID": hostile.encode()})
        assert answer.status_code == 200
        assert answer.headers["X-Request-ID"] != hostile
        assert len(answer.headers["X-Request-ID"]) == 32


async def test_admin_router_pages_filters_and_refuses_others(
    app_db: Database, client: httpx.AsyncClient
) -> None:
    # proves: A4
    identity = Identity(app_db, CONFIG)
    boss = await identity.users.create("boss@example.com", STRONG, verified=True, roles=["admin"])
    await identity.users.create("eve@example.com", STRONG, verified=True)
    audit = AuditLog(app_db)
    for n in range(5):
        await audit.record("report.exported", resource_type="report", resource_id=str(n))
    boss_token = (
        await client.post("/auth/login", json={"email": "boss@example.com", "password": STRONG})
    ).json()["access_token"]
    eve_token = (
        await client.post("/auth/login", json={"email": "eve@example.com", "password": STRONG})
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {boss_token}"}

    seen: list[str] = []
    after = None
    while True:
        params = {"resource_type": "report", "limit": "2", **({"after": after} if after else {})}
        page = await client.get("/admin/audit/entries", params=params, headers=headers)
        assert page.status_code == 200, page.text
        seen += [item["resource_id"] for item in page.json()["items"]]
        after = page.json()["next"]
        if after is None:
            break
    assert seen == ["4", "3", "2", "1", "0"]

    events = await client.get(
        "/admin/audit/entries", params={"category": "security"}, headers=headers
    )
    assert {e["actor_id"] for e in events.json()["items"]} >= {str(boss.id)}
    verify = await client.get("/admin/audit/verify", headers=headers)
    assert verify.json()["ok"] is True and verify.json()["checked"] > 5

    assert (await client.get("/admin/audit/entries")).status_code == 401
    eve = {"Authorization": f"Bearer {eve_token}"}
    assert (await client.get("/admin/audit/entries", headers=eve)).status_code == 403
    for bad in [
        {"after": "not-a-cursor"},
        {"limit": "0"},
        {"outcome": "maybe"},
        {"tenant_id": "x"},
        {"actor_id": "a\x00b"},
    ]:
        answer = await client.get("/admin/audit/entries", params=bad, headers=headers)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    # proves: C7
    proxies = parse_proxies("10.0.0.0/8, 127.0.0.1")
    assert client_ip("203.0.113.9", "1.2.3.4", proxies) == "203.0.113.9"
    assert client_ip("10.0.0.2", "198.51.100.7", proxies) == "198.51.100.7"
    # A client that forges the header is the first untrusted hop from the right.
    assert client_ip("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.3", proxies) == "198.51.100.7"
    assert client_ip("10.0.0.2", "garbage", proxies) == "10.0.0.2"
