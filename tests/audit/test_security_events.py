"""Every security event the identity service and the token vault promise, driven through the
real path (HTTP where a route exists), each with its category, action, actor, outcome and,
over HTTP, the request id the client sent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pyotp
import pytest

from pgstack.audit import SECURITY, AuditLog
from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.database import Database
from pgstack.db.lane import ReadLane
from pgstack.errors import AuthenticationError, TokenRefreshError
from pgstack.identity import Identity
from pgstack.orm.context import acting_as, all_tenants, request_context, tenant_context
from pgstack.tokens import TokenVault

from .conftest import ACME, CONFIG, GLOBEX, STRONG, Roles, security_entries

NEW_PASSWORD = "amber Lighthouse 17 ferries hum"


async def _sign_in(client: httpx.AsyncClient, email: str, password: str = STRONG) -> str:
    answer = await client.post("/auth/login", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


@pytest.fixture
def ring() -> Iterator[str]:
    """A process-wide key ring for the vault, reset afterwards; its text."""
    text = generate_key("audit1")
    configure_encryption(KeyRing.parse(text))
    yield text
    configure_encryption(None)


def _one(entries: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["category"] == SECURITY
    return entry


async def test_two_factor_on_and_off_over_http(
    app_db: Database, client: httpx.AsyncClient, ring: str
) -> None:
    # proves: A3
    ada = await Identity(app_db, CONFIG).users.create("ada@example.com", STRONG, verified=True)
    auth = {"Authorization": f"Bearer {await _sign_in(client, 'ada@example.com')}"}
    enrolled = await client.post("/auth/2fa/enrol", json={"password": STRONG}, headers=auth)
    assert enrolled.status_code == 200, enrolled.text
    code = pyotp.TOTP(enrolled.json()["secret"]).now()
    confirmed = await client.post(
        "/auth/2fa/confirm",
        json={"code": code, "password": STRONG},
        headers={**auth, "X-Request-ID": "req-2fa-on"},
    )
    assert confirmed.status_code == 200, confirmed.text
    on = _one(await security_entries(app_db, "auth.2fa_enabled"))
    assert (on["actor_id"], on["resource_id"]) == (str(ada.id), str(ada.id))
    assert (on["outcome"], on["request_id"], on["actor_type"]) == ("success", "req-2fa-on", "user")
    assert code not in str(on)

    disabled = await client.post(
        "/auth/2fa/disable",
        json={"password": STRONG},
        headers={**auth, "X-Request-ID": "req-2fa-off"},
    )
    assert disabled.status_code == 204, disabled.text
    off = _one(await security_entries(app_db, "auth.2fa_disabled"))
    assert (off["actor_id"], off["outcome"], off["request_id"]) == (
        str(ada.id),
        "success",
        "req-2fa-off",
    )
    assert STRONG not in str(off)


async def test_a_refused_two_factor_disable_writes_no_disabled_event(
    app_db: Database, client: httpx.AsyncClient, ring: str
) -> None:
    # proves: A3
    await Identity(app_db, CONFIG).users.create("bo@example.com", STRONG, verified=True)
    auth = {"Authorization": f"Bearer {await _sign_in(client, 'bo@example.com')}"}
    enrolled = await client.post("/auth/2fa/enrol", json={"password": STRONG}, headers=auth)
    code = pyotp.TOTP(enrolled.json()["secret"]).now()
    await client.post("/auth/2fa/confirm", json={"code": code, "password": STRONG}, headers=auth)
    refused = await client.post(
        "/auth/2fa/disable", json={"password": "a wrong password, long enough"}, headers=auth
    )
    assert refused.status_code == 401, refused.text
    assert await security_entries(app_db, "auth.2fa_disabled") == []


async def test_password_change_over_http(app_db: Database, client: httpx.AsyncClient) -> None:
    # proves: A3
    ada = await Identity(app_db, CONFIG).users.create("ada@example.com", STRONG, verified=True)
    auth = {"Authorization": f"Bearer {await _sign_in(client, 'ada@example.com')}"}
    changed = await client.post(
        "/auth/me/password",
        json={"current_password": STRONG, "new_password": NEW_PASSWORD},
        headers={**auth, "X-Request-ID": "req-password"},
    )
    assert changed.status_code == 204, changed.text
    entry = _one(await security_entries(app_db, "auth.password_changed"))
    assert (entry["actor_id"], entry["resource_id"]) == (str(ada.id), str(ada.id))
    assert (entry["outcome"], entry["request_id"]) == ("success", "req-password")
    assert STRONG not in str(entry) and NEW_PASSWORD not in str(entry)
    # A wrong current password changes nothing and records no change.
    auth = {"Authorization": f"Bearer {await _sign_in(client, 'ada@example.com', NEW_PASSWORD)}"}
    refused = await client.post(
        "/auth/me/password",
        json={"current_password": STRONG, "new_password": "some Other 99 passphrase here"},
        headers=auth,
    )
    assert refused.status_code == 401
    assert len(await security_entries(app_db, "auth.password_changed")) == 1


async def test_role_change_by_an_administrator_over_http(
    app_db: Database, client: httpx.AsyncClient
) -> None:
    # proves: A3
    users = Identity(app_db, CONFIG).users
    admin = await users.create("root@example.com", STRONG, verified=True, roles=["admin"])
    ada = await users.create("ada@example.com", STRONG, verified=True, roles=["viewer"])
    auth = {"Authorization": f"Bearer {await _sign_in(client, 'root@example.com')}"}
    patched = await client.patch(
        f"/admin/users/{ada.id}",
        json={"roles": ["editor"]},
        headers={**auth, "X-Request-ID": "req-roles"},
    )
    assert patched.status_code == 200, patched.text
    entry = _one(await security_entries(app_db, "user.roles_changed"))
    assert (entry["actor_id"], entry["resource_id"]) == (str(admin.id), str(ada.id))
    assert (entry["outcome"], entry["request_id"]) == ("success", "req-roles")
    assert entry["request_data"] == {"add": ["editor"], "remove": ["viewer"]}
    # A profile change that leaves the roles alone is not a role change.
    again = await client.patch(
        f"/admin/users/{ada.id}", json={"name": "Ada", "roles": ["editor"]}, headers=auth
    )
    assert again.status_code == 200, again.text
    assert len(await security_entries(app_db, "user.roles_changed")) == 1
    # The service verb records the same.
    with acting_as(admin.id):
        await users.set_roles(ada.id, add=["auditor"])
    latest = (await security_entries(app_db, "user.roles_changed"))[0]
    assert latest["request_data"] == {"add": ["auditor"], "remove": []}
    assert latest["actor_id"] == str(admin.id)


async def test_api_key_creation_over_http(app_db: Database, client: httpx.AsyncClient) -> None:
    # proves: A3
    ada = await Identity(app_db, CONFIG).users.create("ada@example.com", STRONG, verified=True)
    auth = {"Authorization": f"Bearer {await _sign_in(client, 'ada@example.com')}"}
    made = await client.post(
        "/auth/api-keys",
        json={"name": "ci", "password": STRONG},
        headers={**auth, "X-Request-ID": "req-new-key"},
    )
    assert made.status_code == 201, made.text
    entry = _one(await security_entries(app_db, "api_key.created"))
    assert (entry["actor_id"], entry["resource_type"]) == (str(ada.id), "api_key")
    assert entry["resource_id"] == made.json()["id"]
    assert (entry["outcome"], entry["request_id"]) == ("success", "req-new-key")
    assert made.json()["key"] not in str(entry)  # the key itself is never logged
    assert (await AuditLog(app_db).verify()).ok


async def test_a_failed_token_refresh_is_a_security_failure(app_db: Database, ring: str) -> None:
    # proves: A3
    vault = TokenVault(app_db, refresh_timeout=5)
    saved = await vault.save(
        "crm", "acme", "at-0", "rt-secret-0", expires_at=vault._now() - timedelta(seconds=1)
    )

    async def refresher(old: str) -> dict[str, Any]:
        raise RuntimeError(f"invalid_grant for {old}")

    with acting_as("scheduler"), pytest.raises(TokenRefreshError):
        await vault.get_valid_token("crm", "acme", refresher)
    entry = _one(await security_entries(app_db, "token.refresh_failed"))
    assert (entry["outcome"], entry["resource_type"]) == ("failure", "oauth_token")
    assert entry["resource_id"] == str(saved.id)
    assert entry["actor_id"] == "scheduler"
    assert entry["error"] and "invalid_grant" in str(entry["error"])
    assert "rt-secret-0" not in str(entry)


async def test_a_key_rotation_is_a_security_event(app_db: Database, ring: str) -> None:
    # proves: A3
    vault = TokenVault(app_db)
    for n in range(3):
        await vault.save("crm", f"acct-{n}", f"at-{n}", f"rt-{n}", expires_in=3600)
    configure_encryption(f"{generate_key('audit2')},{ring}")
    with acting_as("ops-admin"):
        changed = await vault.rotate_keys()
    assert changed == 6  # the access and the refresh token of each account
    entry = _one(await security_entries(app_db, "token.keys_rotated"))
    assert (entry["actor_id"], entry["outcome"]) == ("ops-admin", "success")
    assert entry["description"] == "6 token value(s) re-encrypted under the newest key"


# What an entry says, compared between the two ways of writing it (id and time differ).
_FIELDS = (
    "tenant_id, actor_id, actor_type, action, category, resource_type, resource_id, "
    "description, ip, user_agent, request_id, outcome, error, request_data::text, "
    "response_data::text, changes::text"
)


async def _every_event(db: Database, label: str) -> dict[str, str]:
    """Cause every kind of security entry (and tenant-scoped ones); the run's names to hide."""
    identity = Identity(db, CONFIG)
    users, auth, audit = identity.users, identity.auth, AuditLog(db)
    admin = await users.create(f"root-{label}@example.com", STRONG, verified=True, roles=["admin"])
    ada = await users.create(f"ada-{label}@example.com", STRONG, verified=True, roles=["viewer"])
    eve = await users.create(f"eve-{label}@example.com", STRONG, verified=True)
    ext = await users.create(
        f"ext-{label}@example.com", provider="github", provider_user_id=f"gh-{label}"
    )
    vault = TokenVault(db, refresh_timeout=5)
    saved = await vault.save(
        "crm", f"acct-{label}", "at-0", "rt-secret-0", expires_at=vault._now() - timedelta(1)
    )

    async def refresher(old: str) -> dict[str, Any]:
        raise RuntimeError("invalid_grant")

    with request_context(request_id="req-1", ip="203.0.113.9", user_agent="probe/1.0"):
        await auth.login(f"ada-{label}@example.com", STRONG)
        with pytest.raises(AuthenticationError):
            await auth.login(f"ada-{label}@example.com", "not the password at all")
        for _ in range(CONFIG.max_failed_logins):  # the last one locks eve out
            with pytest.raises(AuthenticationError):
                await auth.login(f"eve-{label}@example.com", "not the password at all")
        await auth.login_external("github", f"gh-{label}")
        with acting_as(ada.id):
            await auth.change_password(ada.id, STRONG, NEW_PASSWORD)
            secret = (await identity.two_factor.enrol(ada.id)).secret
            await identity.two_factor.confirm(ada.id, pyotp.TOTP(secret).now())
            await identity.two_factor.disable(ada.id, password=NEW_PASSWORD)
            issued = await identity.api_keys.create(ada.id, "ci")
            await identity.api_keys.revoke(issued.api_key.id)
        with acting_as(admin.id):
            await users.set_roles(ada.id, add=["editor"], remove=["viewer"])
        with acting_as("scheduler"), pytest.raises(TokenRefreshError):
            await vault.get_valid_token("crm", f"acct-{label}", refresher)
        with acting_as("ops-admin"):
            await vault.rotate_keys()
            with tenant_context(ACME):
                await audit.record("note.shared", request_data={"to": "x", "api_key": "sk-1"})
                await audit.record("note.moved", tenant_id=GLOBEX, resource_id=label)
                with all_tenants():
                    await audit.record("maintenance.done", category=SECURITY)
    return {
        str(admin.id): "ADMIN",
        str(ada.id): "ADA",
        str(eve.id): "EVE",
        str(ext.id): "EXT",
        str(saved.id): "TOKEN",
        str(issued.api_key.id): "KEY",
        issued.api_key.prefix: "PREFIX",
        label: "RUN",
    }


