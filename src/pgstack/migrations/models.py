"""pgstack's own bookkeeping table, created by its first migration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Text, func
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.orm import Base


class SchemaInfo(Base):
    """Facts about the schema that pgstack's migrations record (`pgstack_meta`).

    Revisions write what they changed outside their own tables here, such as an extension
    they installed, so that their downgrade undoes exactly that and nothing it did not do.
    """

    __tablename__ = "pgstack_meta"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
