"""Helpers the identity services share: clock, digests, the generic failure message."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pgstack.db.database import Database
from pgstack.identity.config import IdentityConfig
from pgstack.identity.lockout import Lockout
from pgstack.identity.passwords import PasswordHasher
from pgstack.repository import fast
from pgstack.repository.core import model_info

# One message for every way a login can fail (unknown e-mail, wrong password, locked,
# external account), so the answer never tells an attacker which accounts exist.
LOGIN_FAILED = (
    "The e-mail address or password is wrong, or the account is temporarily locked after "
    "repeated failures. Check them and try again later, or reset your password."
)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def digest(secret: str) -> str:
    """The SHA-256 of a high-entropy secret (token, key, code) as stored in the database.

    A fast hash is enough here, unlike for passwords: the secrets carry 80 (recovery codes)
    to 256 bits of randomness, so a stolen digest cannot be reversed by guessing.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(secret: str, stored: str) -> bool:
    """Whether a secret matches a stored digest, in time independent of where they differ."""
    return hmac.compare_digest(digest(secret), stored)


async def read_one(
    db: Database, statement: Any, values: Mapping[str, Any], *models: type[Any]
) -> Any | None:
    """The one row of `select(*models)...` (one object per model), or None if none matches.

    The identity checks every request makes (a session token, an API key) read one row: on
    the read lane that is one round trip (no BEGIN READ ONLY and COMMIT around it), with the
    objects made as the ORM makes them. Where the lane cannot serve it (off, SQL echo on),
    the same statement runs in a read-only transaction; either way the answer is the same.
    """
    async with db.session() as session:
        if fast.session_is_fresh(session) and session.bind is not None:
            infos = tuple(model_info(model) for model in models)
            planned = fast.entities_plan(infos, statement, session.bind.dialect, values)
            if planned is not None:
                done, row = await fast.fetch_one(session, infos, *planned)
                if done:
                    return row
    async with db.transaction(readonly=True) as session:
        return (await session.execute(statement, values)).one_or_none()


class ServiceBase:
    """The database, settings, password hasher and lockout each identity service uses."""

    def __init__(
        self,
        db: Database,
        config: IdentityConfig | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.db = db
        self.config = config or IdentityConfig()
        self.hasher = hasher or PasswordHasher(self.config)
        self.lockout = Lockout(db, self.config, self.hasher)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db!r})"
