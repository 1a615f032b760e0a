"""Identity over HTTP as an attacker meets it: races, stolen sessions, narrow keys, odd input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pyotp
import pytest
from sqlalchemy import event, text

from pgstack.identity import Identity, User

from .conftest import OTHER_STRONG, STRONG, Outbox, bearer, login, problem, verified_session
from .test_identity_lockout import count_real_checks

WRONG = "not the password at all"


def _identity(client: httpx.AsyncClient) -> Identity:
    identity: Identity = client.app.state.pgstack_identity  # type: ignore[attr-defined]
    return identity


async def _sql(client: httpx.AsyncClient, statement: str, **params: object) -> None:
    async with _identity(client).db.transaction() as session:
        await session.execute(text(statement), params)


async def _stale_sessions(client: httpx.AsyncClient) -> None:
    """Every session signed in ten minutes ago: past the window for sensitive changes."""
    await _sql(client, "UPDATE login_sessions SET created_at = now() - interval '10 minutes'")


async def _admin(client: httpx.AsyncClient, email: str = "root@example.com") -> tuple[User, str]:
    await client.get("/auth/me")  # the app builds its identity services on a first request
    user = await _identity(client).users.create(email, STRONG, roles=["admin"], verified=True)
    return user, await login(client, email, STRONG)


async def test_concurrent_logins_check_at_most_the_limit(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I7, W2
    await client.post("/auth/register", json={"email": "burst@example.com", "password": STRONG})
    identity = _identity(client)
    victim = await identity.users.get_by_email("burst@example.com")
    assert victim is not None
    checked = count_real_checks(identity, victim)
    body = {"email": "burst@example.com", "password": WRONG}
    answers = await asyncio.gather(*(client.post("/auth/login", json=body) for _ in range(30)))
    assert {a.status_code for a in answers} == {401}
    assert 0 < len(checked) <= identity.config.max_failed_logins
    right = await client.post("/auth/login", json={**body, "password": STRONG})
    problem(right, 401)
    assert STRONG not in checked


async def test_concurrent_wrong_codes_over_http_check_at_most_the_limit(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I7, I4, W2
    token = await verified_session(client, outbox, "codes@example.com")
    secret = (await client.post("/auth/2fa/enrol", headers=bearer(token))).json()["secret"]
    totp = pyotp.TOTP(secret)
    confirmed = await client.post(
        "/auth/2fa/confirm", json={"code": totp.now()}, headers=bearer(token)
    )
    assert confirmed.status_code == 200, confirmed.text
    identity = _identity(client)
    user = await identity.users.get_by_email("codes@example.com")
    assert user is not None
    checked = count_real_checks(identity, user)
    body = {"email": "codes@example.com", "password": STRONG, "otp": "000000"}
    answers = await asyncio.gather(*(client.post("/auth/login", json=body) for _ in range(30)))
    assert {a.status_code for a in answers} == {401}
    # Each admitted attempt checks the password and then its code; the rest check neither.
    assert 0 < len(checked) <= identity.config.max_failed_logins
    assert (await identity.users.get(user.id)).locked_until is not None


async def test_a_narrow_admin_key_cannot_reach_admin_routes(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I9, W2
    _, session = await _admin(client)
    await client.post("/auth/register", json={"email": "pat@example.com", "password": STRONG})
    pat = await _identity(client).users.get_by_email("pat@example.com")
    assert pat is not None

    async def key(*scopes: str) -> dict[str, str]:
        made = await client.post(
            "/auth/api-keys", json={"name": "k", "scopes": list(scopes)}, headers=bearer(session)
        )
        assert made.status_code == 201, made.text
        return bearer(made.json()["key"])

    promote = {"roles": ["admin"]}
    for narrow in (await key("reports:read"), await key("*")):
        denied = problem(
            await client.patch(f"/admin/users/{pat.id}", json=promote, headers=narrow), 403
        )
        assert "scope" in str(denied["detail"])
        problem(await client.get("/admin/users", headers=narrow), 403)
    assert (await _identity(client).users.get(pat.id)).roles == []
    admin_key = await key("admin")
    promoted = await client.patch(f"/admin/users/{pat.id}", json=promote, headers=admin_key)
    assert promoted.status_code == 200 and promoted.json()["roles"] == ["admin"]


async def test_a_password_reset_ends_every_session_and_key(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I7, I3, W2
    token = await verified_session(client, outbox, "owner@example.com")
    made = await client.post("/auth/api-keys", json={"name": "thief"}, headers=bearer(token))
    key = made.json()["key"]
    assert (await client.get("/auth/me", headers=bearer(key))).status_code == 200
    await client.post("/auth/forgot", json={"email": "owner@example.com"})
    reset = {"token": outbox.last("password_reset"), "new_password": OTHER_STRONG}
    assert (await client.post("/auth/reset", json=reset)).status_code == 204
    problem(await client.get("/auth/me", headers=bearer(key)), 401)
    problem(await client.get("/auth/me", headers=bearer(token)), 401)


async def test_a_password_change_keeps_keys_only_when_asked(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I7, I3, W2
    token = await verified_session(client, outbox, "chg@example.com")
    key = (await client.post("/auth/api-keys", json={"name": "ci"}, headers=bearer(token))).json()[
        "key"
    ]
    change = {"current_password": STRONG, "new_password": OTHER_STRONG, "keep_api_keys": True}
    assert (
        await client.post("/auth/me/password", json=change, headers=bearer(token))
    ).status_code == 204
    assert (await client.get("/auth/me", headers=bearer(key))).status_code == 200
    token = await login(client, "chg@example.com", OTHER_STRONG)
    back = {"current_password": OTHER_STRONG, "new_password": STRONG}
    assert (
        await client.post("/auth/me/password", json=back, headers=bearer(token))
    ).status_code == 204
    problem(await client.get("/auth/me", headers=bearer(key)), 401)


async def test_minting_a_key_needs_a_verified_address_and_a_fresh_proof(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I7, W2
    await client.post("/auth/register", json={"email": "new@example.com", "password": STRONG})
    unverified = await login(client, "new@example.com", STRONG)
    denied = problem(
        await client.post("/auth/api-keys", json={"name": "x"}, headers=bearer(unverified)), 403
    )
    assert "Verify" in str(denied["detail"])

    token = await verified_session(client, outbox, "old@example.com")
    made = await client.post("/auth/api-keys", json={"name": "ci"}, headers=bearer(token))
    assert made.status_code == 201  # a sign-in of a moment ago is proof enough
    await _stale_sessions(client)  # a session stolen later is not
    problem(await client.post("/auth/api-keys", json={"name": "x"}, headers=bearer(token)), 403)
    rotate = f"/auth/api-keys/{made.json()['id']}/rotate"
    problem(await client.post(rotate, json={}, headers=bearer(token)), 403)
    wrong = {"name": "x", "password": WRONG}
    problem(await client.post("/auth/api-keys", json=wrong, headers=bearer(token)), 401)
    right = {"name": "x", "password": STRONG}
    assert (
        await client.post("/auth/api-keys", json=right, headers=bearer(token))
    ).status_code == 201
    rotated = await client.post(rotate, json={"password": STRONG}, headers=bearer(token))
    assert rotated.status_code == 201


async def test_two_factor_needs_a_fresh_proof_and_survives_a_reset(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I7, I4, W2
    token = await verified_session(client, outbox, "tf2@example.com")
    await _stale_sessions(client)
    problem(await client.post("/auth/2fa/enrol", headers=bearer(token)), 403)
    enrol = await client.post("/auth/2fa/enrol", json={"password": STRONG}, headers=bearer(token))
    assert enrol.status_code == 200, enrol.text
    totp = pyotp.TOTP(enrol.json()["secret"])
    problem(
        await client.post("/auth/2fa/confirm", json={"code": totp.now()}, headers=bearer(token)),
        403,
    )
    confirm = {"code": totp.now(), "password": STRONG}
    codes = (await client.post("/auth/2fa/confirm", json=confirm, headers=bearer(token))).json()[
        "recovery_codes"
    ]
    problem(
        await client.post("/auth/2fa/disable", json={"code": codes[0]}, headers=bearer(token)), 403
    )

    # A reset by e-mail proves the mailbox, not the device: two-factor stays on.
    await client.post("/auth/forgot", json={"email": "tf2@example.com"})
    reset = {"token": outbox.last("password_reset"), "new_password": OTHER_STRONG}
    assert (await client.post("/auth/reset", json=reset)).status_code == 204
    login = {"email": "tf2@example.com", "password": OTHER_STRONG}
    needs = problem(await client.post("/auth/login", json=login), 401)
    assert "two-factor" in str(needs["detail"])
    assert (await client.post("/auth/login", json={**login, "otp": codes[1]})).status_code == 200

    # An administrator can turn it off for a user who lost the device and the codes.
    _, admin = await _admin(client)
    user = await _identity(client).users.get_by_email("tf2@example.com")
    assert user is not None
    off = await client.delete(f"/admin/users/{user.id}/2fa", headers=bearer(admin))
    assert off.status_code == 204
    assert (await client.post("/auth/login", json=login)).status_code == 200


async def test_register_answers_the_same_for_an_existing_address(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I7, W2
    body = {"email": "taken@example.com", "password": STRONG}
    first = await client.post("/auth/register", json=body)
    again = await client.post(
        "/auth/register", json={"email": "TAKEN@example.com", "password": OTHER_STRONG}
    )
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    # The owner hears of it; the caller learns nothing.
    assert [(e, p) for e, p, _ in outbox.sent] == [
        ("taken@example.com", "email_verification"),
        ("taken@example.com", "account_exists"),
    ]
    await login(client, "taken@example.com", STRONG)


async def test_forgot_answers_before_it_looks_the_address_up(
    client: httpx.AsyncClient, outbox: Outbox
) -> None:
    # proves: I7, I3, W2
    await client.post("/auth/register", json={"email": "known@example.com", "password": STRONG})
    app: Any = client.app  # type: ignore[attr-defined]
    events: list[str] = []

    async def spying_app(scope: Any, receive: Any, send: Any) -> None:
        async def spy(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                events.append("answered")
            await send(message)

        await app(scope, receive, spy)

    def on_sql(*_: Any) -> None:
        events.append("sql")

    engine = app.state.pgstack_db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_sql)
    try:
        transport = httpx.ASGITransport(app=spying_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as spied:
            for email in ("known@example.com", "nobody@example.com"):
                events.clear()
                answer = await spied.post("/auth/forgot", json={"email": email})
                assert answer.status_code == 202
                assert events[0] == "answered", events
                assert "sql" in events  # the lookup ran, after the answer
    finally:
        event.remove(engine, "before_cursor_execute", on_sql)
    assert [e for e, p, _ in outbox.sent if p == "password_reset"] == ["known@example.com"]


@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "\x7f", "\ud800"])
async def test_control_characters_are_refused_at_validation(
    client: httpx.AsyncClient, outbox: Outbox, bad: str
) -> None:
    # proves: I8, W2
    token = await verified_session(client, outbox, "ctl@example.com")
    _, admin = await _admin(client)
    me = await _identity(client).users.get_by_email("ctl@example.com")
    assert me is not None
    email = f"a{bad}b@example.com"
    key = bearer(token)

    def send(method: str, url: str, body: object, headers: dict[str, str] | None = None) -> Any:
        # json.dumps escapes a lone surrogate (`\\ud800`), as a hostile client would send it.
        headers = {"content-type": "application/json", **(headers or {})}
        return client.request(method, url, content=json.dumps(body), headers=headers)

    calls = [
        send("POST", "/auth/register", {"email": email, "password": STRONG}),
        send("POST", "/auth/register", {"email": "n@example.com", "password": STRONG, "name": bad}),
        send("POST", "/auth/register", {"email": "p@example.com", "password": STRONG + bad}),
        send("POST", "/auth/login", {"email": email, "password": STRONG}),
        send("POST", "/auth/forgot", {"email": email}),
        send("POST", "/auth/api-keys", {"name": f"k{bad}"}, key),
        send("POST", "/auth/api-keys", {"name": "k", "scopes": [f"a{bad}"]}, key),
        send("PATCH", f"/admin/users/{me.id}", {"name": bad}, bearer(admin)),
        send("PATCH", f"/admin/users/{me.id}", {"roles": [bad]}, bearer(admin)),
    ]
    if bad.isascii():  # a URL cannot carry a lone surrogate at all
        calls.append(client.get("/admin/users", params={"email": bad}, headers=bearer(admin)))
    for answer in [await c for c in calls]:
        body = problem(answer, 422)
        assert bad not in answer.text and STRONG not in answer.text, body


async def test_null_lists_and_the_last_admin_are_refused_clearly(
    client: httpx.AsyncClient,
) -> None:
    # proves: I9, W2
    root, session = await _admin(client)
    admin = bearer(session)
    for field in ("roles", "groups", "is_active"):
        problem(
            await client.patch(f"/admin/users/{root.id}", json={field: None}, headers=admin), 422
        )
    for change in ({"roles": []}, {"is_active": False}):
        refused = problem(
            await client.patch(f"/admin/users/{root.id}", json=change, headers=admin), 409
        )
        assert "admin" in str(refused["detail"])
    problem(await client.delete(f"/admin/users/{root.id}", headers=admin), 409)
    assert (await _identity(client).users.get(root.id)).roles == ["admin"]

    # Two admins demoting each other at once: one of them stays.
    other, other_session = await _admin(client, "second@example.com")
    answers = await asyncio.gather(
        client.patch(f"/admin/users/{other.id}", json={"roles": []}, headers=admin),
        client.patch(f"/admin/users/{root.id}", json={"roles": []}, headers=bearer(other_session)),
    )
    # The loser is refused as no longer an admin (403) or as the last one (409).
    assert sorted(a.status_code for a in answers) in ([200, 403], [200, 409])
    admins = await _identity(client).users.search(role="admin", status="active")
    assert admins.total == 1


async def test_long_passwords_are_scored_and_limited_not_a_500(client: httpx.AsyncClient) -> None:
    # proves: I8, I2, W2
    long = (STRONG + " ") * 3  # 99 characters: zxcvbn alone refuses more than 72
    made = await client.post("/auth/register", json={"email": "long@example.com", "password": long})
    assert made.status_code == 202, made.text
    await login(client, "long@example.com", long)
    huge = {"email": "huge@example.com", "password": "x" * 1025}
    problem(await client.post("/auth/register", json=huge), 422)
    problem(await client.post("/auth/login", json=huge), 422)
