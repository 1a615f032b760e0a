"""API keys: `pgs_<prefix>_<secret><checksum>`, stored as a peppered HMAC, with scopes."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import secrets
import string
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pgstack.db.replicas import bookkeeping
from pgstack.db.session import flush_pending
from pgstack.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from pgstack.identity._common import ServiceBase, digest, same_digest, security_event, utcnow
from pgstack.identity._rows import read_one
from pgstack.identity.models import ApiKey, User
from pgstack.identity.text import check_text
from pgstack.identity.users import UserRepository

logger = logging.getLogger("pgstack.identity")

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_PREFIX_LEN = 8  # ~47 bits: unique per key, shown in lists and logs to tell keys apart
_SECRET_LEN = 22  # 62**22 is about 2**131: the secret carries more than 128 random bits
_CHECK_LEN = 6  # 62**6 > 2**32 holds any CRC32
KEY_PREFIX = "pgs_"
_KEY = re.compile(
    rf"^{KEY_PREFIX}([0-9A-Za-z]{{{_PREFIX_LEN}}})_([0-9A-Za-z]{{{_SECRET_LEN}}})"
    rf"([0-9A-Za-z]{{{_CHECK_LEN}}})$"
)
_MALFORMED = (
    "The API key is malformed or mistyped (its checksum does not match); copy it again "
    "exactly as it was issued."
)
_REFUSED = "The API key is not valid: unknown, revoked or expired. Create a new one."
_HMAC = "hmac$"  # stored HMAC-SHA-256 digests start so; older, plain SHA-256 ones are bare hex

# Every request with an API key runs this: built once, the key's prefix bound per call.
_KEY_AND_USER = (
    select(ApiKey, User)
    .join(User, User.id == ApiKey.user_id)
    .where(
        ApiKey.prefix == bindparam("prefix"),
        User.deleted_at.is_(None),
        User.is_active.is_(True),
    )
)


@functools.lru_cache(maxsize=4)
def _parse_peppers(raw: str) -> tuple[bytes, ...]:
    return tuple(p.strip().encode() for p in raw.split(",") if p.strip())


def _hmac(pepper: bytes, key: str) -> str:
    return _HMAC + hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(reversed(chars))


def _random62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def generate_api_key() -> tuple[str, str]:
    """A new key and its prefix: `pgs_<8 prefix>_<22 secret><6 CRC32>`, all base62."""
    prefix = _random62(_PREFIX_LEN)
    body = f"{KEY_PREFIX}{prefix}_{_random62(_SECRET_LEN)}"
    return body + _checksum(body), prefix


def parse_api_key(key: str) -> str:
    """The prefix of a well-formed key; AuthenticationError, with no database trip, otherwise.

    CRC32 catches every single-character change and most others, so typos and truncated
    pastes never reach the database.
    """
    match = _KEY.match(key)
    if match is None or _checksum(key[:-_CHECK_LEN]) != match.group(3):
        raise AuthenticationError(_MALFORMED)
    return match.group(1)


def looks_like_api_key(token: str) -> bool:
    """Whether a bearer token is meant as an API key (as opposed to a session token)."""
    return token.startswith(KEY_PREFIX)


#: The longest lifetime a key may be given, in days (ten years).
MAX_KEY_DAYS = 3650


@dataclass(frozen=True)
class IssuedKey:
    """A newly created key: its row and the plaintext, which is shown this once only."""

    api_key: ApiKey
    key: str

    def __repr__(self) -> str:
        return f"IssuedKey(prefix={self.api_key.prefix!r}, key='***')"


@dataclass(frozen=True)
class VerifiedKey:
    """A key that passed every check, and the user it acts for."""

    api_key: ApiKey
    user: User

    def require_scopes(self, *scopes: str) -> None:
        """PermissionDeniedError unless the key carries every one of these scopes."""
        require_scopes(self.api_key, *scopes)


def require_scopes(api_key: ApiKey, *scopes: str) -> None:
    """PermissionDeniedError, naming what is missing, unless the key has every scope."""
    if not api_key.has_scopes(*scopes):
        missing = sorted(set(scopes) - set(api_key.scopes))
        raise PermissionDeniedError(
            f"The API key lacks the scope(s) {', '.join(missing)}; create a key that has them."
        )


def _scopes(scopes: Iterable[str]) -> list[str]:
    result = list(dict.fromkeys(s.strip() for s in scopes))
    if any(not s or not s.isprintable() or any(c.isspace() for c in s) for s in result):
        raise InvalidInputError(
            "Scopes are non-empty words without spaces or control characters, e.g. 'users:read'."
        )
    return result


class ApiKeys(ServiceBase):
    """Create, verify, list, revoke and rotate API keys."""

    async def create(
        self,
        user_id: uuid.UUID,
        name: str,
        *,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
        rate_limit_tier: str = "standard",
        session: AsyncSession | None = None,
    ) -> IssuedKey:
        """A new key for a live user; the plaintext is in the result and nowhere else.

        This is the trusted verb (for operators and application code): over HTTP the owner
        must also have a verified address and confirm it is them (`reauthenticate`). With
        `session`, the key and its `api_key.created` audit entry are written in that
        session's transaction, committed or rolled back with it (show the key, then commit:
        a key that could not be shown is never stored); without it, the call is a
        transaction of its own.
        """
        if not name.strip():
            raise InvalidInputError("Give the key a name, so its owner can tell keys apart.")
        check_text(name, "key name")
        if len(name.strip()) > 200:
            raise InvalidInputError("A key name has at most 200 characters.")
        if expires_in is not None and expires_at is not None:
            raise InvalidInputError("Give expires_in or expires_at, not both.")
        if expires_in is not None:
            if not timedelta(0) < expires_in <= timedelta(days=MAX_KEY_DAYS):
                raise InvalidInputError(
                    f"expires_in is a positive time of at most {MAX_KEY_DAYS:,} days."
                )
            expires_at = utcnow() + expires_in
        if expires_at is not None and expires_at.tzinfo is None:
            raise InvalidInputError("expires_at must be timezone-aware.")
        if session is not None:
            # The caller's pending changes first: their errors stay theirs, not the key's.
            await flush_pending(session, "api_keys.create")
            issued = await self._issue(session, user_id, name, scopes, expires_at, rate_limit_tier)
        else:
            async with self.db.transaction() as own:
                issued = await self._issue(own, user_id, name, scopes, expires_at, rate_limit_tier)
        logger.info("API key %s created for user %s", issued.api_key.prefix, user_id)
        return issued

    async def _issue(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        name: str,
        scopes: Iterable[str],
        expires_at: datetime | None,
        rate_limit_tier: str,
    ) -> IssuedKey:
        """The key's row and its audit entry, in `session`."""
        issued = await self._create(
            session, user_id, name.strip(), _scopes(scopes), expires_at, rate_limit_tier
        )
        await security_event(
            self.db,
            "api_key.created",
            user_id=user_id,
            resource_type="api_key",
            resource_id=issued.api_key.id,
            description=f"key {issued.api_key.prefix} ({issued.api_key.name})",
            session=session,
        )
        return issued

    async def _create(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        name: str,
        scopes: list[str],
        expires_at: datetime | None,
        rate_limit_tier: str,
    ) -> IssuedKey:
        await UserRepository(session).get(user_id)  # NotFoundError for unknown or deleted
        key, prefix = generate_api_key()
        row = ApiKey(
            user_id=user_id,
            name=name,
            prefix=prefix,
            key_hash=self._digest(key),
            scopes=scopes,
            rate_limit_tier=rate_limit_tier,
            expires_at=expires_at,
        )
        session.add(row)
        await session.flush()
        return IssuedKey(row, key)

    def _peppers(self) -> tuple[bytes, ...]:
        secret = self.db.settings.api_key_peppers
        return _parse_peppers(secret.get_secret_value()) if secret is not None else ()

    def _digest(self, key: str) -> str:
        """How a new key is stored: HMAC-SHA-256 with the newest pepper (SHA-256 without one)."""
        peppers = self._peppers()
        if peppers:
            return _hmac(peppers[0], key)
        if self.db.settings.environment == "production":
            raise ConfigurationError(
                "PGSTACK_API_KEY_PEPPERS is not set: in production API keys are stored only "
                "as an HMAC with a server secret. Set it (newest first, comma-separated)."
            )
        logger.warning("PGSTACK_API_KEY_PEPPERS is not set: API keys are stored as plain SHA-256")
        return digest(key)

    def _matches(self, key: str, stored: str) -> tuple[bool, bool]:
        """Whether `key` matches `stored`, and whether `stored` is in the current form."""
        peppers = self._peppers()
        if not stored.startswith(_HMAC):
            return same_digest(key, stored), not peppers
        found = [hmac.compare_digest(_hmac(p, key), stored) for p in peppers]
        return any(found), bool(found) and found[0]

    async def verify(self, key: str) -> VerifiedKey:
        """The key's row and user if the key is valid, else AuthenticationError.

        A malformed key is refused before any SQL. Otherwise one read finds the key by its
        prefix; its hash is compared in constant time; a revoked or expired key, or one whose
        user is deleted or deactivated, is refused. `last_used_at` is written at most once per
        `api_key_touch_interval`, so verifying is a read on the hot path.
        """
        prefix = parse_api_key(key)
        row = await read_one(self.db, _KEY_AND_USER, {"prefix": prefix}, ApiKey, User)
        if row is None:
            logger.info("API key %s refused: unknown, or its user is deleted or inactive", prefix)
            raise AuthenticationError(_REFUSED)
        api_key, user = row
        now = utcnow()
        matches, current = self._matches(key, api_key.key_hash)
        if not matches or not api_key.is_usable(now):
            logger.info("API key %s refused: wrong secret, revoked or expired", prefix)
            raise AuthenticationError(_REFUSED)
        interval = self.config.api_key_touch_interval
        rehash = None if current else self._digest(key)
        if rehash or api_key.last_used_at is None or api_key.last_used_at <= now - interval:
            # Bookkeeping, not the caller's data: the request's reads may stay on replicas.
            with bookkeeping():
                await self._touch(api_key, interval, rehash)
            api_key.last_used_at = now
        return VerifiedKey(api_key, user)

    async def _touch(self, api_key: ApiKey, interval: timedelta, rehash: str | None) -> None:
        async with self.db.transaction() as session:
            # The condition makes concurrent verifications write once, not once each.
            stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= func.now() - interval)
            values: dict[str, Any] = {"last_used_at": func.now()}
            if rehash is not None:
                # Stored before the newest pepper: store it with that pepper now.
                stale = or_(stale, ApiKey.key_hash == api_key.key_hash)
                values["key_hash"] = rehash
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == api_key.id, stale)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if rehash is not None:
            logger.info("API key %s re-hashed with the newest pepper", api_key.prefix)

    async def list_for(self, user_id: uuid.UUID, *, include_revoked: bool = False) -> list[ApiKey]:
        """A user's keys, newest first (hashes never leave the database in a usable form)."""
        async with self.db.transaction(readonly=True) as session:
            statement = select(ApiKey).where(ApiKey.user_id == user_id)
            if not include_revoked:
                statement = statement.where(
                    or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > func.now())
                )
            rows = await session.scalars(statement.order_by(ApiKey.created_at.desc()))
            return list(rows)

    async def get(self, key_id: uuid.UUID, *, user_id: uuid.UUID | None = None) -> ApiKey:
        """One key by id (only among `user_id`'s keys when given), or NotFoundError."""
        async with self.db.transaction(readonly=True) as session:
            api_key = await session.get(ApiKey, key_id)
        if api_key is None or (user_id is not None and api_key.user_id != user_id):
            raise NotFoundError(f"No API key with id {key_id}.")
        return api_key

    async def revoke(self, key_id: uuid.UUID, *, user_id: uuid.UUID | None = None) -> ApiKey:
        """Revoke a key now (only among `user_id`'s keys when given)."""
        return await self._revoke_at(key_id, user_id, None)

    async def _revoke_at(
        self, key_id: uuid.UUID, user_id: uuid.UUID | None, grace: timedelta | None
    ) -> ApiKey:
        async with self.db.transaction() as session:
            api_key = await session.get(ApiKey, key_id, with_for_update=True)
            if api_key is None or (user_id is not None and api_key.user_id != user_id):
                raise NotFoundError(f"No API key with id {key_id}.")
            when = utcnow() + (grace or timedelta(0))
            # A key revoked earlier stays revoked from its earlier time, and revoking it
            # again changes nothing and records nothing.
            if api_key.revoked_at is not None and api_key.revoked_at <= when:
                return api_key
            api_key.revoked_at = when
            await session.flush()
            await security_event(
                self.db,
                "api_key.revoked",
                user_id=api_key.user_id,
                resource_type="api_key",
                resource_id=api_key.id,
                description=f"key {api_key.prefix} revoked from {api_key.revoked_at.isoformat()}",
                session=session,
            )
        logger.info("API key %s revoked from %s", api_key.prefix, api_key.revoked_at)
        return api_key

    async def rotate(
        self,
        key_id: uuid.UUID,
        *,
        grace: timedelta = timedelta(hours=24),
        user_id: uuid.UUID | None = None,
    ) -> IssuedKey:
        """A new key with the same name, scopes, tier and expiry; the old one works for `grace`.

        The grace period lets every client switch to the new key before the old one stops.
        """
        async with self.db.transaction() as session:
            old = await session.get(ApiKey, key_id, with_for_update=True)
            if old is None or (user_id is not None and old.user_id != user_id):
                raise NotFoundError(f"No API key with id {key_id}.")
            now = utcnow()
            if not old.is_usable(now):
                raise InvalidInputError("The key is revoked or expired; create a new one instead.")
            issued = await self._create(
                session, old.user_id, old.name, old.scopes, old.expires_at, old.rate_limit_tier
            )
            old.revoked_at = now + grace
            await session.flush()
        logger.info(
            "API key %s rotated to %s; the old one works until %s",
            old.prefix,
            issued.api_key.prefix,
            old.revoked_at,
        )
        return issued
