"""The token vault's tables: `oauth_tokens` and `token_refresh_audit`.

The token columns hold `pgstack.crypto` ciphertext that the vault makes and reads. They are
plain `text` rather than `EncryptedText` because a column type sees only its table and
column, while these values are also bound to their row (provider and account) as associated
data: a ciphertext copied into another row fails to decrypt instead of handing one account's
token to another. Marked secret, they never appear in reprs or `to_dict()`; marked
`encrypted_by_row`, key rotation (`pgstack.orm.rotation`) re-encrypts them with the rest.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.orm import Base, Timestamped, UUIDPrimaryKey, Versioned
from pgstack.orm.rotation import ROW_BOUND
from pgstack.tenancy import models as _tenants  # noqa: F401 - the table tenant_id refers to

# Encrypted by the vault with (provider, account) in the associated data; see the vault.
_ROW_BOUND_SECRET = {"secret": True, ROW_BOUND: ("provider", "account")}


class OAuthToken(UUIDPrimaryKey, Timestamped, Versioned, Base):
    """One provider's tokens for one account; the token values are ciphertext (see the vault)."""

    __tablename__ = "oauth_tokens"
    __table_args__ = (
        # One token per provider and account in each tenant, and once without a tenant.
        UniqueConstraint("tenant_id", "provider", "account", postgresql_nulls_not_distinct=True),
        # "Needing refresh" scans by expiry.
        Index("ix_oauth_tokens_expires_at", "expires_at"),
    )

    provider: Mapped[str] = mapped_column(Text)
    account: Mapped[str] = mapped_column(Text)
    # The workspace the connection belongs to; NULL for a token of no tenant. Row-level
    # security shows a tenant's rows only to that tenant, and those without one only when
    # no tenant is set (see pgstack_0005_tenant_rls).
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    access_token: Mapped[str] = mapped_column(Text, info=_ROW_BOUND_SECRET)
    refresh_token: Mapped[str | None] = mapped_column(Text, info=_ROW_BOUND_SECRET)
    token_type: Mapped[str] = mapped_column(Text, server_default="Bearer")
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    expires_at: Mapped[datetime | None]
    refresh_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    next_refresh_not_before: Mapped[datetime | None]
    last_refreshed_at: Mapped[datetime | None]


class TokenRefreshAudit(Base):
    """One refresh attempt: when, expiry before and after, outcome, error, duration."""

    __tablename__ = "token_refresh_audit"
    __table_args__ = (
        Index(
            "ix_token_refresh_audit_tenant_id_provider_account",
            "tenant_id",
            "provider",
            "account",
            "refreshed_at",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    # History outlives a deleted token: it is looked up by provider and account.
    token_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("oauth_tokens.id", ondelete="SET NULL"), index=True
    )
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    provider: Mapped[str] = mapped_column(Text)
    account: Mapped[str] = mapped_column(Text)
    refreshed_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
    previous_expires_at: Mapped[datetime | None]
    new_expires_at: Mapped[datetime | None]
    success: Mapped[bool] = mapped_column(Boolean)
    error_message: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
