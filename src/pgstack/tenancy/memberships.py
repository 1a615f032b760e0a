"""Memberships: who belongs to which tenant with which role; invitations; the last owner.

A user may belong to many tenants, with one role in each. Only accepted memberships count.
A change that could leave a tenant without an owner (a demotion, a removal, leaving) first
locks the tenant's row, so such changes to one tenant run one at a time: two owners
demoting each other at once cannot both succeed.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Select, delete, func, select, update

from pgstack.db.database import Database
from pgstack.db.metrics import sqlstate_of
from pgstack.db.session import Session
from pgstack.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from pgstack.identity import User, known_providers
from pgstack.identity._common import digest, utcnow
from pgstack.identity.text import check_text
from pgstack.identity.users import check_new_email
from pgstack.tenancy.models import (
    USABLE,
    ExternalIdentity,
    Tenant,
    TenantApiKey,
    TenantMembership,
    TenantRole,
)
from pgstack.tenancy.tenants import check_word, lock_tenant

logger = logging.getLogger("pgstack.tenancy")

OWNER = TenantRole.OWNER.value
_INVALID_INVITATION = (
    "The invitation is not valid: it was already used, has expired, was withdrawn, or is "
    "for another e-mail address. Ask for a new one."
)
#: A tenant nobody may see is answered like one that does not exist.
_NOT_YOURS = "No tenant {} among yours: check the id, or ask its owner for an invitation."


@dataclass(frozen=True)
class Member:
    """A user's accepted membership in a tenant, with the tenant."""

    tenant: Tenant
    membership: TenantMembership

    @property
    def role(self) -> str:
        """The user's role in this tenant."""
        return self.membership.role


@dataclass(frozen=True)
class IssuedInvitation:
    """A new invitation and its token, to deliver to the invited address (shown once)."""

    membership: TenantMembership
    token: str

    def __repr__(self) -> str:
        return f"IssuedInvitation(tenant={self.membership.tenant_id}, token='***')"


def check_role(role: str) -> str:
    """A role name: owner, admin, member, viewer, or one of the application's own."""
    return check_word(role, "role")


def _owners(tenant_id: uuid.UUID) -> Select[int]:
    return select(func.count()).where(
        TenantMembership.tenant_id == tenant_id,
        TenantMembership.role == OWNER,
        TenantMembership.accepted_at.is_not(None),
    )