async def test_every_security_entry_is_the_same_on_the_lane_or_in_a_transaction(
    roles: Roles, app_db: Database, ring: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: A1, A2, N3
    # An entry written by itself is one INSERT on the read lane; with the lane off, the same
    # INSERT in a transaction of its own. Every kind of entry, as the application role (row-
    # level security holding), must come out the same either way.
    sent: list[tuple[ReadLane, str]] = []
    original = ReadLane.run

    async def spy(self: ReadLane, plan: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append((self, plan.sql))
        return await original(self, plan, *args, **kwargs)

    monkeypatch.setattr(ReadLane, "run", spy)
    admin = await roles.conn("admin")
    try:
        lane_names = await _every_event(app_db, "lane")
        lane_count = await admin.fetchval("SELECT count(*) FROM audit_log")
        on_lane = [sql for lane, sql in sent if lane is app_db.read_lane]
        assert len(on_lane) == len(sent)  # the primary's lane, no other
        monkeypatch.setattr(Database, "read_lane", property(lambda self: None))
        sent.clear()
        tx_names = await _every_event(app_db, "tx")
        assert sent == []  # the lane off: nothing went on it
        rows = await admin.fetch(f"SELECT {_FIELDS} FROM audit_log ORDER BY occurred_at, seq")
    finally:
        await admin.close()

    def shown(row: Any, names: dict[str, str]) -> str:
        text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", "TIME", repr(tuple(row)))
        for name, placeholder in names.items():
            text = text.replace(name, placeholder)
        return text

    lane_rows, tx_rows = rows[:lane_count], rows[lane_count:]
    assert [shown(r, lane_names) for r in lane_rows] == [shown(r, tx_names) for r in tx_rows]
    actions = [r["action"] for r in lane_rows]
    for action in (
        "auth.login",
        "auth.lockout",
        "auth.password_changed",
        "auth.2fa_enabled",
        "auth.2fa_disabled",
        "api_key.created",
        "api_key.revoked",
        "user.roles_changed",
        "token.refresh_failed",
        "token.keys_rotated",
    ):
        assert action in actions, action
    # Every entry written by itself went on the lane, as one INSERT each: the five sign-ins
    # by password, eve's lockout, the external sign-in, the key rotation and the three the
    # application recorded; the others went in the transaction of the change they record.
    by_itself = {"auth.login", "auth.lockout", "token.keys_rotated", "note.shared"}
    by_itself |= {"note.moved", "maintenance.done"}
    assert len(on_lane) == sum(a in by_itself for a in actions) == 11
    assert all(sql.startswith("INSERT INTO audit_log") for sql in on_lane)
    entry = dict(zip(rows[0].keys(), lane_rows[0], strict=True))
    assert (entry["request_id"], entry["ip"], entry["user_agent"]) == (
        "req-1",
        "203.0.113.9",
        "probe/1.0",
    )
    scoped = {r["action"]: r["tenant_id"] for r in lane_rows if r["action"].startswith("note")}
    assert scoped == {"note.shared": ACME, "note.moved": GLOBEX}
    assert "sk-1" not in str(rows) and STRONG not in str(rows) and "rt-secret" not in str(rows)
    for tenant in (None, ACME, GLOBEX):
        report = await AuditLog(app_db).verify(tenant)
        assert report.ok and report.checked, report
