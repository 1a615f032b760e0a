"""Admin routes for the token vault: list with expiry status, refresh history, delete.

Token values never leave the vault through these routes. Mount them behind your own
authorization, which is required:

    app = create_app(routers=[tokens_router(dependencies=[Depends(require_roles("admin"))])])
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, params
from pydantic import BaseModel

from pgstack.errors import ConfigurationError, NotFoundError
from pgstack.tokens import DEFAULT_BUFFER, TokenStatus, TokenVault
from pgstack.web.deps import DatabaseDep


class TokenOut(BaseModel):
    """A stored token as the admin API shows it: expiry and health, no secrets."""

    provider: str
    account: str
    tenant_id: uuid.UUID | None
    token_type: str
    scopes: list[str]
    status: TokenStatus
    expires_at: datetime | None
    expires_in: int | None
    refresh_failures: int
    last_error: str | None
    next_refresh_not_before: datetime | None
    last_refreshed_at: datetime | None
    updated_at: datetime


class RefreshAttemptOut(BaseModel):
    """One audited refresh attempt."""

    refreshed_at: datetime
    success: bool
    previous_expires_at: datetime | None
    new_expires_at: datetime | None
    error_message: str | None
    duration_ms: int


def tokens_router(
    *,
    dependencies: Sequence[params.Depends],
    prefix: str = "/admin/tokens",
    buffer: timedelta = DEFAULT_BUFFER,
) -> APIRouter:
    """The token vault's admin routes, every one behind `dependencies` (at least one).

    `buffer` is the window before expiry that a token's status calls `expiring`.
    """
    if not dependencies:
        raise ConfigurationError(
            "tokens_router() needs at least one authorization dependency, e.g. "
            "dependencies=[Depends(require_roles('admin'))]: these routes manage credentials."
        )
    router = APIRouter(prefix=prefix, tags=["tokens"], dependencies=list(dependencies))

    @router.get("", response_model=list[TokenOut])
    async def list_tokens(
        db: DatabaseDep,
        provider: Annotated[str | None, Query(description="Only this provider.")] = None,
    ) -> list[dict[str, Any]]:
        """Stored tokens with their expiry status, by provider and account."""
        tokens = await TokenVault(db).list_tokens(provider)
        return [
            {
                "provider": t.provider,
                "account": t.account,
                "tenant_id": t.tenant_id,
                "token_type": t.token_type,
                "scopes": list(t.scopes),
                "status": t.status(buffer),
                "expires_at": t.expires_at,
                "expires_in": t.expires_in(),
                "refresh_failures": t.refresh_failures,
                "last_error": t.last_error,
                "next_refresh_not_before": t.next_refresh_not_before,
                "last_refreshed_at": t.last_refreshed_at,
                "updated_at": t.updated_at,
            }
            for t in tokens
        ]

    @router.get("/{provider}/{account}/history", response_model=list[RefreshAttemptOut])
    async def token_history(
        db: DatabaseDep,
        provider: str,
        account: str,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Refresh attempts of one token, newest first."""
        attempts = await TokenVault(db).history(provider, account, limit=limit)
        return [
            {
                "refreshed_at": a.refreshed_at,
                "success": a.success,
                "previous_expires_at": a.previous_expires_at,
                "new_expires_at": a.new_expires_at,
                "error_message": a.error_message,
                "duration_ms": a.duration_ms,
            }
            for a in attempts
        ]

    @router.delete("/{provider}/{account}", status_code=204)
    async def delete_token(db: DatabaseDep, provider: str, account: str) -> Response:
        """Delete one token (its history stays); 404 when there is none."""
        if not await TokenVault(db).delete(provider, account):
            raise NotFoundError(
                f"No token is stored for provider {provider!r}, account {account!r}."
            )
        return Response(status_code=204)

    return router
