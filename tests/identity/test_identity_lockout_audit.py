"""The lockout's audit entry: whoever made the attempt acts; the locked user is the resource."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from pgstack.audit import AuditLog
from pgstack.db.database import Database
from pgstack.errors import AuthenticationError
from pgstack.identity import Identity, IdentityConfig
from pgstack.orm.context import acting_as, request_context

from .conftest import STRONG

WRONG = "not the password at all"
FIELDS = ("actor_id", "actor_type", "request_id", "ip")


async def _entries(db: Database, action: str) -> list[dict[str, Any]]:
    return (await AuditLog(db).entries(action=action, limit=100)).items


async def test_an_anonymous_callers_lockout_names_no_actor_like_its_failed_logins(
    pgstack_migrated_db: Database, identity: Identity, client: httpx.AsyncClient
) -> None:
    # proves: I3, A1
    ada = await identity.users.create("ada@example.com", STRONG, verified=True)
    attempts = identity.config.max_failed_logins
    for attempt in range(attempts):
        answer = await client.post(
            "/auth/login",
            json={"email": "ada@example.com", "password": WRONG},
            headers={"X-Request-ID": f"guess-{attempt}"},
        )
        assert answer.status_code == 401, answer.text
    [lockout] = await _entries(pgstack_migrated_db, "auth.lockout")
    assert (lockout["actor_id"], lockout["actor_type"]) == (None, "system")
    assert (lockout["resource_type"], lockout["resource_id"]) == ("user", str(ada.id))
    assert (lockout["outcome"], lockout["category"]) == ("failure", "security")
    assert lockout["request_id"] == f"guess-{attempts - 1}"
    # The same attempt's failed login names its actor the same way.
    [failure] = [
        e
        for e in await _entries(pgstack_migrated_db, "auth.login")
        if e["request_id"] == lockout["request_id"]
    ]
    assert {f: failure[f] for f in FIELDS} == {f: lockout[f] for f in FIELDS}


async def test_the_actor_in_context_is_the_lockouts_actor_not_the_locked_user(
    pgstack_migrated_db: Database,
) -> None:
    # proves: I3, A1
    identity = Identity(
        pgstack_migrated_db, IdentityConfig(max_failed_logins=3, lockout=timedelta(minutes=5))
    )
    ada = await identity.users.create("ada@example.com", STRONG)
    operator = uuid.uuid4()
    with acting_as(operator), request_context(request_id="req-op", ip="198.51.100.7"):
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                await identity.auth.authenticate("ada@example.com", WRONG)
    [lockout] = await _entries(pgstack_migrated_db, "auth.lockout")
    assert {f: lockout[f] for f in FIELDS} == {
        "actor_id": str(operator),
        "actor_type": "user",
        "request_id": "req-op",
        "ip": "198.51.100.7",
    }
    assert (lockout["resource_type"], lockout["resource_id"]) == ("user", str(ada.id))
    assert lockout["description"] == "locked for 0:05:00 after 3 attempts"
