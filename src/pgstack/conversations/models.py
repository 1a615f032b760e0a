"""The conversation tables: `conversation_sessions` and `conversation_messages`.

A message is a row of its own, keyed by its session and a sequence number that the
statement bumping the session's totals hands out (see `service.py`): appends to one session
are ordered by that row's lock, numbered 1, 2, 3 ... without gaps, and the totals on the
session row always equal its messages. Both tables are tenant-scoped under row-level
security (pgstack_0008_conversations).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.identity import models as _users  # noqa: F401 - the table user_id refers to
from pgstack.orm import Base, UUIDPrimaryKey
from pgstack.orm.types import UTCDateTime
from pgstack.tenancy import models as _tenants  # noqa: F401 - the table tenant_id refers to

#: Where a session may go from each status; the closed ones go nowhere.
TRANSITIONS: dict[str, frozenset[str]] = {
    "active": frozenset({"completed", "failed", "cancelled", "expired"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
    "expired": frozenset(),
}
STATUSES = tuple(TRANSITIONS)
ROLES = ("system", "user", "assistant", "tool")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ConversationSession(UUIDPrimaryKey, Base):
    """One conversation of a user with an agent, in a tenant: status, context, totals, expiry."""

    __tablename__ = "conversation_sessions"
    __table_args__ = (
        CheckConstraint(_one_of("status", STATUSES), name="status_valid"),
        CheckConstraint("message_count >= 0 AND token_count >= 0", name="totals_valid"),
        # A user's sessions in a tenant, newest activity first; also the user foreign key's.
        Index(
            "ix_conversation_sessions_user_id_tenant_id_last_activity_at",
            "user_id",
            "tenant_id",
            "last_activity_at",
        ),
        # The sweeper's scan in each tenant; also the tenant foreign key's.
        Index("ix_conversation_sessions_tenant_id_expires_at", "tenant_id", "expires_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    agent_id: Mapped[str] = mapped_column(Text, nullable=False)
    title: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="active")
    context: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    # `metadata` is taken on a declarative class: the attribute is `meta`, the column not.
    meta: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    message_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    token_count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=text("now()")
    )
    last_activity_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=text("now()")
    )
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ConversationMessage(Base):
    """One message of a session, numbered by `seq` (1, 2, 3 ... in append order)."""

    __tablename__ = "conversation_messages"
    __table_args__ = (
        CheckConstraint(_one_of("role", ROLES), name="role_valid"),
        CheckConstraint("seq > 0 AND tokens >= 0", name="seq_tokens_valid"),
    )

    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True),
        ForeignKey("conversation_sessions.id", ondelete="CASCADE"),
        primary_key=True,
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Copied from the session so row-level security can hold each message to its tenant.
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid(as_uuid=True), nullable=False)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    tool_calls: Mapped[Any | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=text("now()")
    )
