"""Tenancy over HTTP: the caller's tenant and role per request, role guards, and the routers.

    app = create_app(routers=[identity_router(), tenancy_router()])

    @app.get("/notes")
    async def notes(access: TenantAccessDep, session: SessionDep) -> list[NoteOut]:
        ...  # tenant-scoped queries here see only access.tenant's rows

The tenant comes from the authenticated caller, never from a bare header: an API key bound
to a tenant acts for that tenant; otherwise the route's `{tenant_id}` path parameter or the
`X-Tenant-ID` header names one, and it is honoured only after the caller's membership in it
is found in the database. A tenant the caller does not belong to is a 404, like one that
does not exist. A viewer may only read: any other method than GET, HEAD or OPTIONS is a 403.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pgstack.errors import InvalidInputError, PermissionDeniedError
from pgstack.identity.text import has_control_characters
from pgstack.orm.context import acting_as, tenant_context
from pgstack.tenancy import Tenancy, Tenant, TenantMembership, TenantRole, TenantStatus
from pgstack.web.deps import Offset, get_database
from pgstack.web.identity import Principal, PrincipalDep, require_roles
from pgstack.web.pages import PageOut
from pgstack.web.ratelimit import enforce_tenant_limit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Built-in roles, weakest first: a guard for one of them also admits the stronger ones.
_RANKS = {r.value: i for i, r in enumerate(reversed(list(TenantRole)))}


def get_tenancy(request: Request) -> Tenancy:
    """The tenancy services of this app (one per database, reused)."""
    db = get_database(request)
    tenancy: Tenancy | None = getattr(request.app.state, "pgstack_tenancy", None)
    if tenancy is None or tenancy.db is not db:
        tenancy = Tenancy(db)
        request.app.state.pgstack_tenancy = tenancy
    return tenancy


TenancyDep = Annotated[Tenancy, Depends(get_tenancy)]


@dataclass(frozen=True)
class TenantAccess:
    """The tenant this request acts for, the caller's role in it, and the caller."""

    tenant: Tenant
    role: str
    principal: Principal

    def __repr__(self) -> str:
        return f"TenantAccess(tenant={self.tenant.id}, role={self.role}, {self.principal!r})"


def role_satisfies(role: str, allowed: Sequence[str]) -> bool:
    """Whether `role` is one of `allowed`, or a stronger built-in role than one of them."""
    if role in allowed:
        return True
    rank = _RANKS.get(role)
    return rank is not None and any(rank >= _RANKS[a] for a in allowed if a in _RANKS)


#: A key's scope naming the tenant role it may act with: `tenant:member`, `tenant:viewer`, ...
TENANT_SCOPE_PREFIX = "tenant:"


def key_bound_role(role: str, scopes: Sequence[str]) -> str:
    """The role an API key acts with in a tenant: the member's role, capped by the key's scopes.

    A key acts in a tenant only with a `tenant:<role>` scope. A built-in role caps the member's
    own (`tenant:viewer` reads only; `tenant:owner` lets the key do all its user may); an
    application's own role counts by its exact name. Like `require_roles`, `*` grants no role.
    """
    granted = {s[len(TENANT_SCOPE_PREFIX) :] for s in scopes if s.startswith(TENANT_SCOPE_PREFIX)}
    if role in granted:
        return role
    ranked = [g for g in granted if g in _RANKS]
    if role in _RANKS and ranked:
        return min(role, max(ranked, key=_RANKS.__getitem__), key=_RANKS.__getitem__)
    raise PermissionDeniedError(
        "This API key has no tenant scope for your role here: create a key with a scope such "
        "as tenant:member (tenant:viewer for reads only, tenant:admin to manage members)."
    )


def _as_uuid(raw: Any) -> uuid.UUID | None:
    if raw is None or isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw).strip())
    except ValueError:
        raise InvalidInputError(
            "The tenant id (path or X-Tenant-ID header) is not a UUID; send the tenant's id."
        ) from None


