"""Tenants (placeholder: the table the tenancy migration creates, with its id and name)."""

from __future__ import annotations

import uuid

from sqlalchemy import Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.orm import Base


class Tenant(Base):
    """A tenant (workspace, team): what tenant-scoped rows belong to."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(as_uuid=True), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
