"""The agent's own table: the plaintext tokens of the system it replaces, until imported."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, Identity, MetaData, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.orm import NAMING_CONVENTION, TYPE_ANNOTATION_MAP


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = dict(TYPE_ANNOTATION_MAP)


class LegacyToken(Base):
    """A row of the old agent's `crm_tokens` table: tokens in plaintext, one per portal.

    `import-legacy` moves each into the vault (encrypted) and then blanks its secrets here.
    """

    __tablename__ = "legacy_crm_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    portal_id: Mapped[str] = mapped_column(Text, unique=True)
    access_token: Mapped[str | None] = mapped_column(Text)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
    imported_at: Mapped[datetime | None]
