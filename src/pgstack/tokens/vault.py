"""`TokenVault`: provider OAuth tokens encrypted at rest, refreshed once however many ask.

Every token value is AES-256-GCM ciphertext bound to its table, column and row (provider and
account). `get_valid_token` reads the row once and returns it while it is outside the
refresh buffer; inside the buffer, one caller in any process takes the row lock, calls the
provider, stores the result and audits the attempt, and every other caller waits for that
and then gets the new token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Row, Table, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from pgstack.crypto import KeyRing, get_key_ring
from pgstack.db.database import Database
from pgstack.db.metrics import sqlstate_of
from pgstack.errors import (
    EncryptionError,
    InvalidInputError,
    NotFoundError,
    TokenRefreshError,
)
from pgstack.orm.mixins import new_uuid7
from pgstack.tokens.models import OAuthToken, TokenRefreshAudit

logger = logging.getLogger("pgstack.tokens")

Refresher = Callable[[str], Awaitable[Mapping[str, Any]]]
"""The caller's call to the provider: takes the refresh token, returns the token response.

The response is the provider's JSON as a mapping: `access_token` (required), and any of
`refresh_token` (a rotated one; the old one is kept when absent), `expires_in` (seconds) or
`expires_at` (an aware datetime or ISO-8601 text), `token_type`, `scope` (space-separated)
or `scopes` (a list).
"""

TokenStatus = Literal["valid", "expiring", "expired", "no-expiry"]
DEFAULT_BUFFER = timedelta(minutes=5)
_ERROR_MAX = 500
_LOCK_NOT_AVAILABLE = "55P03"

_T: Table = OAuthToken.__table__  # type: ignore[assignment]
_A: Table = TokenRefreshAudit.__table__  # type: ignore[assignment]
_INFO_COLUMNS = (
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
_SECRET_COLUMNS = ("access_token", "refresh_token")
_INFO = [_T.c[name] for name in _INFO_COLUMNS]
_ALL = [*_INFO, _T.c.access_token, _T.c.refresh_token]
# The hot path: one read through the unique (provider, account) index, straight on the driver
# connection, in autocommit (no BEGIN, and nothing to roll back when it goes back to the pool).
_READ_SQL = (
    f"SELECT {', '.join((*_INFO_COLUMNS, *_SECRET_COLUMNS))} FROM oauth_tokens "
    "WHERE provider = $1 AND account = $2"
)


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


@dataclass(frozen=True, slots=True)
class _Outcome:
    token: ProviderToken
    error: str | None


class TokenVault:
    """Provider OAuth tokens per provider and account: stored encrypted, refreshed once.

        vault = TokenVault(db)
        await vault.save("hubspot", "acme", access, refresh, expires_in=1800)
        token = await vault.get_valid_token("hubspot", "acme", refresh_with_hubspot)

    `buffer` is how long before expiry a token counts as due; `refresh_timeout` (seconds) cuts
    off a refresher that hangs; failed refreshes back off exponentially from `backoff_base` up
    to `backoff_max`. `keys` defaults to the process-wide key ring (PGSTACK_ENCRYPTION_KEYS);
    `clock` (aware UTC now) is for tests.
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
    ) -> ProviderToken:
        """Store (insert or replace) the tokens of one provider and account in one upsert.

        A `refresh_token` of None keeps the one already stored. Saving clears any refresh
        failures and backoff: it is what a new authorization does.
        """
        if not access_token:
            raise InvalidInputError("access_token is empty: pass the provider's access token.")
        expiry = _expiry(self._now(), expires_in, expires_at)
        scope_list = _scopes(scopes) or []
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
            "scopes": scope_list,
            "expires_at": expiry,
        }
        stmt = pg_insert(_T).values(values)
        upsert = stmt.on_conflict_do_update(
            index_elements=[_T.c.provider, _T.c.account],
            set_={
                "access_token": stmt.excluded.access_token,
                "refresh_token": func.coalesce(stmt.excluded.refresh_token, _T.c.refresh_token),
                "token_type": stmt.excluded.token_type,
                "scopes": stmt.excluded.scopes,
                "expires_at": stmt.excluded.expires_at,
                "tenant_id": func.coalesce(stmt.excluded.tenant_id, _T.c.tenant_id),
                "refresh_failures": 0,
                "last_error": None,
                "next_refresh_not_before": None,
                "updated_at": func.now(),
                "version": _T.c.version + 1,
            },
        ).returning(*_ALL)
        async with self.db.engine.begin() as conn:
            row = (await conn.execute(upsert)).one()
        return self._token(row._mapping)

    async def get(self, provider: str, account: str) -> ProviderToken:
        """The stored token, decrypted; NotFoundError when there is none."""
        record = await self._read(provider, account)
        if record is None:
            raise _not_found(provider, account)
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
        stmt = delete(_T).where(_T.c.provider == provider, _T.c.account == account)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(stmt.returning(_T.c.id))
            return result.first() is not None

    async def list_tokens(
        self, provider: str | None = None, *, limit: int = 1000
    ) -> list[TokenInfo]:
        """Stored tokens without their secrets, by provider and account."""
        stmt = select(*_INFO).order_by(_T.c.provider, _T.c.account).limit(limit)
        if provider is not None:
            stmt = stmt.where(_T.c.provider == provider)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_info(row._mapping) for row in rows]

    async def needing_refresh(
        self, within: timedelta | None = None, *, limit: int = 1000
    ) -> list[TokenInfo]:
        """Tokens that expire within `within` (default: the buffer), soonest first, no secrets."""
        horizon = self._now() + (self.buffer if within is None else within)
        stmt = (
            select(*_INFO)
            .where(_T.c.expires_at <= horizon)
            .order_by(_T.c.expires_at, _T.c.id)
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_info(row._mapping) for row in rows]

    async def history(
        self, provider: str, account: str, *, limit: int = 100
    ) -> list[RefreshAttempt]:
        """Refresh attempts for one provider and account, newest first."""
        stmt = (
            select(_A)
            .where(_A.c.provider == provider, _A.c.account == account)
            .order_by(_A.c.refreshed_at.desc(), _A.c.id.desc())
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [RefreshAttempt(**row._mapping) for row in rows]

    # -- single-flight refresh ---------------------------------------------------------------

    async def get_valid_token(
        self, provider: str, account: str, refresher: Refresher
    ) -> ProviderToken:
        """The token, refreshed first if it is inside the buffer; one refresh for all callers.

        Outside the buffer this is one read and no write. Inside it, the caller that gets the
        row lock calls `refresher` (cut off after `refresh_timeout`), stores and audits the
        result; the others wait for the lock, find the new token and return it. After a
        failure, callers get the old token while it has not expired, else TokenRefreshError,
        until the backoff has passed.
        """
        record = await self._read(provider, account)
        if record is None:
            raise _not_found(provider, account)
        expires_at = record["expires_at"]
        now = self._now()
        if expires_at is None or expires_at > now + self.buffer:
            return self._token(record)
        if record["refresh_token"] is None:
            # Nothing to refresh with: the token serves until it expires, without a lock.
            if expires_at > now:
                return self._token(record)
            raise _no_refresh_token(provider, account)
        return await self._refresh_locked(provider, account, refresher, record["version"])

    async def _refresh_locked(
        self, provider: str, account: str, refresher: Refresher, seen_version: int
    ) -> ProviderToken:
        async with self.db.engine.connect() as conn, conn.begin():
            # A waiter gives up (instead of queueing for ever) if the holder somehow keeps
            # the lock well past the refresher's own timeout.
            wait_ms = int(self.refresh_timeout * 1000) + 5000
            await conn.execute(text(f"SET LOCAL lock_timeout = {wait_ms}"))
            stmt = (
                select(*_ALL)
                .where(_T.c.provider == provider, _T.c.account == account)
                .with_for_update()
            )
            try:
                row = (await conn.execute(stmt)).first()
            except DBAPIError as exc:
                if sqlstate_of(exc) == _LOCK_NOT_AVAILABLE:
                    raise TokenRefreshError(
                        f"The token of {provider}/{account} has been locked by another "
                        f"refresh for over {wait_ms / 1000:.0f} s; try again shortly."
                    ) from None
                raise
            if row is None:
                raise _not_found(provider, account)
            mapping = row._mapping
            now = self._now()
            expires_at = mapping["expires_at"]
            if expires_at is None or expires_at > now + self.buffer:
                # Another caller refreshed it while this one waited for the lock.
                return self._token(mapping)
            still_valid = self._backoff(mapping, now)
            if still_valid is not None:
                return still_valid
            if mapping["version"] != seen_version and expires_at > now:
                # Written since this caller read it: another caller's refresh, which granted
                # a token shorter-lived than the buffer. Refreshing again would cost every
                # waiter one provider call each.
                return self._token(mapping)
            outcome = await self._attempt(conn, mapping, refresher, now)
        if outcome.error is None:
            return outcome.token
        return self._old_or_raise(outcome.token, outcome.error)

    def _backoff(self, mapping: Any, now: datetime) -> ProviderToken | None:
        """None outside a backoff; inside one, the old token while valid, else the error."""
        not_before = mapping["next_refresh_not_before"]
        if not_before is None or now >= not_before:
            return None
        token = self._token(mapping)
        if token.expires_at is not None and token.expires_at > now:
            return token
        raise TokenRefreshError(
            f"Refreshing the token of {token.provider}/{token.account} failed "
            f"{token.refresh_failures} time(s) (last error: {token.last_error}); the next "
            f"attempt is allowed at {not_before.isoformat()}. Fix the cause (re-authorize if "
            "the grant was revoked) or wait."
        )

    def _old_or_raise(self, token: ProviderToken, error: str) -> ProviderToken:
        if token.expires_at is not None and token.expires_at > self._now():
            return token
        raise TokenRefreshError(
            f"Refreshing the token of {token.provider}/{token.account} failed: {error}. "
            f"Next attempt after {token.next_refresh_not_before}; re-authorize if the grant "
            "was revoked."
        )

    async def _attempt(
        self,
        conn: AsyncConnection,
        mapping: Any,
        refresher: Refresher,
        now: datetime,
    ) -> _Outcome:
        """Call the refresher for a locked row, then store and audit the outcome."""
        old = self._token(mapping)
        if old.refresh_token is None:
            raise _no_refresh_token(old.provider, old.account)
        secrets = [old.refresh_token, old.access_token]
        started = time.perf_counter()
        error: str | None = None
        payload: Mapping[str, Any] = {}
        try:
            async with asyncio.timeout(self.refresh_timeout) as deadline:
                payload = await refresher(old.refresh_token)
        except TimeoutError:
            if not deadline.expired():
                error = "TimeoutError raised by the refresher"
            else:
                error = f"the refresher did not answer within {self.refresh_timeout:g} s"
        except Exception as exc:  # any provider failure is audited, not propagated
            error = _redact(f"{type(exc).__name__}: {exc}", secrets)
        duration_ms = int((time.perf_counter() - started) * 1000)
        finished = self._now()
        values: dict[str, Any] = {}
        if error is None:
            try:
                values = self._parsed(payload, old, finished)
            except (ValueError, TypeError) as exc:
                error = _redact(f"the provider's answer was unusable: {exc}", secrets)
        if error is None:
            values.update(
                refresh_failures=0,
                last_error=None,
                next_refresh_not_before=None,
                last_refreshed_at=finished,
            )
        else:
            failures = old.refresh_failures + 1
            delay = min(self.backoff_base * 2 ** (failures - 1), self.backoff_max)
            values = {
                "refresh_failures": failures,
                "last_error": error,
                "next_refresh_not_before": finished + delay,
            }
            logger.warning(
                "refreshing the token of %s/%s failed (%d in a row; next attempt in %s): %s",
                old.provider,
                old.account,
                failures,
                delay,
                error,
            )
        values.update(updated_at=func.now(), version=_T.c.version + 1)
        stmt = update(_T).where(_T.c.id == old.id).values(values).returning(*_ALL)
        row = (await conn.execute(stmt)).one()
        token = self._token(row._mapping)
        await conn.execute(
            insert(_A).values(
                token_id=old.id,
                provider=old.provider,
                account=old.account,
                refreshed_at=now,
                previous_expires_at=old.expires_at,
                new_expires_at=token.expires_at if error is None else None,
                success=error is None,
                error_message=error,
                duration_ms=duration_ms,
            )
        )
        return _Outcome(token, error)

    def _parsed(
        self, payload: Mapping[str, Any], old: ProviderToken, now: datetime
    ) -> dict[str, Any]:
        if not isinstance(payload, Mapping):
            raise TypeError(f"the refresher returned {type(payload).__name__}, not a mapping")
        access = payload.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("it has no access_token")
        rotated = payload.get("refresh_token")
        if rotated is not None and (not isinstance(rotated, str) or not rotated):
            raise ValueError("its refresh_token is not text")
        raw_expires_at = payload.get("expires_at")
        if isinstance(raw_expires_at, str):
            raw_expires_at = datetime.fromisoformat(raw_expires_at.replace("Z", "+00:00"))
        raw_expires_in = payload.get("expires_in")
        if raw_expires_in is not None:
            raw_expires_in = float(raw_expires_in)
        scopes = _scopes(payload.get("scopes", payload.get("scope")))
        keys = self.keys
        values: dict[str, Any] = {
            "access_token": keys.encrypt(
                access, _context("access_token", old.provider, old.account)
            ),
            "expires_at": _expiry(now, raw_expires_in, raw_expires_at),
            "token_type": str(payload.get("token_type") or old.token_type),
        }
        if rotated is not None:
            # Providers that rotate refresh tokens invalidate the old one on use: keep the new.
            values["refresh_token"] = keys.encrypt(
                rotated, _context("refresh_token", old.provider, old.account)
            )
        if scopes is not None:
            values["scopes"] = scopes
        return values

    # -- background work ---------------------------------------------------------------------

    async def refresh_due(
        self, refreshers: Mapping[str, Refresher], *, within: timedelta | None = None
    ) -> RefreshSummary:
        """Refresh every token of the given providers that expires within `within`.

        Several workers may run this at once: each takes rows with `FOR UPDATE SKIP LOCKED`,
        so they share the work and never refresh one token twice. Tokens in backoff, without
        a refresh token, or of providers without a refresher are left alone.
        """
        horizon = self.buffer if within is None else within
        seen: list[uuid.UUID] = []
        refreshed = failed = 0
        while True:
            async with self.db.engine.connect() as conn, conn.begin():
                now = self._now()
                stmt = (
                    select(*_ALL)
                    .where(
                        _T.c.provider.in_(list(refreshers)),
                        _T.c.expires_at <= now + horizon,
                        _T.c.refresh_token.is_not(None),
                        or_(
                            _T.c.next_refresh_not_before.is_(None),
                            _T.c.next_refresh_not_before <= now,
                        ),
                        _T.c.id.not_in(seen),
                    )
                    .order_by(_T.c.expires_at, _T.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                row = (await conn.execute(stmt)).first()
                if row is None:
                    break
                mapping = row._mapping
                # Each token once per run, even if the provider grants one shorter than `within`.
                seen.append(mapping["id"])
                outcome = await self._attempt(conn, mapping, refreshers[mapping["provider"]], now)
            if outcome.error is None:
                refreshed += 1
            else:
                failed += 1
        return RefreshSummary(refreshed=refreshed, failed=failed)

    async def rotate_keys(self, *, batch_size: int = 200) -> int:
        """Re-encrypt every token under the newest key, in batches; how many rows changed.

        Online: readers never wait (a batch's row locks block only writers, and a batch waits
        for a running refresh at most its timeout). Rows already under the newest key are
        not touched, so a second run changes nothing.
        """
        keys = self.keys
        changed = 0
        last_id: uuid.UUID | None = None
        while True:
            async with self.db.engine.begin() as conn:
                stmt = (
                    select(
                        _T.c.id, _T.c.provider, _T.c.account, *(_T.c[c] for c in _SECRET_COLUMNS)
                    )
                    .order_by(_T.c.id)
                    .limit(batch_size)
                    .with_for_update()
                )
                if last_id is not None:
                    stmt = stmt.where(_T.c.id > last_id)
                rows: Sequence[Row[Any]] = (await conn.execute(stmt)).all()
                if not rows:
                    return changed
                last_id = rows[-1].id
                for row in rows:
                    updates: dict[str, str] = {}
                    for column in _SECRET_COLUMNS:
                        value = row._mapping[column]
                        if value is not None and keys.needs_reencryption(value):
                            context = _context(column, row.provider, row.account)
                            try:
                                updates[column] = keys.reencrypt(value, context)
                            except EncryptionError as exc:
                                raise _undecryptable(
                                    column, row.provider, row.account, exc
                                ) from None
                    if updates:
                        await conn.execute(update(_T).where(_T.c.id == row.id).values(updates))
                        changed += 1

    # -- rows to objects ---------------------------------------------------------------------

    async def _read(self, provider: str, account: str) -> Any:
        lane = self.db.read_lane
        if lane is not None:
            records = await lane.fetch(_READ_SQL, (provider, account))
            return records[0] if records else None
        async with self.db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            return await driver.fetchrow(_READ_SQL, provider, account)

    def _token(self, row: Any) -> ProviderToken:
        provider, account = row["provider"], row["account"]
        return ProviderToken(
            **_info_values(row),
            access_token=self._decrypt(row["access_token"], "access_token", provider, account),
            refresh_token=self._decrypt(row["refresh_token"], "refresh_token", provider, account),
        )

    def _decrypt(self, value: str | None, column: str, provider: str, account: str) -> Any:
        if value is None:
            return None
        try:
            return self.keys.decrypt_text(value, _context(column, provider, account))
        except EncryptionError as exc:
            raise _undecryptable(column, provider, account, exc) from None


def _info_values(row: Any) -> dict[str, Any]:
    values = {name: row[name] for name in _INFO_COLUMNS}
    values["scopes"] = tuple(values["scopes"] or ())
    return values


def _info(row: Any) -> TokenInfo:
    return TokenInfo(**_info_values(row))


def _context(column: str, provider: str, account: str) -> str:
    # The row's identity is part of the associated data: JSON keeps it unambiguous for any
    # provider or account text.
    return f"oauth_tokens.{column}{json.dumps([provider, account], ensure_ascii=False)}"


def _no_refresh_token(provider: str, account: str) -> TokenRefreshError:
    return TokenRefreshError(
        f"No refresh token is stored for {provider}/{account} and its access token has "
        "expired: the account must be authorized again."
    )


def _not_found(provider: str, account: str) -> NotFoundError:
    return NotFoundError(
        f"No token is stored for provider {provider!r}, account {account!r}: save one with "
        "TokenVault.save() after the account authorizes."
    )


def _undecryptable(
    column: str, provider: str, account: str, exc: EncryptionError
) -> EncryptionError:
    return EncryptionError(
        f"The {column.replace('_', ' ')} of provider {provider!r}, account {account!r} cannot "
        f"be decrypted: {exc.message} Token values are bound to their row too, so one copied "
        "from another provider or account fails the same way; save the token again."
    )


def _redact(message: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message[:_ERROR_MAX]


def _scopes(value: Iterable[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.split()
    return [str(s) for s in value]


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
