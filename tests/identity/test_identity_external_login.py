"""Signing in users of an external provider: a session for the identity the provider vouched for."""

from __future__ import annotations

import asyncio

import pytest

from pgstack.audit import AuditLog
from pgstack.db.database import Database
from pgstack.errors import AuthenticationError, NotFoundError
from pgstack.identity import Identity, register_provider


async def test_an_external_user_gets_a_session_like_a_local_one(
    identity: Identity, pgstack_migrated_db: Database
) -> None:
    # proves: I1 (users of an external provider sign in; the application checked the provider)
    register_provider("okta")
    user = await identity.users.create(
        "ext@example.com", provider="okta", provider_user_id="00u1", groups=["ml"]
    )
    first, second = await asyncio.gather(
        identity.auth.login_external("okta", "00u1"), identity.auth.login_external("okta", "00u1")
    )
    assert first.user.id == second.user.id == user.id
    assert first.token != second.token and first.token.startswith("pgss_")
    assert (await identity.auth.user_for_session(first.token)).id == user.id
    assert "pgss_" not in repr(first)
    again = await identity.users.get(user.id)
    assert again.login_count == 2 and again.last_login_at is not None

    events = await AuditLog(pgstack_migrated_db).security_events(action="auth.login")
    [*logins] = [e for e in events.items if e["actor_id"] == str(user.id)]
    assert len(logins) == 2 and all(e["outcome"] == "success" for e in logins)

    await identity.auth.logout(first.token)
    with pytest.raises(AuthenticationError):
        await identity.auth.user_for_session(first.token)


async def test_unknown_deactivated_or_local_identities_get_no_session(
    identity: Identity, alice: object
) -> None:
    # proves: I1, I7 (no session for an identity the provider did not name, or a blocked user)
    register_provider("okta")
    with pytest.raises(NotFoundError, match=r"users\.create"):
        await identity.auth.login_external("okta", "nobody")
    with pytest.raises(NotFoundError):  # the same id at another provider is another identity
        await identity.users.create("gh@example.com", provider="github", provider_user_id="7")
        await identity.auth.login_external("okta", "7")
    with pytest.raises(NotFoundError):  # a local user has no external identity to sign in by
        await identity.auth.login_external("local", "alice@example.com")

    user = await identity.users.create("off@example.com", provider="okta", provider_user_id="9")
    await identity.users.set_active(user.id, False)
    with pytest.raises(AuthenticationError, match="deactivated"):
        await identity.auth.login_external("okta", "9")
    await identity.users.set_active(user.id, True)
    await identity.users.delete(user.id)
    with pytest.raises(NotFoundError):
        await identity.auth.login_external("okta", "9")
    with pytest.raises(NotFoundError):  # an unregistered provider name is not an identity
        await identity.auth.login_external("unheard_of", "9")
