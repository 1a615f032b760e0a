"""Single-flight refresh: one provider call per token, however many callers and processes ask.

In one process, the callers of one token share one refresh: it runs in a task of its own,
and they wait on its result through a shield, holding no database connection meanwhile.
Across processes the row lock decides. A refresh takes it with `FOR UPDATE NOWAIT`; when
another process holds it, the refresh lets go of its connection, waits a little and reads
the row again (no lock, no transaction), until the row has been refreshed or the wait has
outlasted the holder's own refresh timeout.

The holder calls the provider and stores the answer before anything that can fail: the
rotated refresh token is written even when the rest of the answer is unusable, the write is
not cancelled when the callers go away (it runs in its own task), and a write that fails,
for instance because the connection was lost, is made again on another connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pgstack.audit import SECURITY, AuditLog
from pgstack.db.database import Database
from pgstack.db.metrics import sqlstate_of
from pgstack.db.session import translate_error, translated_errors
from pgstack.db.tenant import tenant_value
from pgstack.errors import TokenRefreshError
from pgstack.tokens.records import (
    ALL_COLUMNS,
    AUDIT,
    TOKENS,
    ProviderToken,
    Refresher,
    RefreshSummary,
    tenant_condition,
)
from pgstack.tokens.shapes import describe_failure, parse_answer, redact, rotated_refresh_token

if TYPE_CHECKING:
    from pgstack.tokens.vault import TokenVault

logger = logging.getLogger("pgstack.tokens")

T = TypeVar("T")
_LOCK_NOT_AVAILABLE = "55P03"
# How long past the holder's refresh timeout a waiting refresh keeps waiting, at most.
_GRACE_MAX = 5.0
_POLL_FIRST, _POLL_MAX = 0.02, 0.5
# Pauses before each further attempt to store an answer whose first write failed.
_STORE_RETRIES = (0.2, 1.0, 3.0)

# Refreshes under way in this process: by database, event loop, tenant, provider, account.
_Flights = dict[tuple[Any, Any, str, str], asyncio.Task[ProviderToken]]
_flights: WeakKeyDictionary[Database, _Flights]
_flights = WeakKeyDictionary()
# Work that must finish although its caller went away, referenced until it has.
_detached: set[asyncio.Task[Any]] = set()


async def valid_token(
    vault: TokenVault, provider: str, account: str, refresher: Refresher
) -> ProviderToken:
    """The token, refreshed first when it is inside the buffer (see `get_valid_token`)."""
    record = await vault._read(provider, account)
    if record is None:
        raise vault._not_found(provider, account)
    now = vault._now()
    # Fresh, or in a backoff: decided here, on the read, before any lock is taken.
    settled = _settled(vault, record, record["version"], now)
    if settled is not None:
        return settled
    if record["refresh_token"] is None:
        # Nothing to refresh with: the token serves until it expires, without a lock.
        if record["expires_at"] > now:
            return vault._token(record)
        raise _no_refresh_token(provider, account)
    flights = _flights.setdefault(vault.db, {})
    # The tenant too: two workspaces may hold tokens of the same provider and account.
    key = (asyncio.get_running_loop(), tenant_value(), provider, account)
    flight = flights.get(key)
    if flight is None:
        flight = _detach(_refresh(vault, provider, account, refresher, record["version"]))
        flights[key] = flight
        flight.add_done_callback(lambda done: _land(flights, key, done))
    return await asyncio.shield(flight)


def _land(flights: dict[Any, asyncio.Task[ProviderToken]], key: Any, done: Any) -> None:
    if flights.get(key) is done:
        del flights[key]


def _detach(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    task = asyncio.create_task(work)
    _detached.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Task[Any]) -> None:
    _detached.discard(task)
    if not task.cancelled():
        # Every caller still waiting has received it; nobody else needs it reported.
        task.exception()


def _settled(vault: TokenVault, row: Any, seen_version: int, now: datetime) -> ProviderToken | None:
    """The token to return without calling the provider, or None when a refresh is due.

    Raises TokenRefreshError inside a backoff once the token has expired.
    """
    expires_at = row["expires_at"]
    if expires_at is None or expires_at > now + vault.buffer:
        return vault._token(row)
    not_before = row["next_refresh_not_before"]
    if not_before is not None and now < not_before:
        token = vault._token(row)
        if expires_at > now:
            return token
        raise TokenRefreshError(
            f"Refreshing the token of {token.provider}/{token.account} failed "
            f"{token.refresh_failures} time(s) (last error: {token.last_error}); the next "
            f"attempt is allowed at {not_before.isoformat()}. Fix the cause (re-authorize if "
            "the grant was revoked) or wait."
        )
    if row["version"] != seen_version and expires_at > now:
        # Written since this caller read it: another caller's refresh, which granted a token
        # shorter-lived than the buffer. Refreshing again would cost one provider call each.
        return vault._token(row)
    return None


async def _refresh(
    vault: TokenVault, provider: str, account: str, refresher: Refresher, seen_version: int
) -> ProviderToken:
    loop = asyncio.get_running_loop()
    patience = vault.refresh_timeout + min(vault.refresh_timeout, _GRACE_MAX)
    deadline = loop.time() + patience
    pause = _POLL_FIRST
    lock = (
        select(*ALL_COLUMNS)
        .where(TOKENS.c.provider == provider, TOKENS.c.account == account, tenant_condition(TOKENS))
        .with_for_update(nowait=True)
    )

    async def pick(conn: AsyncConnection, now: datetime) -> Any | ProviderToken:
        row = (await conn.execute(lock)).first()
        if row is None:
            raise vault._not_found(provider, account)
        mapping = row._mapping
        settled = _settled(vault, mapping, seen_version, now)
        return mapping if settled is None else settled

    while True:
        with translated_errors():
            done = await _attempt_locked(vault, pick, lambda row: refresher)
        if done is not None:
            token, error = done
            return token if error is None else _old_or_raise(vault, token, error)
        # Another process holds the row and is refreshing it: wait without a connection.
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TokenRefreshError(
                f"The token of {provider}/{account} has been locked by another refresh for "
                f"over {patience:g} s; try again shortly."
            )
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, _POLL_MAX)
        record = await vault._read(provider, account)
        if record is None:
            raise vault._not_found(provider, account)
        settled = _settled(vault, record, seen_version, vault._now())
        if settled is not None:
            return settled


async def refresh_due(
    vault: TokenVault, refreshers: Mapping[str, Refresher], within: timedelta
) -> RefreshSummary:
    """Refresh every due token of the given providers (see `TokenVault.refresh_due`)."""
    seen: list[Any] = []

    async def pick(conn: AsyncConnection, now: datetime) -> Any | None:
        stmt = (
            select(*ALL_COLUMNS)
            .where(
                TOKENS.c.provider.in_(list(refreshers)),
                TOKENS.c.expires_at <= now + within,
                TOKENS.c.refresh_token.is_not(None),
                or_(
                    TOKENS.c.next_refresh_not_before.is_(None),
                    TOKENS.c.next_refresh_not_before <= now,
                ),
                TOKENS.c.id.not_in(seen),
            )
            .order_by(TOKENS.c.expires_at, TOKENS.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        # Each token once per run, even if the provider grants one shorter than `within`.
        seen.append(row.id)
        return row._mapping

    refreshed = failed = 0
    while True:
        # A worker stopped mid-run still stores the answer its provider already gave.
        with translated_errors():
            done = await asyncio.shield(
                _detach(_attempt_locked(vault, pick, lambda row: refreshers[row["provider"]]))
            )
        if done is None:
            return RefreshSummary(refreshed=refreshed, failed=failed)
        if done[1] is None:
            refreshed += 1
        else:
            failed += 1


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one provider call came to: the columns to write, and its audit."""

    old: ProviderToken
    asked_at: datetime
    values: dict[str, Any]
    error: str | None
    duration_ms: int


