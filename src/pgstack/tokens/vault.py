"""`TokenVault`: provider OAuth tokens encrypted at rest, refreshed once however many ask.

Every token value is AES-256-GCM ciphertext bound to its table, column and row (provider and
account). This file holds the verbs (store, read, list, delete); `refresh.py` holds the
single-flight refresh and `shapes.py` what a refresher may answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from pgstack.audit import SECURITY, AuditLog
from pgstack.crypto import KeyRing, get_key_ring, row_context
from pgstack.db.database import Database
from pgstack.db.session import translated_errors
from pgstack.db.tenant import entered, maintenance_scopes, tenant_value
from pgstack.errors import EncryptionError, InvalidInputError, NotFoundError, TenantScopeError
from pgstack.orm.mixins import new_uuid7
from pgstack.orm.rotation import encrypted_columns, rotate_keys
from pgstack.tokens import refresh
from pgstack.tokens.records import (
    ALL_COLUMNS,
    AUDIT,
    DEFAULT_BUFFER,
    INFO,
    READ_SQL,
    READ_TENANT_SQL,
    TOKENS,
    ProviderToken,
    RefreshAttempt,
    Refresher,
    RefreshSummary,
    TokenInfo,
    info_values,
    tenant_condition,
)
from pgstack.tokens.shapes import parse_scopes


class TokenVault:
    """Provider OAuth tokens per provider and account: stored encrypted, refreshed once.

        vault = TokenVault(db)
        await vault.save("hubspot", "acme", access, refresh, expires_in=1800)
        token = await vault.get_valid_token("hubspot", "acme", refresh_with_hubspot)

    `buffer` is how long before expiry a token counts as due; `refresh_timeout` (seconds) cuts
    off a refresher that hangs; failed refreshes back off exponentially from `backoff_base` up
    to `backoff_max`. `keys` defaults to the process-wide key ring (PGSTACK_ENCRYPTION_KEYS);
    `clock` (aware UTC now) is for tests. Database failures come out as pgstack errors (an
    outage is DatabaseUnavailableError), like every other pgstack call.
    """

    def __init__(
        self,
        db: Database,
        *,
        buffer: timedelta = DEFAULT_BUFFER,
        refresh_timeout: float = 30.0,
        backoff_base: timedelta = timedelta(seconds=30),
        backoff_max: timedelta = timedelta(hours=1),
        keys: KeyRing | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if refresh_timeout <= 0:
            raise InvalidInputError("refresh_timeout must be a positive number of seconds.")
        self.db = db
        self.buffer = buffer
        self.refresh_timeout = refresh_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._keys = keys
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenVault({self.db!r}, buffer={self.buffer}, timeout={self.refresh_timeout}s)"

    @property
    def keys(self) -> KeyRing:
        """The key ring in use (read on every call, so a reconfigured ring takes effect)."""
        return self._keys if self._keys is not None else get_key_ring()

    def _now(self) -> datetime:
        return self._clock() if self._clock is not None else datetime.now(UTC)

    # -- store and read ----------------------------------------------------------------------

    async def save(
        self,
        provider: str,
        account: str,
        access_token: str,
        refresh_token: str | None = None,
        *,
        expires_in: float | timedelta | None = None,
        expires_at: datetime | None = None,
        scopes: Iterable[str] | str | None = None,
        token_type: str = "Bearer",  # noqa: S107 - the OAuth token type, not a secret
        tenant_id: uuid.UUID | None = None,
        session: AsyncSession | AsyncConnection | None = None,
    ) -> ProviderToken:
        """Store (insert or replace) the tokens of one provider and account in one upsert.

        A `refresh_token` of None keeps the one already stored. Saving clears any refresh
        failures and backoff: it is what a new authorization does. The token belongs to the
        tenant in context (`tenant_context`), or to `tenant_id` when no tenant is set.

        With `session`, the upsert is a statement of that session's transaction, committed or
        rolled back with it; its row-level security is the tenant that transaction began
        with, so call this inside the same `tenant_context`. Until that transaction ends the
        token's row stays locked: a refresh of it waits (`get_valid_token`) or passes it by
        (`refresh_due`, key rotation), and the vault's other verbs, on connections of their
        own, see the token as it was. Without `session`, the upsert commits by itself.
        """
        if not access_token:
            raise InvalidInputError("access_token is empty: pass the provider's access token.")
        tenant = tenant_value()
        if tenant is not None:
            if tenant_id is not None and str(tenant_id) != tenant:
                raise TenantScopeError(
                    "Cannot save a token for another tenant than the one in context: "
                    "leave tenant_id out inside tenant_context()."
                )
            tenant_id = uuid.UUID(tenant)
        expiry = _expiry(self._now(), expires_in, expires_at)
        keys = self.keys
        values: dict[str, Any] = {
            "id": new_uuid7(),
            "version": 1,
            "provider": provider,
            "account": account,
            "tenant_id": tenant_id,
            "access_token": keys.encrypt(access_token, _context("access_token", provider, account)),
            "refresh_token": None
            if refresh_token is None
            else keys.encrypt(refresh_token, _context("refresh_token", provider, account)),
            "token_type": token_type,
            "scopes": parse_scopes(scopes) or [],
            "expires_at": expiry,
        }
        stmt = pg_insert(TOKENS).values(values)
        upsert = stmt.on_conflict_do_update(
            index_elements=[TOKENS.c.tenant_id, TOKENS.c.provider, TOKENS.c.account],
            set_={
                "access_token": stmt.excluded.access_token,
                "refresh_token": func.coalesce(stmt.excluded.refresh_token, TOKENS.c.refresh_token),
                "token_type": stmt.excluded.token_type,
                "scopes": stmt.excluded.scopes,
                "expires_at": stmt.excluded.expires_at,
                "refresh_failures": 0,
                "last_error": None,
                "next_refresh_not_before": None,
                "updated_at": func.now(),
                "version": TOKENS.c.version + 1,
            },
        ).returning(*ALL_COLUMNS)
        with translated_errors():
            if session is not None:
                row = (await session.execute(upsert)).one()
            else:
                async with self.db.engine.begin() as conn:
                    row = (await conn.execute(upsert)).one()
        return self._token(row._mapping)

    async def get(self, provider: str, account: str) -> ProviderToken:
        """The stored token, decrypted; NotFoundError when there is none."""
        record = await self._read(provider, account)
        if record is None:
            raise self._not_found(provider, account)
        return self._token(record)

    def is_expired(self, token: TokenInfo, buffer: timedelta = DEFAULT_BUFFER) -> bool:
        """Whether the token expires within `buffer` from now (one without expiry never does)."""
        return token.expires_at is not None and token.expires_at <= self._now() + buffer

    def as_dict(self, token: ProviderToken) -> dict[str, Any]:
        """The token as OAuth SDKs take it: access and refresh token, expiry, type."""
        expires_at = token.expires_at
        return {
            "access_token": token.access_token,
            "refresh_token": token.refresh_token,
            "expires_at": None
            if expires_at is None
            else expires_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "expires_in": token.expires_in(self._now()),
            "token_type": token.token_type,
        }

    async def delete(self, provider: str, account: str) -> bool:
        """Delete the token of one provider and account; whether there was one.

        Its refresh history stays (looked up by provider and account).
        """
        stmt = delete(TOKENS).where(
            TOKENS.c.provider == provider, TOKENS.c.account == account, tenant_condition(TOKENS)
        )
        with translated_errors():
            async with self.db.engine.begin() as conn:
                result = await conn.execute(stmt.returning(TOKENS.c.id))
                return result.first() is not None

    async def list_tokens(
        self, provider: str | None = None, *, limit: int = 1000
    ) -> list[TokenInfo]:
        """Stored tokens without their secrets, by provider and account."""
        stmt = select(*INFO).order_by(TOKENS.c.provider, TOKENS.c.account).limit(limit)
        if provider is not None:
            stmt = stmt.where(TOKENS.c.provider == provider)
        return [TokenInfo(**info_values(row)) for row in await self._rows(stmt)]

    async def needing_refresh(
        self, within: timedelta | None = None, *, limit: int = 1000
    ) -> list[TokenInfo]:
        """Tokens that expire within `within` (default: the buffer), soonest first, no secrets."""
        horizon = self._now() + (self.buffer if within is None else within)
        stmt = (
            select(*INFO)
            .where(TOKENS.c.expires_at <= horizon)
            .order_by(TOKENS.c.expires_at, TOKENS.c.id)
            .limit(limit)
        )
        return [TokenInfo(**info_values(row)) for row in await self._rows(stmt)]

    async def history(
        self, provider: str, account: str, *, limit: int = 100
    ) -> list[RefreshAttempt]:
        """Refresh attempts for one provider and account, newest first."""
        stmt = (
            select(AUDIT)
            .where(
                AUDIT.c.provider == provider, AUDIT.c.account == account, tenant_condition(AUDIT)
            )
            .order_by(AUDIT.c.refreshed_at.desc(), AUDIT.c.id.desc())
            .limit(limit)
        )
        return [RefreshAttempt(**row) for row in await self._rows(stmt)]

    # -- refresh -----------------------------------------------------------------------------

    async def get_valid_token(
        self, provider: str, account: str, refresher: Refresher
    ) -> ProviderToken:
        """The token, refreshed first if it is inside the buffer; one refresh for all callers.

        Outside the buffer this is one read and no write. Inside it, one refresh runs per
        token: the callers of this process wait on its result (holding no connection), other
        processes wait on the row lock. It calls `refresher` (cut off after
        `refresh_timeout`), stores the answer and audits it; a caller that is cancelled does
        not stop it. After a failure, callers get the old token while it has not expired,
        else TokenRefreshError, until the backoff has passed.
        """
        return await refresh.valid_token(self, provider, account, refresher)

    async def refresh_due(
        self, refreshers: Mapping[str, Refresher], *, within: timedelta | None = None
    ) -> RefreshSummary:
        """Refresh every token of the given providers that expires within `within`.

        Several workers may run this at once: each takes rows with `FOR UPDATE SKIP LOCKED`,
        so they share the work and never refresh one token twice. Inside `tenant_context`,
        the tenant's tokens; outside, every tenant's in turn and those of no tenant. Tokens
        in backoff, without a refresh token, or of providers without a refresher are left
        alone.
        """
        horizon = self.buffer if within is None else within
        refreshed = failed = 0
        # Outside a tenant, under row-level security: each tenant's tokens inside that tenant.
        for scope in await maintenance_scopes(self.db):
            with entered(scope):
                summary = await refresh.refresh_due(self, refreshers, horizon)
            refreshed, failed = refreshed + summary.refreshed, failed + summary.failed
        return RefreshSummary(refreshed=refreshed, failed=failed)

    async def rotate_keys(self, *, batch_size: int = 200) -> int:
        """Re-encrypt every token under the newest key, online; how many values changed.

        The vault's share of `pgstack keys rotate`, which does every encrypted column (see
        `pgstack.orm.rotation`). Values already under the newest key are not touched, so a
        second run changes nothing; an undecryptable value is an EncryptionError naming it.
        """
        report = await rotate_keys(
            self.db, encrypted_columns([TOKENS]), keys=self.keys, batch_size=batch_size
        )
        if report.failures:
            raise EncryptionError(
                f"{len(report.failures)} token value(s) were not re-encrypted; the first, "
                f"{report.failures[0]}"
            )
        await AuditLog(self.db).record(
            "token.keys_rotated",
            category=SECURITY,
            resource_type="oauth_token",
            description=f"{report.reencrypted} token value(s) re-encrypted under the newest key",
        )
        return report.reencrypted

    # -- rows to objects ---------------------------------------------------------------------

    async def _rows(self, stmt: Any) -> list[Any]:
        with translated_errors():
            async with self.db.engine.connect() as conn:
                return [row._mapping for row in (await conn.execute(stmt)).all()]

    async def _read(self, provider: str, account: str) -> Any:
        with translated_errors():
            lane = self.db.read_lane
            if lane is not None:
                # The hot path: one read on the read lane, no transaction.
                tenant = tenant_value()
                if tenant is None:
                    records = await lane.fetch(READ_SQL, (provider, account))
                else:
                    records = await lane.fetch(READ_TENANT_SQL, (provider, account, tenant))
                return records[0] if records else None
            stmt = select(*ALL_COLUMNS).where(
                TOKENS.c.provider == provider, TOKENS.c.account == account, tenant_condition(TOKENS)
            )
            async with self.db.engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
            return None if row is None else row._mapping

    def _token(self, row: Any) -> ProviderToken:
        provider, account = row["provider"], row["account"]
        return ProviderToken(
            **info_values(row),
            access_token=self._decrypt(row["access_token"], "access_token", provider, account),
            refresh_token=self._decrypt(row["refresh_token"], "refresh_token", provider, account),
        )

    def _encrypt(self, value: str, column: str, token: TokenInfo) -> str:
        return self.keys.encrypt(value, _context(column, token.provider, token.account))

    def _decrypt(self, value: str | None, column: str, provider: str, account: str) -> Any:
        if value is None:
            return None
        try:
            return self.keys.decrypt_text(value, _context(column, provider, account))
        except EncryptionError as exc:
            raise EncryptionError(
                f"The {column.replace('_', ' ')} of provider {provider!r}, account {account!r} "
                f"cannot be decrypted: {exc.message} Token values are bound to their row too, "
                "so one copied from another provider or account fails the same way; save the "
                "token again."
            ) from None

    @staticmethod
    def _not_found(provider: str, account: str) -> NotFoundError:
        return NotFoundError(
            f"No token is stored for provider {provider!r}, account {account!r}: save one "
            "with TokenVault.save() after the account authorizes."
        )


def _context(column: str, provider: str, account: str) -> str:
    # The row's identity is part of the associated data (see models.py).
    return row_context(f"oauth_tokens.{column}", provider, account)


def _expiry(
    now: datetime, expires_in: float | timedelta | None, expires_at: datetime | None
) -> datetime | None:
    if expires_in is not None and expires_at is not None:
        raise InvalidInputError("Pass expires_in or expires_at, not both.")
    if expires_at is not None:
        if expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise InvalidInputError(
                "expires_at is a naive datetime: pass an aware one (e.g. in UTC)."
            )
        return expires_at.astimezone(UTC)
    if expires_in is None:
        return None
    delta = expires_in if isinstance(expires_in, timedelta) else timedelta(seconds=expires_in)
    return now + delta
