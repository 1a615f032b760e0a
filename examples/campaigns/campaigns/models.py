"""Campaigns and members: audit fields, soft delete and an optimistic lock from pgstack's mixins."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, MetaData, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    Email,
    ModelMixin,
    SoftDelete,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
)

STATUSES = ("draft", "running", "completed", "cancelled")


class Base(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Campaign(UUIDPrimaryKey, Timestamped, Audited, SoftDelete, Versioned, Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint("status IN ('draft', 'running', 'completed', 'cancelled')", name="status"),
        CheckConstraint("budget_cents >= 0", name="budget"),
    )

    name: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(Text, default="draft", server_default="draft")
    budget_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    launched_at: Mapped[datetime | None]


class Member(UUIDPrimaryKey, Timestamped, Audited, Base):
    __tablename__ = "campaign_members"
    __table_args__ = (UniqueConstraint("campaign_id", "email"),)

    campaign_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(Email())
    name: Mapped[str | None] = mapped_column(Text)
    subscribed: Mapped[bool] = mapped_column(default=True, server_default="true")
