"""The service's own table: the agents of a workspace, tenant-scoped and audited."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.orm import JSONB, Audited, Base, TenantScoped, Timestamped, UUIDPrimaryKey, Versioned


class Agent(UUIDPrimaryKey, TenantScoped, Timestamped, Audited, Versioned, Base):
    """An agent a workspace runs: which model, its instructions, the tools it may call.

    Row-level security holds each workspace to its own agents, and database triggers write an
    audit entry for every insert, update and delete (see the migration).
    """

    __tablename__ = "agents"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        UniqueConstraint("tenant_id", "name"),
        CheckConstraint("name ~ '^[a-z][a-z0-9-]{0,62}$'", name="name"),
    )

    name: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    instructions: Mapped[str] = mapped_column(Text, default="", server_default="")
    tools: Mapped[list[Any]] = mapped_column(JSONB, default=list, server_default="[]")
    enabled: Mapped[bool] = mapped_column(default=True, server_default="true")