async def _attempt_locked(
    vault: TokenVault,
    pick: Callable[[AsyncConnection, datetime], Any],
    refresher_for: Callable[[Any], Refresher],
) -> tuple[ProviderToken, str | None] | None:
    """Lock a row with `pick`, call its provider, store and audit the answer: one transaction.

    `pick` returns the locked row, a token to return without a refresh, or None when there
    is nothing to do. The result is the stored token and the refresh's error (None on
    success), or None when `pick` found nothing or the row is locked elsewhere (55P03).
    Once the provider has answered, a failure to store the answer is met by storing it
    again on another connection.
    """
    answer: _Answer | None = None
    try:
        async with vault.db.engine.connect() as conn, conn.begin():
            now = vault._now()
            picked = await pick(conn, now)
            if picked is None or isinstance(picked, ProviderToken):
                return None if picked is None else (picked, None)
            answer = await _ask(vault, picked, refresher_for(picked), now)
            token = await _store(vault, conn, answer)
    except BaseException as exc:
        if answer is None:
            if sqlstate_of(exc) == _LOCK_NOT_AVAILABLE:
                return None
            raise
        # Even when cancelled (a process shutting down cancels every task): store, then go.
        token = await _store_again(vault, answer, exc)
        if not isinstance(exc, Exception):
            raise
    return token, answer.error