def _named_tenant(request: Request, header: str | None) -> uuid.UUID | None:
    path, named = _as_uuid(request.path_params.get("tenant_id")), _as_uuid(header)
    if path is not None and named is not None and path != named:
        raise InvalidInputError(
            "The path and the X-Tenant-ID header name different tenants; send one of them."
        )
    return path or named


async def _access(
    request: Request, principal: Principal, tenancy: Tenancy, header: str | None
) -> TenantAccess:
    member = await tenancy.memberships.resolve(
        principal.user.id,
        _named_tenant(request, header),
        api_key_id=principal.api_key.id if principal.api_key is not None else None,
    )
    role = member.role
    if principal.api_key is not None:
        role = key_bound_role(role, principal.api_key.scopes)
    access = TenantAccess(member.tenant, role, principal)
    # The tenant and its plan are verified from here on: count the request against the
    # plan's limits before any route body runs (429 when over).
    await enforce_tenant_limit(request, access.tenant.id, access.tenant.plan)
    return access


_TenantHeader = Annotated[
    str | None,
    Header(
        alias="X-Tenant-ID",
        max_length=64,
        description="The tenant to act for, when the path does not name it; only honoured "
        "for a tenant the caller is a member of.",
    ),
]


async def current_tenant_access(
    request: Request,
    principal: PrincipalDep,
    tenancy: TenancyDep,
    x_tenant_id: _TenantHeader = None,
) -> AsyncIterator[TenantAccess]:
    """The verified tenant and role of this request; the route runs inside its tenant context.

    Tenant-scoped models queried in the route see only this tenant's rows, and inserts are
    stamped with it; `created_by` / `updated_by` are the caller. A viewer may only read.
    """
    access = await _access(request, principal, tenancy, x_tenant_id)
    if access.role == TenantRole.VIEWER.value and request.method not in SAFE_METHODS:
        raise PermissionDeniedError(
            "Viewers can only read in this tenant; ask an admin of the tenant for a member role."
        )
    with tenant_context(access.tenant.id), acting_as(principal.user.id):
        yield access


# scope="function": the context ends with the route body, before a streaming response streams.
TenantAccessDep = Annotated[TenantAccess, Depends(current_tenant_access, scope="function")]


def require_tenant_role(*roles: str) -> Callable[..., Awaitable[TenantAccess]]:
    """A dependency: the caller's role in the request's tenant is one of `roles`.

    Built-in roles rank owner > admin > member > viewer, so `require_tenant_role("admin")`
    also admits owners; an application's own roles match by name only.
    """
    if not roles:
        raise ValueError("require_tenant_role needs at least one role")

    async def dependency(access: TenantAccessDep) -> TenantAccess:
        if not role_satisfies(access.role, roles):
            raise PermissionDeniedError(
                f"This needs the tenant role {' or '.join(roles)}; yours is {access.role}. "
                "Ask an admin of the tenant."
            )
        return access

    return dependency


#: The request's tenant access, for an admin (or owner) of that tenant only.
TenantAdminDep = Annotated[TenantAccess, Depends(require_tenant_role(TenantRole.ADMIN.value))]


# -- bodies ---------------------------------------------------------------------------------


def _printable(value: str) -> str:
    if has_control_characters(value):
        raise ValueError("must not contain control characters")
    return value


