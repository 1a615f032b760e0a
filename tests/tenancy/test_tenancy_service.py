"""Tenants and memberships through their verbs, against the real database."""

from __future__ import annotations

import asyncio

import pytest

from pgstack.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from pgstack.identity import Identity
from pgstack.tenancy import TRANSITIONS, Tenancy, TenantStatus

from .conftest import World, make_user


async def test_tenant_create_get_list_and_plan(tenancy: Tenancy) -> None:
    # proves: N1
    acme = await tenancy.tenants.create(
        "T01ACME",
        "Acme",
        domain="acme.example",
        plan="pro",
        status="trialing",
        settings={"theme": "dark"},
        locale="fr-FR",
        timezone="Europe/Paris",
    )
    assert acme.status == "trialing" and acme.is_active and acme.settings == {"theme": "dark"}
    assert (await tenancy.tenants.get_by_external_id("T01ACME")).id == acme.id
    with pytest.raises(ConflictError, match=r"^A tenant with the external id 'T01ACME' already"):
        await tenancy.tenants.create("T01ACME", "Acme again")
    await tenancy.tenants.create("T02", "Beta")
    page = await tenancy.tenants.list(plan="pro")
    assert [t.name for t in page.items] == ["Acme"] and page.total == 1
    changed = await tenancy.tenants.change_plan(acme.id, "enterprise")
    assert (await tenancy.tenants.get(acme.id)).plan == changed.plan == "enterprise"
    with pytest.raises(InvalidInputError, match="time zone"):
        await tenancy.tenants.create("T03", "Gamma", timezone="Mars/Olympus")
    with pytest.raises(NotFoundError):
        await tenancy.tenants.get_by_external_id("nope")


async def test_every_status_transition_is_allowed_or_refused_as_the_table_says(
    tenancy: Tenancy,
) -> None:
    # proves: N1
    for old in TenantStatus:
        for new in TenantStatus:
            if old == new:
                continue
            tenant = await tenancy.tenants.create(f"{old}-{new}", "T", status="trialing")
            if old != TenantStatus.TRIALING:
                # reach `old` through allowed moves
                path = {
                    "active": ["active"],
                    "past_due": ["past_due"],
                    "suspended": ["suspended"],
                    "cancelled": ["cancelled"],
                }[old.value]
                for step in path:
                    await tenancy.tenants.set_status(tenant.id, step)
            if new in TRANSITIONS[old]:
                assert (await tenancy.tenants.set_status(tenant.id, new)).status == new
            else:
                with pytest.raises(ConflictError, match=f"cannot become {new.value}"):
                    await tenancy.tenants.set_status(tenant.id, new)
                assert (await tenancy.tenants.get(tenant.id)).status == old


async def test_suspended_tenant_refuses_its_members_until_reactivated(
    tenancy: Tenancy, world: World
) -> None:
    # proves: N1, N2
    await tenancy.tenants.suspend(world.a.id)
    with pytest.raises(PermissionDeniedError, match="suspended"):
        await tenancy.memberships.resolve(world.member.id, world.a.id)
    await tenancy.tenants.reactivate(world.a.id)
    assert (await tenancy.memberships.resolve(world.member.id, world.a.id)).role == "member"


async def test_resolve_refuses_a_tenant_the_user_is_not_in(tenancy: Tenancy, world: World) -> None:
    # proves: N2, N5
    with pytest.raises(NotFoundError):
        await tenancy.memberships.resolve(world.member.id, world.b.id)
    assert [m.tenant.name for m in await tenancy.memberships.for_user(world.owner.id)] == [
        "Tenant A"
    ]


