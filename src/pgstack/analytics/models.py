"""The query log: `query_logs`, one row per query a user ran, tenant-scoped.

The normalized text and the full-text vector are generated columns: PostgreSQL computes
them from `query_text` on every write (COPY included), so no writer can forget or disagree.
Indexes lead with the tenant and the time, for the time-range reads analytics make.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    Double,
    ForeignKey,
    Identity,
    Index,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import REGCONFIG, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.identity import models as _users  # noqa: F401 - the table user_id refers to
from pgstack.orm import Base
from pgstack.orm.types import UTCDateTime
from pgstack.tenancy import models as _tenants  # noqa: F401 - the table tenant_id refers to

STATUSES = ("success", "error", "timeout", "cancelled")
#: Lower case, each run of white space made one space, then outer spaces trimmed.
NORMALIZED_SQL = r"lower(btrim(regexp_replace(query_text, '\s+', ' ', 'g')))"
#: The text search configuration an entry is logged with when the writer names none.
TEXT_SEARCH_CONFIG = "english"
#: The setting a transaction names its entries' configuration in when it does not give it
#: per row (`QueryAnalytics.log_many`: COPY has no binary form of `regconfig`).
CONFIG_SETTING = "pgstack.text_search_config"
CONFIG_DEFAULT_SQL = (
    f"(COALESCE(NULLIF(current_setting('{CONFIG_SETTING}', true), ''), "
    f"'{TEXT_SEARCH_CONFIG}'))::regconfig"
)
#: Each entry's vector by the entry's own configuration (pgstack_0010).
VECTOR_SQL = "to_tsvector(text_search_config, query_text)"


class QueryLog(Base):
    """One query: who, in which tenant, its text, type, outcome and response time."""

    __tablename__ = "query_logs"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="status_valid"),
        CheckConstraint("response_time_ms >= 0", name="response_time_valid"),
        Index("ix_query_logs_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_query_logs_user_id_created_at", "user_id", "created_at"),
        Index("ix_query_logs_search_vector", "search_vector", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    # A deleted user's queries stay in the figures, without the user.
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL")
    )
    query_text: Mapped[str] = mapped_column(Text, nullable=False)
    normalized_text: Mapped[str] = mapped_column(Text, Computed(NORMALIZED_SQL, persisted=True))
    query_type: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    response_time_ms: Mapped[float] = mapped_column(Double, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=text("now()")
    )
    #: The text search configuration `search_vector` is made with (`english`, `french`, ...).
    text_search_config: Mapped[str] = mapped_column(
        REGCONFIG, nullable=False, server_default=text(CONFIG_DEFAULT_SQL)
    )
    search_vector: Mapped[str] = mapped_column(TSVECTOR, Computed(VECTOR_SQL, persisted=True))