_Clean = AfterValidator(_printable)
_Text = Annotated[str, Field(min_length=1, max_length=200), _Clean]
_Word = Annotated[
    str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_:.-]{0,39}$"), _Clean
]
_Email = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"), _Clean]
_Settings = Annotated[dict[str, Any], Field(max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class TenantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    external_id: str
    name: str
    domain: str | None
    plan: str
    status: TenantStatus
    is_active: bool
    trial_ends_at: datetime | None
    settings: dict[str, Any]
    locale: str
    timezone: str
    created_at: datetime
    updated_at: datetime


class MyTenantOut(BaseModel):
    tenant: TenantOut
    role: str


class TenantPageOut(PageOut[TenantOut]):
    """One page; `total` is the planner's estimate when `total_is_estimate` is true."""


class TenantIn(_Body):
    external_id: _Text
    name: _Text
    domain: _Text | None = None
    plan: _Word = "free"
    status: TenantStatus = TenantStatus.ACTIVE
    trial_ends_at: datetime | None = None
    settings: _Settings = Field(default_factory=dict)
    locale: Annotated[str, Field(min_length=1, max_length=35), _Clean] = "en"
    timezone: Annotated[str, Field(min_length=1, max_length=64), _Clean] = "UTC"
    #: The user who becomes the tenant's first owner.
    owner_id: uuid.UUID | None = None


class TenantPatchIn(_Body):
    """Only the fields sent change; `settings` replaces the whole object."""

    # Left out, a field stays as it is (its default is never validated, and the route sends
    # only the fields set); null clears only the nullable ones (`domain`, `trial_ends_at`).
    # The others refuse null (422) instead of reaching their NOT NULL column.
    name: _Text = None  # type: ignore[assignment]
    domain: _Text | None = None
    settings: _Settings = None  # type: ignore[assignment]
    locale: Annotated[str, Field(min_length=1, max_length=35), _Clean] = None  # type: ignore[assignment]
    timezone: Annotated[str, Field(min_length=1, max_length=64), _Clean] = None  # type: ignore[assignment]
    trial_ends_at: datetime | None = None


class PlanIn(_Body):
    plan: _Word


class StatusIn(_Body):
    status: TenantStatus


class MemberIn(_Body):
    user_id: uuid.UUID
    role: _Word


class RoleIn(_Body):
    role: _Word


class InviteIn(_Body):
    email: _Email
    role: _Word = TenantRole.MEMBER.value


class TokenIn(_Body):
    token: Annotated[str, Field(min_length=1, max_length=200), _Clean]


class MemberOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID | None
    email: str | None
    name: str | None
    role: str
    pending: bool
    accepted_at: datetime | None
    invite_expires_at: datetime | None


class InvitationOut(BaseModel):
    id: uuid.UUID
    email: str
    role: str
    expires_at: datetime
    #: Deliver it to the invited address; shown this once.
    token: str


def _member_out(row: TenantMembership, user: Any) -> MemberOut:
    return MemberOut(
        id=row.id,
        user_id=row.user_id,
        email=user.email if user is not None else row.invited_email,
        name=user.name if user is not None else None,
        role=row.role,
        pending=row.is_pending,
        accepted_at=row.accepted_at,
        invite_expires_at=row.invite_expires_at,
    )


def _may_touch_owners(access: TenantAccess, *roles: str | None) -> None:
    if TenantRole.OWNER.value in roles and access.role != TenantRole.OWNER.value:
        raise PermissionDeniedError("Only an owner of the tenant can grant or take the owner role.")


# -- routers --------------------------------------------------------------------------------


def tenancy_router(*, admin_role: str = "admin", tags: Sequence[str] = ("tenancy",)) -> APIRouter:
    """`/tenants/...` for members (by their tenant role) and `/admin/tenants/...` for `admin_role`.

    Members: list their tenants, read a tenant and its members; admins of a tenant invite,
    change roles and remove members; anyone may leave (but not the last owner).
    Administrators: create, list, read, re-plan, suspend and reactivate tenants.
    """
    router = APIRouter(tags=list(tags))
    admin = [Depends(require_roles(admin_role))]

    @router.get("/tenants")
    async def my_tenants(principal: PrincipalDep, tenancy: TenancyDep) -> list[MyTenantOut]:
        members = await tenancy.memberships.for_user(principal.user.id)
        if principal.api_key is not None:
            # A key bound to a tenant sees that tenant only.
            try:
                bound = await tenancy.memberships.resolve(
                    principal.user.id, None, api_key_id=principal.api_key.id
                )
            except InvalidInputError:
                bound = None
            if bound is not None:
                members = [m for m in members if m.tenant.id == bound.tenant.id]
        return [
            MyTenantOut(tenant=TenantOut.model_validate(m.tenant), role=m.role) for m in members
        ]

    @router.post("/tenants/invitations/accept")
    async def accept_invitation(
        body: TokenIn, principal: PrincipalDep, tenancy: TenancyDep
    ) -> MyTenantOut:
        row = await tenancy.memberships.accept(body.token, principal.user.id)
        tenant = await tenancy.tenants.get(row.tenant_id)
        return MyTenantOut(tenant=TenantOut.model_validate(tenant), role=row.role)

    @router.get("/tenants/current")
    async def current(access: TenantAccessDep) -> MyTenantOut:
        return MyTenantOut(tenant=TenantOut.model_validate(access.tenant), role=access.role)

    @router.get("/tenants/{tenant_id:uuid}")
    async def get_tenant(tenant_id: uuid.UUID, access: TenantAccessDep) -> MyTenantOut:
        return MyTenantOut(tenant=TenantOut.model_validate(access.tenant), role=access.role)

    @router.patch("/tenants/{tenant_id:uuid}")
    async def patch_tenant(
        tenant_id: uuid.UUID, body: TenantPatchIn, access: TenantAdminDep, tenancy: TenancyDep
    ) -> TenantOut:
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            return TenantOut.model_validate(access.tenant)
        return TenantOut.model_validate(await tenancy.tenants.update(access.tenant.id, **changes))

    @router.get("/tenants/{tenant_id:uuid}/members")
    async def list_members(
        tenant_id: uuid.UUID,
        access: TenantAccessDep,
        tenancy: TenancyDep,
        invitations: bool = False,
    ) -> list[MemberOut]:
        # Open invitations carry addresses of people who are not members yet: admins only.
        invitations = invitations and role_satisfies(access.role, [TenantRole.ADMIN.value])
        rows = await tenancy.memberships.list(access.tenant.id, include_invitations=invitations)
        return [_member_out(row, user) for row, user in rows]

    @router.post("/tenants/{tenant_id:uuid}/invitations", status_code=status.HTTP_201_CREATED)
    async def invite(
        tenant_id: uuid.UUID, body: InviteIn, access: TenantAdminDep, tenancy: TenancyDep
    ) -> InvitationOut:
        _may_touch_owners(access, body.role)
        issued = await tenancy.memberships.invite(
            access.tenant.id, body.email, body.role, invited_by=access.principal.user.id
        )
        row = issued.membership
        assert row.invited_email is not None and row.invite_expires_at is not None
        return InvitationOut(
            id=row.id,
            email=row.invited_email,
            role=row.role,
            expires_at=row.invite_expires_at,
            token=issued.token,
        )

    @router.delete(
        "/tenants/{tenant_id:uuid}/invitations/{invitation_id:uuid}",
        status_code=status.HTTP_204_NO_CONTENT,
    )
    async def withdraw(
        tenant_id: uuid.UUID, invitation_id: uuid.UUID, access: TenantAdminDep, tenancy: TenancyDep
    ) -> Response:
        await tenancy.memberships.withdraw(access.tenant.id, invitation_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.patch("/tenants/{tenant_id:uuid}/members/{user_id:uuid}")
    async def change_role(
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        body: RoleIn,
        access: TenantAdminDep,
        tenancy: TenancyDep,
    ) -> MemberOut:
        # Whether the target is an owner is decided under the tenant's lock, not read here.
        row = await tenancy.memberships.change_role(
            access.tenant.id, user_id, body.role, owners=access.role == TenantRole.OWNER.value
        )
        user = await _user(tenancy, user_id)
        return _member_out(row, user)

    @router.delete(
        "/tenants/{tenant_id:uuid}/members/{user_id:uuid}",
        status_code=status.HTTP_204_NO_CONTENT,
    )
    async def remove_member(
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        request: Request,
        principal: PrincipalDep,
        tenancy: TenancyDep,
        x_tenant_id: _TenantHeader = None,
    ) -> Response:
        # Leaving is open to every member, viewers included; removing someone else needs admin.
        access = await _access(request, principal, tenancy, x_tenant_id)
        leaving = user_id == principal.user.id
        if not leaving and not role_satisfies(access.role, [TenantRole.ADMIN.value]):
            raise PermissionDeniedError(
                "Only an admin of the tenant can remove other members; you can leave."
            )
        # Whether the target is an owner is decided under the tenant's lock, not read here.
        owners = leaving or access.role == TenantRole.OWNER.value
        await tenancy.memberships.remove(access.tenant.id, user_id, owners=owners)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    # -- administrators ------------------------------------------------------------------------

    @router.post("/admin/tenants", status_code=status.HTTP_201_CREATED, dependencies=admin)
    async def create_tenant(body: TenantIn, tenancy: TenancyDep) -> TenantOut:
        fields = body.model_dump()
        fields["status"] = body.status.value
        tenant = await tenancy.tenants.create(**fields)
        return TenantOut.model_validate(tenant)

    @router.get("/admin/tenants", dependencies=admin)
    async def list_tenants(
        tenancy: TenancyDep,
        status_: Annotated[TenantStatus | None, Query(alias="status")] = None,
        plan: Annotated[str | None, Query(max_length=40, pattern=r"^[a-z][a-z0-9_:.-]*$")] = None,
        sort: Annotated[str, Query(max_length=200), AfterValidator(_printable)] = "name",
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        offset: Offset = 0,
    ) -> TenantPageOut:
        page = await tenancy.tenants.list(
            status=status_.value if status_ else None,
            plan=plan,
            sort=sort,
            limit=limit,
            offset=offset,
        )
        return TenantPageOut.from_page(page, TenantOut)

    @router.get("/admin/tenants/by-external-id/{external_id}", dependencies=admin)
    async def tenant_by_external_id(
        external_id: Annotated[str, AfterValidator(_printable)], tenancy: TenancyDep
    ) -> TenantOut:
        return TenantOut.model_validate(await tenancy.tenants.get_by_external_id(external_id))

    @router.get("/admin/tenants/{tenant_id:uuid}", dependencies=admin)
    async def admin_get_tenant(tenant_id: uuid.UUID, tenancy: TenancyDep) -> TenantOut:
        return TenantOut.model_validate(await tenancy.tenants.get(tenant_id))

    @router.put("/admin/tenants/{tenant_id:uuid}/plan", dependencies=admin)
    async def change_plan(tenant_id: uuid.UUID, body: PlanIn, tenancy: TenancyDep) -> TenantOut:
        return TenantOut.model_validate(await tenancy.tenants.change_plan(tenant_id, body.plan))

    @router.put("/admin/tenants/{tenant_id:uuid}/status", dependencies=admin)
    async def set_status(tenant_id: uuid.UUID, body: StatusIn, tenancy: TenancyDep) -> TenantOut:
        tenant = await tenancy.tenants.set_status(tenant_id, body.status.value)
        return TenantOut.model_validate(tenant)

    @router.post("/admin/tenants/{tenant_id:uuid}/suspend", dependencies=admin)
    async def suspend(tenant_id: uuid.UUID, tenancy: TenancyDep) -> TenantOut:
        return TenantOut.model_validate(await tenancy.tenants.suspend(tenant_id))

    @router.post("/admin/tenants/{tenant_id:uuid}/reactivate", dependencies=admin)
    async def reactivate(tenant_id: uuid.UUID, tenancy: TenancyDep) -> TenantOut:
        return TenantOut.model_validate(await tenancy.tenants.reactivate(tenant_id))

    @router.post(
        "/admin/tenants/{tenant_id:uuid}/members",
        status_code=status.HTTP_201_CREATED,
        dependencies=admin,
    )
    async def add_member(tenant_id: uuid.UUID, body: MemberIn, tenancy: TenancyDep) -> MemberOut:
        row = await tenancy.memberships.add(tenant_id, body.user_id, body.role)
        return _member_out(row, await _user(tenancy, body.user_id))

    return router


async def _user(tenancy: Tenancy, user_id: uuid.UUID) -> Any:
    from pgstack.identity import UserRepository

    async with tenancy.db.transaction(readonly=True) as session:
        return await UserRepository(session).get_or_none(user_id)
