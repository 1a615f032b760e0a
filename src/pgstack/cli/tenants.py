"""`pgstack tenants ...`: create, list, show, re-plan, suspend, reactivate, members, keys."""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from pgstack.cli.main import JsonOpt, expected_failures, group, on_database
from pgstack.errors import NotFoundError

if TYPE_CHECKING:
    from pgstack.tenancy import Tenancy, Tenant

T = TypeVar("T")

tenants_app = group("Tenants: create, list, show, change plan and status, manage members.")

ExternalId = Annotated[str, typer.Argument(help="The tenant's external (workspace or team) id.")]


def _run(work: Callable[[Tenancy], Awaitable[T]]) -> T:
    from pgstack.tenancy import Tenancy

    return on_database(lambda db: work(Tenancy(db)))


def _row(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": str(tenant.id),
        "external_id": tenant.external_id,
        "name": tenant.name,
        "domain": tenant.domain,
        "plan": tenant.plan,
        "status": tenant.status,
        "trial_ends_at": tenant.trial_ends_at.isoformat() if tenant.trial_ends_at else None,
        "locale": tenant.locale,
        "timezone": tenant.timezone,
        "settings": tenant.settings,
    }


def _say(tenant: Tenant, what: str) -> None:
    typer.echo(f"tenant {tenant.external_id} ({tenant.id}) {what}")


@tenants_app.command("create")
@expected_failures
def create(
    external_id: ExternalId,
    name: Annotated[str, typer.Option(help="The tenant's display name.")],
    plan: Annotated[str, typer.Option(help="The plan tier.")] = "free",
    domain: Annotated[str | None, typer.Option(help="The tenant's domain.")] = None,
    trialing: Annotated[bool, typer.Option("--trialing", help="Start in a trial.")] = False,
    owner_email: Annotated[
        str | None, typer.Option(help="The e-mail address of the user who becomes owner.")
    ] = None,
) -> None:
    """Create a tenant, optionally with its first owner."""

    async def work(tenancy: Tenancy) -> Tenant:
        owner_id = None
        if owner_email is not None:
            from pgstack.identity import Identity

            user = await Identity(tenancy.db).users.get_by_email(owner_email)
            if user is None:
                raise NotFoundError(f"No user has the e-mail address {owner_email.strip()}.")
            owner_id = user.id
        return await tenancy.tenants.create(
            external_id,
            name,
            plan=plan,
            domain=domain,
            status="trialing" if trialing else "active",
            owner_id=owner_id,
        )

    _say(_run(work), "created")


