"""Tenancy tables: tenants, their members, tenant-bound API keys and per-tenant identities.

None of these tables is tenant-scoped: a request reads them to find out which tenant it may
act for, before any tenant is known. Their verbs (tenancy/service.py) always filter by the
caller's user id or by a tenant whose membership was verified first.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text, UniqueConstraint, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.db.tenant import DIRECTORY_MARK
from pgstack.orm import JSONB, Base, Email, Timestamped, UTCDateTime, UUIDPrimaryKey

#: The comment on tables a tenant is resolved from: they are read before any tenant is set,
#: so row-level security on `tenant_id` would hide every row. The verbs filter them by the
#: caller instead, and `db doctor` and the RLS catalog check leave them out (by this mark).
DIRECTORY_COMMENT = (
    f"{DIRECTORY_MARK} read before a tenant is known; the verbs filter rows by the caller"
)


class TenantStatus(enum.StrEnum):
    """Where a tenant's subscription stands; `TRANSITIONS` lists the moves allowed."""

    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"


S = TenantStatus
#: The allowed status changes; anything else is a ConflictError (409).
TRANSITIONS: dict[TenantStatus, frozenset[TenantStatus]] = {
    S.TRIALING: frozenset({S.ACTIVE, S.PAST_DUE, S.CANCELLED, S.SUSPENDED}),
    S.ACTIVE: frozenset({S.PAST_DUE, S.CANCELLED, S.SUSPENDED}),
    S.PAST_DUE: frozenset({S.ACTIVE, S.CANCELLED, S.SUSPENDED}),
    S.SUSPENDED: frozenset({S.ACTIVE, S.CANCELLED}),
    S.CANCELLED: frozenset({S.ACTIVE}),
}
#: Statuses in which members may use the tenant.
USABLE = frozenset({S.TRIALING, S.ACTIVE, S.PAST_DUE})


class TenantRole(enum.StrEnum):
    """The built-in member roles, strongest first; applications may use roles of their own."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class Tenant(UUIDPrimaryKey, Timestamped, Base):
    """A customer workspace: its external id (a Slack team id, ...), plan and subscription."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s.value}'" for s in TenantStatus) + ")", name="status"
        ),
    )

    external_id: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    domain: Mapped[str | None] = mapped_column(Text)
    plan: Mapped[str] = mapped_column(Text, nullable=False, default="free", server_default="free")
    status: Mapped[str] = mapped_column(
        Text, nullable=False, default=S.ACTIVE.value, server_default=S.ACTIVE.value
    )
    trial_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    settings: Mapped[dict[str, Any]] = mapped_column(
        JSONB(), nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    locale: Mapped[str] = mapped_column(Text, nullable=False, default="en", server_default="en")
    timezone: Mapped[str] = mapped_column(Text, nullable=False, default="UTC", server_default="UTC")

    @property
    def is_active(self) -> bool:
        """Whether members may use the tenant (trialing, active or past due)."""
        return self.status in USABLE


class TenantMembership(UUIDPrimaryKey, Timestamped, Base):
    """A user's role in a tenant; until accepted, an invitation to an e-mail address.

    A pending invitation has no user yet, only `invited_email` and the hash of its token;
    accepting it fills `user_id` and `accepted_at`. Only accepted rows grant anything.
    """

    __tablename__ = "tenant_memberships"
    __table_args__ = (
        UniqueConstraint("tenant_id", "user_id"),
        CheckConstraint(
            "(user_id IS NOT NULL AND accepted_at IS NOT NULL) OR "
            "(user_id IS NULL AND accepted_at IS NULL AND invited_email IS NOT NULL)",
            name="member_or_invitation",
        ),
        Index(
            "uq_tenant_memberships_invitation",
            "tenant_id",
            "invited_email",
            unique=True,
            postgresql_where=text("accepted_at IS NULL"),
        ),
        {"comment": DIRECTORY_COMMENT},
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(Text, nullable=False)
    invited_email: Mapped[str | None] = mapped_column(Email())
    invite_token_hash: Mapped[str | None] = mapped_column(Text, unique=True, info={"secret": True})
    invite_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    invited_by: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def is_pending(self) -> bool:
        """Whether this is an invitation not yet accepted."""
        return self.accepted_at is None


class TenantApiKey(Base):
    """Binds an API key to one tenant: the key then acts for that tenant only."""

    __tablename__ = "tenant_api_keys"
    __table_args__ = ({"comment": DIRECTORY_COMMENT},)

    api_key_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )


class ExternalIdentity(UUIDPrimaryKey, Timestamped, Base):
    """A user's id at a provider whose ids are unique per workspace only (a Slack user id)."""

    __tablename__ = "external_identities"
    __table_args__ = (
        UniqueConstraint("tenant_id", "provider", "provider_user_id"),
        UniqueConstraint("tenant_id", "provider", "user_id"),
        {"comment": DIRECTORY_COMMENT},
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    provider: Mapped[str] = mapped_column(Text, nullable=False)
    provider_user_id: Mapped[str] = mapped_column(Text, nullable=False)
