"""What identity gained beside tenancy: usernames, profile fields, provider names."""

from __future__ import annotations

import asyncio

import pytest

from pgstack.errors import AuthenticationError, ConflictError, InvalidInputError
from pgstack.identity import Identity, register_provider
from pgstack.identity import models as identity_models

from .conftest import STRONG


async def test_username_signs_in_like_the_address_under_the_same_lockout(
    identity: Identity,
) -> None:
    # proves: I1, I3, I7
    user = await identity.users.create("ada@example.com", STRONG, username="Ada_L")
    assert (await identity.auth.login("ADA_l", STRONG)).user.id == user.id
    assert (await identity.users.get_by_username("ada_l")) is not None
    for _ in range(identity.config.max_failed_logins):
        with pytest.raises(AuthenticationError):
            await identity.auth.login("ada_l", "wrong")
    # Locked by username guesses: the address is locked too, even with the right password.
    with pytest.raises(AuthenticationError):
        await identity.auth.login("ada@example.com", STRONG)


async def test_a_username_is_taken_once_even_by_concurrent_sign_ups(identity: Identity) -> None:
    # proves: I1
    results = await asyncio.gather(
        *(
            identity.users.create(f"u{i}@example.com", STRONG, username="same.name")
            for i in range(4)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    for bad in ("ab", "a@b", "x" * 41, "d\u043era", "-lead", "sp ace", "nul\u0000"):
        with pytest.raises(InvalidInputError):
            await identity.users.create("v@example.com", STRONG, username=bad)


async def test_profile_fields_and_provider_names(
    identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: I1
    # Registered names are process-wide: this test's registration ends with it.
    monkeypatch.setattr(identity_models, "_registered", set(identity_models.known_providers()))
    user = await identity.users.create(
        "bo@example.com", STRONG, bio="hi", avatar_url="https://example.com/a.png"
    )
    changed = await identity.users.update(user.id, bio=None, username="bob")
    assert changed.bio is None and changed.username == "bob"
    with pytest.raises(InvalidInputError, match="avatar_url"):
        await identity.users.update(user.id, avatar_url="javascript:alert(1)")
    slack = await identity.users.create(
        "s@example.com", provider="slack", provider_user_id="U1", verified=True
    )
    assert slack.is_external
    with pytest.raises(InvalidInputError, match="register"):
        await identity.users.create("k@example.com", provider="keycloak", provider_user_id="1")
    register_provider("keycloak")
    assert (
        await identity.users.create("k@example.com", provider="keycloak", provider_user_id="1")
    ).provider == "keycloak"
    for bad in ("Key Cloak", "", "1abc", "x" * 41):
        with pytest.raises(InvalidInputError):
            register_provider(bad)
