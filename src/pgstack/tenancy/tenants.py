"""Tenants: create, read, list, change plan and settings, move through subscription statuses."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pgstack.db.database import Database
from pgstack.db.metrics import sqlstate_of
from pgstack.db.session import Session, flush_pending
from pgstack.errors import ConflictError, InvalidInputError, NotFoundError
from pgstack.identity.text import check_text
from pgstack.repository import Eq, Filter, Page, Repository
from pgstack.tenancy.models import (
    TRANSITIONS,
    Tenant,
    TenantMembership,
    TenantRole,
    TenantStatus,
)

logger = logging.getLogger("pgstack.tenancy")

_WORD = re.compile(r"^[a-z][a-z0-9_:.-]{0,39}$")


class TenantRepository(Repository[Tenant]):
    """Tenants through the generic repository (filters and sorts on declared columns only)."""

    model = Tenant
    # Listings of a big directory estimate their total instead of counting every row.
    page_total = "auto"
    filterable = (
        "id",
        "external_id",
        "name",
        "domain",
        "plan",
        "status",
        "trial_ends_at",
        "created_at",
    )
    sortable = ("name", "external_id", "plan", "status", "created_at", "updated_at")


def check_word(value: str, what: str) -> str:
    """A plan or role name: 1-40 lower-case letters, digits, `_ : . -`, starting with a letter."""
    if not isinstance(value, str) or _WORD.fullmatch(value) is None:
        raise InvalidInputError(
            f"{str(value)[:60]!r} is not a {what}: use 1-40 lower-case letters, digits, "
            "'_', ':', '.' or '-', starting with a letter."
        )
    return value


def _status(value: str) -> TenantStatus:
    try:
        return TenantStatus(value)
    except ValueError:
        names = ", ".join(s.value for s in TenantStatus)
        raise InvalidInputError(f"Unknown status {value[:40]!r}; use one of {names}.") from None


# The longest each text may be (the HTTP API's bounds), and the characters that reorder
# what a reader sees (U+202A-U+202E, U+2066-U+2069: "Trojan Source"), refused in names.
_TEXT_LIMITS = {"external_id": 200, "name": 200, "domain": 200, "locale": 35, "timezone": 64}
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _texts(fields: Mapping[str, Any]) -> None:
    for key, longest in _TEXT_LIMITS.items():
        value = fields.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"{key} must be non-empty text.")
        check_text(value, key)
        if len(value) > longest:
            raise InvalidInputError(f"{key} has {len(value)} characters; at most {longest}.")
        if not _BIDI_CONTROLS.isdisjoint(value):
            raise InvalidInputError(
                f"{key} holds a character that reorders the text around it (U+202A-U+202E or "
                "U+2066-U+2069); remove it."
            )
    if "timezone" in fields and fields["timezone"] is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(fields["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInputError(
                f"{fields['timezone'][:60]!r} is not a time zone; use an IANA name such as "
                "'Europe/Paris' or 'UTC'."
            ) from None
    trial = fields.get("trial_ends_at")
    if trial is not None and (not isinstance(trial, datetime) or trial.tzinfo is None):
        raise InvalidInputError("trial_ends_at must be a timezone-aware datetime.")
    if "settings" in fields and not isinstance(fields["settings"], dict):
        raise InvalidInputError("settings must be a JSON object.")


async def lock_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    """The tenant, locked FOR UPDATE until the transaction ends; NotFoundError if unknown.

    Every change to a tenant's status or owners takes this lock first, so such changes to
    one tenant run one after another and each sees what the one before it committed.
    """
    tenant = await session.scalar(select(Tenant).where(Tenant.id == tenant_id).with_for_update())
    if tenant is None:
        raise NotFoundError(f"No tenant with id {tenant_id}.")
    return tenant


class Tenants:
    """Create, read, list and change tenants; every call is its own transaction.

    `create` may join the caller's transaction instead (`session=`).
    """

    EDITABLE = ("name", "domain", "settings", "locale", "timezone", "trial_ends_at")

    def __init__(self, db: Database) -> None:
        self.db = db

    def __repr__(self) -> str:
        return f"Tenants({self.db!r})"

    async def create(
        self,
        external_id: str,
        name: str,
        *,
        domain: str | None = None,
        plan: str = "free",
        status: str = TenantStatus.ACTIVE.value,
        trial_ends_at: datetime | None = None,
        settings: dict[str, Any] | None = None,
        locale: str = "en",
        timezone: str = "UTC",
        owner_id: uuid.UUID | None = None,
        session: AsyncSession | None = None,
    ) -> Tenant:
        """A new tenant; with `owner_id`, that user becomes its owner in the same transaction.

        `external_id` is the workspace or team id of the outside system (a Slack team id);
        a second tenant with the same one is a ConflictError. With `session`, the tenant
        and its owner's membership are written in that session's transaction, committed or
        rolled back with it (a sign-up that creates the workspace with the application's own
        rows); an error then leaves that transaction to be rolled back, as any failed
        statement does. Without it, the call is a transaction of its own.
        """
        fields: dict[str, Any] = {
            "external_id": external_id,
            "name": name,
            "domain": domain,
            "plan": check_word(plan, "plan"),
            "status": _status(status).value,
            "trial_ends_at": trial_ends_at,
            "settings": dict(settings or {}),
            "locale": locale,
            "timezone": timezone,
        }
        _texts(fields)
        if fields["status"] not in (TenantStatus.ACTIVE, TenantStatus.TRIALING):
            raise InvalidInputError("A new tenant starts as active or trialing.")
        if session is not None:
            # The caller's pending changes first: their errors stay theirs, not the tenant's.
            await flush_pending(session, "tenants.create")
            tenant = await _create(session, fields, owner_id)
            logger.info(
                "tenant %s (%s) created in the caller's transaction", tenant.id, external_id
            )
            return tenant
        async with self.db.transaction() as own:
            tenant = await _create(own, fields, owner_id)
        logger.info("tenant %s (%s) created", tenant.id, tenant.external_id)
        return tenant

    async def get(self, tenant_id: uuid.UUID) -> Tenant:
        """The tenant with this id, or NotFoundError."""
        async with self.db.transaction(readonly=True) as session:
            return await TenantRepository(session).get(tenant_id)

    async def get_by_external_id(self, external_id: str) -> Tenant:
        """The tenant with this external (workspace or team) id, or NotFoundError."""
        async with self.db.transaction(readonly=True) as session:
            tenant = await TenantRepository(session).get_by_or_none(external_id=external_id)
        if tenant is None:
            raise NotFoundError(f"No tenant has the external id {external_id[:200]!r}.")
        return tenant

    async def list(
        self,
        *,
        status: str | None = None,
        plan: str | None = None,
        sort: str | Sequence[str] | None = "name",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[Tenant]:
        """A page of tenants, optionally of one status or plan, with the total count."""
        filters: list[Filter] = []
        if status is not None:
            filters.append(Eq("status", _status(status).value))
        if plan is not None:
            filters.append(Eq("plan", check_word(plan, "plan")))
        async with self.db.transaction(readonly=True) as session:
            return await TenantRepository(session).page(
                *filters, sort=sort, limit=limit, offset=offset
            )

    async def update(self, tenant_id: uuid.UUID, **changes: Any) -> Tenant:
        """Change name, domain, settings (replaced whole), locale, timezone or trial end."""
        unknown = set(changes) - set(self.EDITABLE)
        if unknown:
            raise InvalidInputError(
                f"Cannot change {', '.join(sorted(unknown))} here; change "
                f"{', '.join(self.EDITABLE)}, or use change_plan and set_status."
            )
        if changes.get("name", "") is None:
            raise InvalidInputError("A tenant needs a name.")
        _texts(changes)
        async with self.db.transaction() as session:
            return await TenantRepository(session).update(tenant_id, changes)

    async def change_plan(self, tenant_id: uuid.UUID, plan: str) -> Tenant:
        """Move the tenant to another plan tier (its rate limits follow the plan)."""
        check_word(plan, "plan")
        async with self.db.transaction() as session:
            tenant = await lock_tenant(session, tenant_id)
            tenant.plan = plan
            await session.flush()
        logger.info("tenant %s moved to plan %s", tenant_id, plan)
        return tenant

    async def set_status(self, tenant_id: uuid.UUID, status: str) -> Tenant:
        """Move the subscription to `status`; a move `TRANSITIONS` does not allow is a 409."""
        new = _status(status)
        async with self.db.transaction() as session:
            tenant = await lock_tenant(session, tenant_id)
            old = TenantStatus(tenant.status)
            if new == old:
                return tenant
            if new not in TRANSITIONS[old]:
                allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old]))
                raise ConflictError(
                    f"The tenant is {old.value}; it cannot become {new.value} from there "
                    f"(allowed: {allowed})."
                )
            tenant.status = new.value
            await session.flush()
        logger.info("tenant %s: %s -> %s", tenant_id, old.value, new.value)
        return tenant

    async def suspend(self, tenant_id: uuid.UUID) -> Tenant:
        """Suspend the tenant: its members are refused until it is reactivated."""
        return await self.set_status(tenant_id, TenantStatus.SUSPENDED.value)

    async def reactivate(self, tenant_id: uuid.UUID) -> Tenant:
        """Make a suspended (or cancelled) tenant active again."""
        return await self.set_status(tenant_id, TenantStatus.ACTIVE.value)


async def _create(
    session: AsyncSession, fields: dict[str, Any], owner_id: uuid.UUID | None
) -> Tenant:
    """Insert the tenant, and its owner's membership with `owner_id`, in `session`."""
    try:
        tenant = await TenantRepository(session).create(fields)
    except ConflictError as exc:
        if exc.constraint != "uq_tenants_external_id":
            raise
        raise ConflictError(
            f"A tenant with the external id {fields['external_id'][:200]!r} already exists: "
            "look it up (tenants.get_by_external_id) instead of creating it again.",
            constraint=exc.constraint,
        ) from exc
    if owner_id is not None:
        session.add(
            TenantMembership(
                tenant_id=tenant.id,
                user_id=owner_id,
                role=TenantRole.OWNER.value,
                accepted_at=tenant.created_at,
            )
        )
        try:
            await session.flush()
        except Exception as exc:
            # The tenant is new in this transaction: a missing row it refers to is the user.
            if sqlstate_of(exc) == "23503":
                raise NotFoundError(f"No user with id {owner_id}.") from exc
            raise
    return tenant