@tenants_app.command("list")
@expected_failures
def list_tenants(
    status: Annotated[str | None, typer.Option(help="Only tenants in this status.")] = None,
    plan: Annotated[str | None, typer.Option(help="Only tenants on this plan.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many to show.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List tenants by name."""

    async def work(tenancy: Tenancy) -> tuple[list[dict[str, Any]], int | None, bool]:
        page = await tenancy.tenants.list(status=status, plan=plan, limit=limit)
        return [_row(t) for t in page.items], page.total, page.total_is_estimate

    rows, total, estimated = _run(work)
    if as_json:
        out = {"total": total, "total_is_estimate": estimated, "tenants": rows}
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.table import Table

    from pgstack.cli.main import console

    of = f"about {total}" if estimated else total
    table = Table(title=f"tenants ({len(rows)} of {of})")
    for column in ("id", "external_id", "name", "plan", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["external_id"], row["name"], row["plan"], row["status"])
    console.print(table)


@tenants_app.command("show")
@expected_failures
def show(external_id: ExternalId) -> None:
    """Print one tenant as JSON."""

    async def work(tenancy: Tenancy) -> Tenant:
        return await tenancy.tenants.get_by_external_id(external_id)

    typer.echo(json.dumps(_row(_run(work)), indent=2))


def _change(external_id: str, change: Callable[[Tenancy, uuid.UUID], Awaitable[Tenant]]) -> Tenant:
    async def work(tenancy: Tenancy) -> Tenant:
        tenant = await tenancy.tenants.get_by_external_id(external_id)
        return await change(tenancy, tenant.id)

    return _run(work)


@tenants_app.command("set-plan")
@expected_failures
def set_plan(
    external_id: ExternalId, plan: Annotated[str, typer.Argument(help="The new plan tier.")]
) -> None:
    """Move a tenant to another plan tier."""
    _say(_change(external_id, lambda t, i: t.tenants.change_plan(i, plan)), f"is on {plan}")


@tenants_app.command("set-status")
@expected_failures
def set_status(
    external_id: ExternalId,
    status: Annotated[
        str, typer.Argument(help="trialing, active, past_due, cancelled or suspended.")
    ],
) -> None:
    """Move a tenant's subscription to another status (only allowed moves)."""
    _say(_change(external_id, lambda t, i: t.tenants.set_status(i, status)), f"is {status}")


@tenants_app.command("suspend")
@expected_failures
def suspend(external_id: ExternalId) -> None:
    """Suspend a tenant: its members are refused until it is reactivated."""
    _say(_change(external_id, lambda t, i: t.tenants.suspend(i)), "suspended")


@tenants_app.command("reactivate")
@expected_failures
def reactivate(external_id: ExternalId) -> None:
    """Make a suspended or cancelled tenant active again."""
    _say(_change(external_id, lambda t, i: t.tenants.reactivate(i)), "reactivated")


@tenants_app.command("add-member")
@expected_failures
def add_member(
    external_id: ExternalId,
    email: Annotated[str, typer.Option(help="The user's e-mail address.")],
    role: Annotated[str, typer.Option(help="owner, admin, member, viewer or your own.")] = "member",
) -> None:
    """Make an existing user a member of a tenant at once (no invitation)."""

    async def work(tenancy: Tenancy) -> str:
        from pgstack.identity import Identity

        tenant = await tenancy.tenants.get_by_external_id(external_id)
        user = await Identity(tenancy.db).users.get_by_email(email)
        if user is None:
            raise NotFoundError(f"No user has the e-mail address {email.strip()}.")
        await tenancy.memberships.add(tenant.id, user.id, role)
        return user.email

    typer.echo(f"{_run(work)} is now {role} in tenant {external_id}")


@tenants_app.command("members")
@expected_failures
def members(external_id: ExternalId, as_json: JsonOpt = False) -> None:
    """List a tenant's members and their roles."""

    async def work(tenancy: Tenancy) -> list[dict[str, Any]]:
        tenant = await tenancy.tenants.get_by_external_id(external_id)
        rows = await tenancy.memberships.list(tenant.id)
        return [
            {"user_id": str(m.user_id), "email": u.email if u else None, "role": m.role}
            for m, u in rows
        ]

    rows = _run(work)
    if as_json:
        typer.echo(json.dumps({"members": rows}, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['email']}\t{row['role']}\t{row['user_id']}")


@tenants_app.command("bind-key")
@expected_failures
def bind_key(
    external_id: ExternalId,
    key_id: Annotated[uuid.UUID, typer.Argument(help="The id of the API key to bind.")],
) -> None:
    """Bind an API key to a tenant its user belongs to: it then acts for that tenant only."""

    async def work(tenancy: Tenancy) -> None:
        from pgstack.identity import Identity

        identity = Identity(tenancy.db)
        tenant = await tenancy.tenants.get_by_external_id(external_id)
        key = await identity.api_keys.get(key_id)
        try:
            await tenancy.memberships.bind_api_key(key_id, tenant.id)
        except NotFoundError:
            # The service names the tenant by its id; here it is named as the user gave it,
            # with the command that fixes it.
            if await tenancy.memberships.role_of(tenant.id, key.user_id) is not None:
                raise
            user = await identity.users.get(key.user_id, include_deleted=True)
            add = shlex.join(
                ["pgstack", "tenants", "add-member", external_id, "--email", user.email]
            )
            raise NotFoundError(
                f"{user.email}, the user of API key {key_id}, is not a member of tenant "
                f"{external_id}: add them first with `{add}`, then run bind-key again."
            ) from None

    _run(work)
    typer.echo(f"API key {key_id} now acts for tenant {external_id} only")
