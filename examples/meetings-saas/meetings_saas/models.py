"""The workspace-scoped tables: CRM connections, meetings, account mappings.

Workspaces, their users and roles are pgstack's tenants and memberships; CRM tokens live in
pgstack's token vault. Every table here is `TenantScoped`: the repository filters by the
workspace in context, and the migration puts row-level security and audit triggers on it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, MetaData, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    ModelMixin,
    TenantScoped,
    Timestamped,
    UUIDPrimaryKey,
)

CONNECTION_STATUSES = ("connected", "error", "revoked")
MEETING_STATUSES = ("pending", "processing", "completed", "failed")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class CrmConnection(UUIDPrimaryKey, TenantScoped, Timestamped, Audited, Base):
    """A workspace's link to a CRM account; its OAuth tokens are in the vault, not here."""

    __tablename__ = "crm_connections"
    __table_args__ = (
        UniqueConstraint("tenant_id", "provider", "account"),
        CheckConstraint(_one_of("status", CONNECTION_STATUSES), name="status"),
        # At most one default connection per workspace, enforced by the database.
        Index(
            "uq_crm_connections_one_default",
            "tenant_id",
            unique=True,
            postgresql_where=text("is_default"),
        ),
    )

    provider: Mapped[str] = mapped_column(Text)
    account: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="connected", server_default="connected")
    is_default: Mapped[bool] = mapped_column(default=False, server_default="false")
    last_sync_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class Meeting(UUIDPrimaryKey, TenantScoped, Timestamped, Audited, Base):
    """A recorded meeting to process: pending -> processing -> completed / failed (retried)."""

    __tablename__ = "meetings"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id"),
        CheckConstraint(_one_of("status", MEETING_STATUSES), name="status"),
        CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts"),
        Index("ix_meetings_tenant_id_status_created_at", "tenant_id", "status", "created_at"),
    )

    external_id: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(default=3, server_default="3")
    last_error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    summary: Mapped[str | None] = mapped_column(Text)


class AccountMapping(UUIDPrimaryKey, TenantScoped, Timestamped, Audited, Base):
    """An e-mail domain mapped to a CRM account, with a confidence and how often it was used."""

    __tablename__ = "account_mappings"
    __table_args__ = (
        UniqueConstraint("tenant_id", "domain"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence"),
        CheckConstraint("usage_count >= 0", name="usage_count"),
    )

    domain: Mapped[str] = mapped_column(Text)
    crm_account_id: Mapped[str] = mapped_column(Text)
    account_name: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(default=1.0, server_default="1")
    usage_count: Mapped[int] = mapped_column(default=0, server_default="0")
    last_used_at: Mapped[datetime | None]