class Memberships:
    """Add, invite, accept, change and remove members; resolve a caller's tenant."""

    def __init__(self, db: Database, *, invitation_ttl: timedelta = timedelta(days=7)) -> None:
        self.db = db
        self.invitation_ttl = invitation_ttl

    def __repr__(self) -> str:
        return f"Memberships({self.db!r})"

    # -- reading -----------------------------------------------------------------------------

    async def resolve(
        self,
        user_id: uuid.UUID,
        tenant_id: uuid.UUID | None,
        *,
        api_key_id: uuid.UUID | None = None,
    ) -> Member:
        """The tenant a caller acts for and their role in it, checked against the database.

        A key bound to a tenant acts for that tenant only: `tenant_id` may be None (the
        bound one is used) or must name it. Otherwise `tenant_id` must name a tenant the
        user is an accepted member of; any other is NotFoundError, whether it exists or
        not. A suspended or cancelled tenant is PermissionDeniedError.
        """
        async with self.db.transaction(readonly=True) as session:
            if api_key_id is not None:
                bound = await session.scalar(
                    select(TenantApiKey.tenant_id).where(TenantApiKey.api_key_id == api_key_id)
                )
                if bound is not None:
                    if tenant_id is not None and tenant_id != bound:
                        raise PermissionDeniedError(
                            "This API key acts for one tenant only, not the one named; use a "
                            "key of that tenant."
                        )
                    tenant_id = bound
            if tenant_id is None:
                raise InvalidInputError(
                    "Name the tenant: in the path, or in the X-Tenant-ID header."
                )
            row = (
                await session.execute(
                    select(Tenant, TenantMembership)
                    .join(TenantMembership, TenantMembership.tenant_id == Tenant.id)
                    .where(
                        Tenant.id == tenant_id,
                        TenantMembership.user_id == user_id,
                        TenantMembership.accepted_at.is_not(None),
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError(_NOT_YOURS.format(tenant_id))
        tenant, membership = row
        if tenant.status not in USABLE:
            raise PermissionDeniedError(
                f"The tenant is {tenant.status}; ask its owner or support to reactivate it."
            )
        return Member(tenant, membership)

    async def for_user(self, user_id: uuid.UUID) -> list[Member]:
        """Every tenant the user is an accepted member of, with their role, by tenant name."""
        async with self.db.transaction(readonly=True) as session:
            rows = await session.execute(
                select(Tenant, TenantMembership)
                .join(TenantMembership, TenantMembership.tenant_id == Tenant.id)
                .where(
                    TenantMembership.user_id == user_id,
                    TenantMembership.accepted_at.is_not(None),
                )
                .order_by(Tenant.name, Tenant.id)
            )
            return [Member(t, m) for t, m in rows]

    async def list(
        self, tenant_id: uuid.UUID, *, include_invitations: bool = False
    ) -> list[tuple[TenantMembership, User | None]]:
        """The tenant's members (and, if asked, open invitations) with their users."""
        async with self.db.transaction(readonly=True) as session:
            statement = (
                select(TenantMembership, User)
                .outerjoin(User, User.id == TenantMembership.user_id)
                .where(TenantMembership.tenant_id == tenant_id)
                .order_by(TenantMembership.created_at, TenantMembership.id)
            )
            if not include_invitations:
                statement = statement.where(TenantMembership.accepted_at.is_not(None))
            return [(m, u) for m, u in await session.execute(statement)]

    async def role_of(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
        """The user's role in the tenant, or None if they are not an accepted member."""
        async with self.db.transaction(readonly=True) as session:
            return await session.scalar(
                select(TenantMembership.role).where(
                    TenantMembership.tenant_id == tenant_id,
                    TenantMembership.user_id == user_id,
                    TenantMembership.accepted_at.is_not(None),
                )
            )

    # -- joining -----------------------------------------------------------------------------

    async def add(self, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str) -> TenantMembership:
        """Make a user a member at once (trusted: operators, sign-up flows); 409 if already one."""
        check_role(role)
        async with self.db.transaction() as session:
            await lock_tenant(session, tenant_id)
            row = TenantMembership(
                tenant_id=tenant_id, user_id=user_id, role=role, accepted_at=utcnow()
            )
            session.add(row)
            await _flush(session, "The user is already a member of this tenant.")
        logger.info("user %s added to tenant %s as %s", user_id, tenant_id, role)
        return row

    async def invite(
        self,
        tenant_id: uuid.UUID,
        email: str,
        role: str,
        *,
        invited_by: uuid.UUID | None = None,
    ) -> IssuedInvitation:
        """An invitation for `email` to join with `role`; its token is shown once, stored hashed.

        Whoever signs in with that address accepts it with the token. A new invitation to
        the same address replaces an open one.
        """
        check_role(role)
        address = check_new_email(email)
        token = "pgsi_" + secrets.token_urlsafe(32)
        async with self.db.transaction() as session:
            await lock_tenant(session, tenant_id)
            member = await session.scalar(
                select(TenantMembership.id)
                .join(User, User.id == TenantMembership.user_id)
                .where(TenantMembership.tenant_id == tenant_id, User.email == address)
            )
            if member is not None:
                raise ConflictError(f"{address} is already a member of this tenant.")
            await session.execute(
                delete(TenantMembership).where(
                    TenantMembership.tenant_id == tenant_id,
                    TenantMembership.invited_email == address,
                    TenantMembership.accepted_at.is_(None),
                )
            )
            row = TenantMembership(
                tenant_id=tenant_id,
                role=role,
                invited_email=address,
                invite_token_hash=digest(token),
                invite_expires_at=utcnow() + self.invitation_ttl,
                invited_by=invited_by,
            )
            session.add(row)
            await session.flush()
        logger.info("invitation to tenant %s issued as %s", tenant_id, role)
        return IssuedInvitation(row, token)

    async def accept(self, token: str, user_id: uuid.UUID) -> TenantMembership:
        """Accept an invitation as the user whose e-mail address it was sent to.

        One UPDATE takes the token only if it is open, unexpired and for this user's
        address, so a token used twice at once, or by someone else, is refused.
        """
        check_text(token, "invitation token")
        async with self.db.transaction() as session:
            email = select(User.email).where(User.id == user_id).scalar_subquery()
            try:
                row = await session.scalar(
                    update(TenantMembership)
                    .where(
                        TenantMembership.invite_token_hash == digest(token),
                        TenantMembership.accepted_at.is_(None),
                        TenantMembership.invite_expires_at > func.now(),
                        TenantMembership.invited_email == email,
                    )
                    .values(
                        user_id=user_id,
                        accepted_at=func.now(),
                        invite_token_hash=None,
                    )
                    .returning(TenantMembership)
                    .execution_options(synchronize_session=False)
                )
            except Exception as exc:
                if sqlstate_of(exc) == "23505":
                    raise ConflictError("You are already a member of this tenant.") from exc
                raise
            if row is None:
                raise AuthenticationError(_INVALID_INVITATION)
        logger.info("user %s joined tenant %s as %s", user_id, row.tenant_id, row.role)
        return row

    async def withdraw(self, tenant_id: uuid.UUID, membership_id: uuid.UUID) -> None:
        """Withdraw an open invitation of this tenant (NotFoundError if there is none)."""
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(TenantMembership).where(
                    TenantMembership.id == membership_id,
                    TenantMembership.tenant_id == tenant_id,
                    TenantMembership.accepted_at.is_(None),
                )
            )
            if not getattr(result, "rowcount", 0):
                raise NotFoundError(f"No open invitation {membership_id} in this tenant.")

    # -- changing ----------------------------------------------------------------------------

    async def change_role(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, role: str, *, owners: bool = True
    ) -> TenantMembership:
        """Give a member another role; taking owner from the last owner is a ConflictError.

        With `owners=False` (a caller who is not an owner), granting the owner role or
        changing an owner's is a PermissionDeniedError, decided under the tenant's lock.
        """
        check_role(role)
        async with self.db.transaction() as session:
            row = await self._locked_member(session, tenant_id, user_id)
            if not owners:
                _not_owners(row.role, role)
            if row.role == OWNER and role != OWNER:
                await _keep_an_owner(session, tenant_id)
            row.role = role
            await session.flush()
        logger.info("user %s is now %s in tenant %s", user_id, role, tenant_id)
        return row

    async def remove(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, *, owners: bool = True
    ) -> None:
        """Remove a member (or let them leave); the last owner cannot go (ConflictError).

        With `owners=False`, removing an owner is a PermissionDeniedError (under the lock).
        """
        async with self.db.transaction() as session:
            row = await self._locked_member(session, tenant_id, user_id)
            if not owners:
                _not_owners(row.role)
            if row.role == OWNER:
                await _keep_an_owner(session, tenant_id)
            # A key bound to this tenant stays bound: it stops working here with the
            # membership, and never starts acting for another tenant of its user.
            await session.delete(row)
        logger.info("user %s left tenant %s", user_id, tenant_id)

    async def _locked_member(
        self, session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID
    ) -> TenantMembership:
        await lock_tenant(session, tenant_id)
        row = await session.scalar(
            select(TenantMembership).where(
                TenantMembership.tenant_id == tenant_id,
                TenantMembership.user_id == user_id,
                TenantMembership.accepted_at.is_not(None),
            )
        )
        if row is None:
            raise NotFoundError(f"User {user_id} is not a member of this tenant.")
        return row

    # -- API keys and external identities ----------------------------------------------------

    async def bind_api_key(self, api_key_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
        """Bind an API key to a tenant its user belongs to: it then acts for that tenant only.

        A key that is revoked (now, or from a later time after a rotation) or expired can no
        longer act, so binding it is a ConflictError; a key whose user is not an accepted
        member of the tenant is a NotFoundError.
        """
        from pgstack.identity import ApiKey

        async with self.db.transaction() as session:
            # FOR SHARE: a revocation running meanwhile waits for the binding, or it for it.
            key = (
                await session.execute(
                    select(ApiKey.user_id, ApiKey.revoked_at, ApiKey.expires_at, func.now())
                    .where(ApiKey.id == api_key_id)
                    .with_for_update(read=True)
                )
            ).first()
            if key is None:
                raise NotFoundError(f"No API key with id {api_key_id}.")
            key_user, revoked_at, expires_at, now = key
            if revoked_at is not None:
                since = (
                    ""
                    if revoked_at <= now
                    else f" from {revoked_at:%Y-%m-%d %H:%M} UTC (it was rotated)"
                )
                raise ConflictError(
                    f"API key {api_key_id} is revoked{since}: a revoked key cannot be bound to "
                    "a tenant. Bind the key that replaced it, or create a new one."
                )
            if expires_at is not None and expires_at <= now:
                raise ConflictError(
                    f"API key {api_key_id} expired at {expires_at:%Y-%m-%d %H:%M} UTC: an "
                    "expired key cannot be bound to a tenant. Create a new one and bind that."
                )
            role = await session.scalar(
                select(TenantMembership.role).where(
                    TenantMembership.tenant_id == tenant_id,
                    TenantMembership.user_id == key_user,
                    TenantMembership.accepted_at.is_not(None),
                )
            )
            if role is None:
                raise NotFoundError(
                    f"The user of API key {api_key_id} is not a member of tenant {tenant_id}: "
                    "add them to the tenant first (memberships.add, or an invitation they "
                    "accept), then bind the key."
                )
            session.add(TenantApiKey(api_key_id=api_key_id, tenant_id=tenant_id))
            await _flush(session, "The API key is already bound to a tenant.")

    async def link_identity(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, provider: str, provider_user_id: str
    ) -> ExternalIdentity:
        """Record the user's id at a per-workspace provider (a Slack user id) in this tenant."""
        if provider not in known_providers():
            raise InvalidInputError(
                f"Unknown provider {provider[:60]!r}; register it first (register_provider)."
            )
        check_text(provider_user_id, "provider user id")
        if not provider_user_id.strip() or len(provider_user_id) > 200:
            raise InvalidInputError("The provider user id is 1-200 characters.")
        async with self.db.transaction() as session:
            row = ExternalIdentity(
                tenant_id=tenant_id,
                user_id=user_id,
                provider=provider,
                provider_user_id=provider_user_id,
            )
            session.add(row)
            await _flush(
                session,
                f"That {provider} id is already linked in this tenant, or the user already "
                f"has a {provider} id here.",
            )
        return row

    async def find_by_identity(
        self, tenant_id: uuid.UUID, provider: str, provider_user_id: str
    ) -> User | None:
        """The live user linked to this provider id in this tenant, or None."""
        async with self.db.transaction(readonly=True) as session:
            return await session.scalar(
                select(User)
                .join(ExternalIdentity, ExternalIdentity.user_id == User.id)
                .where(
                    ExternalIdentity.tenant_id == tenant_id,
                    ExternalIdentity.provider == provider,
                    ExternalIdentity.provider_user_id == provider_user_id,
                    User.deleted_at.is_(None),
                )
            )


def _not_owners(*roles: str) -> None:
    # Checked on the locked row: a role read before the lock may have changed since.
    if OWNER in roles:
        raise PermissionDeniedError("Only an owner of the tenant can grant or take the owner role.")


async def _keep_an_owner(session: Session, tenant_id: uuid.UUID) -> None:
    # Called with the tenant's row locked (lock_tenant), so the count cannot change under us.
    if ((await session.scalar(_owners(tenant_id))) or 0) <= 1:
        raise ConflictError(
            "This would leave the tenant without an owner; make another member owner first."
        )


async def _flush(session: Session, conflict: str) -> None:
    try:
        await session.flush()
    except Exception as exc:
        code = sqlstate_of(exc)
        if code == "23505":
            raise ConflictError(conflict) from exc
        if code == "23503":
            raise NotFoundError(
                "The tenant, user or key named does not exist; check the ids."
            ) from exc
        raise
