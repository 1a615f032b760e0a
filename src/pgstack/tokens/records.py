"""The vault's records: stored tokens with and without secrets, refresh attempts, columns."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Table

from pgstack.db.tenant import tenant_value
from pgstack.tokens.models import OAuthToken, TokenRefreshAudit

Refresher = Callable[[str], Awaitable[Mapping[str, Any]]]
"""The caller's call to the provider: takes the refresh token, returns the token response.

The response is what the provider's client returns, as a mapping: `access_token` (required),
and any of `refresh_token` (a rotated one; the old one is kept when absent), `expires_in`
(seconds) and/or `expires_at` (a datetime, epoch seconds or ISO-8601 text), `token_type`,
`scope` (space-separated) or `scopes` (a list). Authlib's, requests-oauthlib's and
httpx-oauth's token objects are such mappings (see `pgstack.tokens.shapes`).
"""

TokenStatus = Literal["valid", "expiring", "expired", "no-expiry"]
DEFAULT_BUFFER = timedelta(minutes=5)
TOKENS: Table = OAuthToken.__table__  # type: ignore[assignment]
AUDIT: Table = TokenRefreshAudit.__table__  # type: ignore[assignment]
INFO_COLUMNS = (
    "id",
    "provider",
    "account",
    "tenant_id",
    "token_type",
    "scopes",
    "expires_at",
    "refresh_failures",
    "last_error",
    "next_refresh_not_before",
    "last_refreshed_at",
    "created_at",
    "updated_at",
    "version",
)
SECRET_COLUMNS = ("access_token", "refresh_token")
INFO = [TOKENS.c[name] for name in INFO_COLUMNS]
ALL_COLUMNS = [*INFO, TOKENS.c.access_token, TOKENS.c.refresh_token]
# The hot path: one read through the unique (tenant_id, provider, account) index on the read
# lane's own connections, outside any transaction (no BEGIN, nothing to roll back). Row-level
# security limits it to the tenant in context; the tenant condition here lets it use the index.
_READ = (
    f"SELECT {', '.join((*INFO_COLUMNS, *SECRET_COLUMNS))} FROM oauth_tokens "
    "WHERE provider = $1 AND account = $2 AND "
)
READ_SQL = _READ + "tenant_id IS NULL"
READ_TENANT_SQL = _READ + "tenant_id = $3::uuid"


def tenant_condition(table: Table) -> Any:
    """`table.tenant_id` is the tenant in context, or NULL with none (as the policy has it)."""
    tenant = tenant_value()
    column = table.c.tenant_id
    return column.is_(None) if tenant is None else column == uuid.UUID(tenant)


def info_values(row: Any) -> dict[str, Any]:
    """The non-secret fields of a token row, as TokenInfo takes them."""
    values = {name: row[name] for name in INFO_COLUMNS}
    values["scopes"] = tuple(values["scopes"] or ())
    return values


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token without its secrets: what lists, admin pages and schedulers need."""

    id: uuid.UUID
    provider: str
    account: str
    tenant_id: uuid.UUID | None
    token_type: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    refresh_failures: int
    last_error: str | None
    next_refresh_not_before: datetime | None
    last_refreshed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int

    def expires_in(self, now: datetime | None = None) -> int | None:
        """Whole seconds until expiry, never negative; None when the token does not expire."""
        if self.expires_at is None:
            return None
        now = now or datetime.now(UTC)
        return max(0, int((self.expires_at - now).total_seconds()))

    def status(
        self, buffer: timedelta = DEFAULT_BUFFER, now: datetime | None = None
    ) -> TokenStatus:
        """`expired`, `expiring` (inside the buffer), `valid`, or `no-expiry`."""
        if self.expires_at is None:
            return "no-expiry"
        now = now or datetime.now(UTC)
        if self.expires_at <= now:
            return "expired"
        return "expiring" if self.expires_at <= now + buffer else "valid"


@dataclass(frozen=True, slots=True, repr=False)
class ProviderToken(TokenInfo):
    """A stored token with its secrets decrypted; its repr shows them as `***`."""

    access_token: str = field(default="")
    refresh_token: str | None = None

    def __repr__(self) -> str:
        expires = self.expires_at.isoformat() if self.expires_at else None
        return (
            f"ProviderToken(provider={self.provider!r}, account={self.account!r}, "
            f"token_type={self.token_type!r}, expires_at={expires!r}, access_token='***', "
            f"refresh_token={'***' if self.refresh_token is not None else None!r})"
        )


@dataclass(frozen=True, slots=True)
class RefreshAttempt:
    """One audited refresh attempt (never a token value)."""

    id: int
    token_id: uuid.UUID | None
    tenant_id: uuid.UUID | None
    provider: str
    account: str
    refreshed_at: datetime
    previous_expires_at: datetime | None
    new_expires_at: datetime | None
    success: bool
    error_message: str | None
    duration_ms: int


@dataclass(frozen=True, slots=True)
class RefreshSummary:
    """What one `refresh_due` run did."""

    refreshed: int
    failed: int