async def test_invite_accept_only_by_the_invited_address_and_once(
    identity: Identity, tenancy: Tenancy, world: World
) -> None:
    # proves: N5
    bob = await make_user(identity, "bob@example.com")
    issued = await tenancy.memberships.invite(
        world.a.id, "Bob@Example.com", "member", invited_by=world.admin.id
    )
    assert "***" in repr(issued) and issued.token not in repr(issued)
    assert await tenancy.memberships.role_of(world.a.id, bob.id) is None  # pending grants nothing
    with pytest.raises(AuthenticationError):  # someone else cannot use Bob's token
        await tenancy.memberships.accept(issued.token, world.b_owner.id)
    results = await asyncio.gather(
        tenancy.memberships.accept(issued.token, bob.id),
        tenancy.memberships.accept(issued.token, bob.id),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert await tenancy.memberships.role_of(world.a.id, bob.id) == "member"
    with pytest.raises(ConflictError, match="already a member"):
        await tenancy.memberships.invite(world.a.id, "bob@example.com", "admin")


async def test_the_last_owner_cannot_leave_or_be_demoted(tenancy: Tenancy, world: World) -> None:
    # proves: N5
    with pytest.raises(ConflictError, match="without an owner"):
        await tenancy.memberships.remove(world.a.id, world.owner.id)
    with pytest.raises(ConflictError, match="without an owner"):
        await tenancy.memberships.change_role(world.a.id, world.owner.id, "admin")
    await tenancy.memberships.change_role(world.a.id, world.admin.id, "owner")
    await tenancy.memberships.remove(world.a.id, world.owner.id)  # another owner remains
    assert await tenancy.memberships.role_of(world.a.id, world.owner.id) is None


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    tenancy: Tenancy, world: World
) -> None:
    # proves: N5 (race: the tenant row lock serialises owner changes)
    await tenancy.memberships.change_role(world.a.id, world.admin.id, "owner")
    for _ in range(5):
        results = await asyncio.gather(
            tenancy.memberships.change_role(world.a.id, world.owner.id, "member"),
            tenancy.memberships.change_role(world.a.id, world.admin.id, "member"),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, Exception)]
        assert len(failures) == 1 and isinstance(failures[0], ConflictError), results
        owners = [
            row.role for row, _ in await tenancy.memberships.list(world.a.id) if row.role == "owner"
        ]
        assert owners == ["owner"]
        # make both owners again for the next round
        for user in (world.owner, world.admin):
            await tenancy.memberships.change_role(world.a.id, user.id, "owner")


async def test_slack_ids_are_unique_per_workspace_not_globally(
    identity: Identity, tenancy: Tenancy, world: World
) -> None:
    # proves: N5, I1
    await tenancy.memberships.link_identity(world.a.id, world.member.id, "slack", "U123")
    await tenancy.memberships.link_identity(world.b.id, world.b_owner.id, "slack", "U123")
    with pytest.raises(ConflictError):
        await tenancy.memberships.link_identity(world.a.id, world.viewer.id, "slack", "U123")
    found = await tenancy.memberships.find_by_identity(world.a.id, "slack", "U123")
    assert found is not None and found.id == world.member.id
    found_b = await tenancy.memberships.find_by_identity(world.b.id, "slack", "U123")
    assert found_b is not None and found_b.id == world.b_owner.id
    with pytest.raises(InvalidInputError, match="register"):
        await tenancy.memberships.link_identity(world.a.id, world.member.id, "myidp", "x")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"external_id": "x" * 201}, "at most 200"),
        ({"name": "n" * 201}, "at most 200"),
        ({"domain": "d" * 201}, "at most 200"),
        ({"locale": "l" * 36}, "at most 35"),
        ({"name": "Acme \u202egnp.exe"}, "reorders the text"),
        ({"external_id": "acme\u2066"}, "reorders the text"),
    ],
)
async def test_tenant_texts_are_bounded_and_cannot_reorder_what_a_reader_sees(
    tenancy: Tenancy, fields: dict[str, str], says: str
) -> None:
    # proves: N1, I8 (the HTTP API's bounds hold for the service and the CLI too)
    values = {"external_id": "BOUNDED", "name": "Bounded", **fields}
    external_id, name = values.pop("external_id"), values.pop("name")
    with pytest.raises(InvalidInputError, match=says):
        await tenancy.tenants.create(external_id, name, **values)
    made = await tenancy.tenants.create("BOUNDED", "Bounded")
    if "external_id" not in fields:  # fixed at creation
        with pytest.raises(InvalidInputError, match=says):
            await tenancy.tenants.update(made.id, **fields)
