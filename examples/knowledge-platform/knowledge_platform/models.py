"""Documents: audit fields and an optimistic lock from pgstack's mixins, a full-text vector."""

from __future__ import annotations

from sqlalchemy import Computed, Index, MetaData, Text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    ModelMixin,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
)

#: PostgreSQL computes the vector on every write, so no writer (bulk import included) forgets it.
VECTOR_SQL = (
    "setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', body), 'B')"
)


class Base(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Document(UUIDPrimaryKey, Timestamped, Audited, Versioned, Base):
    __tablename__ = "documents"
    __table_args__ = (Index("ix_documents_search_vector", "search_vector", postgresql_using="gin"),)

    slug: Mapped[str] = mapped_column(Text, unique=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="", server_default="")
    search_vector: Mapped[str] = mapped_column(TSVECTOR, Computed(VECTOR_SQL, persisted=True))
