"""Helpers the identity services share: clock, digests, the generic failure message."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from typing import Any

from pgstack.audit import SECURITY, AuditLog
from pgstack.db.database import Database
from pgstack.identity.config import IdentityConfig
from pgstack.identity.lockout import Lockout
from pgstack.identity.passwords import PasswordHasher
from pgstack.orm.context import current_actor

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


async def security_event(
    db: Database,
    action: str,
    *,
    user_id: uuid.UUID | None = None,
    outcome: str = "success",
    resource_type: str = "user",
    resource_id: object = None,
    description: str | None = None,
    request_data: object = None,
    session: Any = None,
) -> None:
    """Write a security entry to the audit log (category "security").

    The actor is whoever acts in the context (an administrator), else the user concerned
    (someone signing in); in `session`'s transaction when given.
    """
    actor = current_actor()
    await AuditLog(db).record(
        action,
        category=SECURITY,
        outcome=outcome,
        resource_type=resource_type,
        resource_id=resource_id if resource_id is not None else user_id,
        description=description,
        request_data=request_data,
        actor_id=actor if actor is not None else user_id,
        session=session,
    )