async def _ask(vault: TokenVault, row: Any, refresher: Refresher, now: datetime) -> _Answer:
    """Call the provider for a locked row; the columns its answer (or failure) sets."""
    old = vault._token(row)
    if old.refresh_token is None:
        raise _no_refresh_token(old.provider, old.account)
    secrets: list[str | None] = [old.refresh_token, old.access_token]
    started = time.perf_counter()
    error: str | None = None
    answer: object = None
    try:
        async with asyncio.timeout(vault.refresh_timeout) as deadline:
            answer = await refresher(old.refresh_token)
    except TimeoutError:
        if not deadline.expired():
            error = "TimeoutError raised by the refresher"
        else:
            error = f"the refresher did not answer within {vault.refresh_timeout:g} s"
    except Exception as exc:  # any provider failure is audited, not propagated
        error = describe_failure(exc, secrets)
    duration_ms = int((time.perf_counter() - started) * 1000)
    finished = vault._now()
    values: dict[str, Any] = {}
    if error is None:
        # First what the provider may have retired the old one for: whatever else is wrong
        # with the answer, the rotated refresh token is written.
        rotated = rotated_refresh_token(answer)
        if rotated is not None:
            values["refresh_token"] = vault._encrypt(rotated, "refresh_token", old)
            secrets.append(rotated)
        error = _understood(vault, answer, old, finished, values, secrets)
    if error is None:
        values.update(
            refresh_failures=0,
            last_error=None,
            next_refresh_not_before=None,
            last_refreshed_at=finished,
        )
    else:
        failures = old.refresh_failures + 1
        delay = min(vault.backoff_base * 2 ** (failures - 1), vault.backoff_max)
        values.update(
            refresh_failures=failures, last_error=error, next_refresh_not_before=finished + delay
        )
        logger.warning(
            "refreshing the token of %s/%s failed (%d in a row; next attempt in %s): %s",
            old.provider,
            old.account,
            failures,
            delay,
            error,
        )
    return _Answer(old, now, values, error, duration_ms)


def _understood(
    vault: TokenVault,
    answer: object,
    old: ProviderToken,
    now: datetime,
    values: dict[str, Any],
    secrets: list[str | None],
) -> str | None:
    """Add the answer's access token, expiry, type and scopes to `values`; the error if unusable."""
    try:
        parsed = parse_answer(answer, now)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
        return redact(f"the provider's answer was unusable: {reason}", secrets)
    secrets.append(parsed.access_token)
    values["access_token"] = vault._encrypt(parsed.access_token, "access_token", old)
    values["expires_at"] = parsed.expires_at
    values["token_type"] = parsed.token_type or old.token_type
    if parsed.scopes is not None:
        values["scopes"] = parsed.scopes
    return None


async def _store(vault: TokenVault, conn: AsyncConnection, answer: _Answer) -> ProviderToken:
    old = answer.old
    values = {**answer.values, "updated_at": func.now(), "version": TOKENS.c.version + 1}
    stmt = update(TOKENS).where(TOKENS.c.id == old.id).values(values).returning(*ALL_COLUMNS)
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise vault._not_found(old.provider, old.account)
    token = vault._token(row._mapping)
    await conn.execute(
        insert(AUDIT).values(
            token_id=old.id,
            tenant_id=old.tenant_id,
            provider=old.provider,
            account=old.account,
            refreshed_at=answer.asked_at,
            previous_expires_at=old.expires_at,
            new_expires_at=token.expires_at if answer.error is None else None,
            success=answer.error is None,
            error_message=answer.error,
            duration_ms=answer.duration_ms,
        )
    )
    if answer.error is not None:
        # In the same transaction as the failure it reports (the tenant is the transaction's).
        await AuditLog(vault.db).record(
            "token.refresh_failed",
            category=SECURITY,
            outcome="failure",
            resource_type="oauth_token",
            resource_id=old.id,
            description=f"{old.provider} account {old.account}",
            error=answer.error,
            session=conn,
        )
    return token


async def _store_again(vault: TokenVault, answer: _Answer, first: BaseException) -> ProviderToken:
    """Store an answer whose first write failed, on fresh connections; else the first error."""
    old = answer.old
    for pause in _STORE_RETRIES:
        await asyncio.sleep(pause)
        try:
            async with vault.db.engine.begin() as conn:
                return await _store(vault, conn, answer)
        except Exception as exc:
            logger.warning(
                "storing the refreshed token of %s/%s failed again (%s); retrying",
                old.provider,
                old.account,
                type(exc).__name__,
            )
    logger.error(
        "the provider's answer for %s/%s could not be stored (%s): if it rotated the refresh "
        "token, the account must be authorized again",
        old.provider,
        old.account,
        type(first).__name__,
    )
    if not isinstance(first, Exception):
        raise first
    translated = translate_error(first)
    raise translated from first


def _old_or_raise(vault: TokenVault, token: ProviderToken, error: str) -> ProviderToken:
    if token.expires_at is not None and token.expires_at > vault._now():
        return token
    raise TokenRefreshError(
        f"Refreshing the token of {token.provider}/{token.account} failed: {error}. "
        f"Next attempt after {token.next_refresh_not_before}; re-authorize if the grant "
        "was revoked."
    )


def _no_refresh_token(provider: str, account: str) -> TokenRefreshError:
    return TokenRefreshError(
        f"No refresh token is stored for {provider}/{account} and its access token has "
        "expired: the account must be authorized again."
    )
