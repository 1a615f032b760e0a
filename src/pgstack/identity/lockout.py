"""The lockout: one guard in front of every check of a password, TOTP code or recovery code.

An attempt is counted in the database *before* the secret is checked, by one conditional
UPDATE that also refuses it while the account is locked. Concurrent guesses therefore
serialise on the user's row: at most `max_failed_logins` of them are ever checked against
the real secret, however many arrive at once. The attempt that reaches the limit locks the
account at once (it is presumed to fail); if it turns out right, it alone may clear the lock.
A success clears the count only while the account is not locked, so a right password
racing wrong ones cannot lift a lock they set.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, update

from pgstack.db.database import Database
from pgstack.identity._rows import write_one
from pgstack.identity.config import IdentityConfig
from pgstack.identity.models import User
from pgstack.identity.passwords import PasswordHasher

logger = logging.getLogger("pgstack.identity")

#: What a check returns: None when it failed, else the extra columns to write on success.
Outcome = dict[str, Any] | None
Check = Callable[[User | None], Awaitable[Outcome]]


@dataclass(frozen=True)
class Attempt:
    """An admitted attempt: the user as counted (None: unknown, deleted or locked)."""

    user: User | None
    number: int = 0


class Lockout:
    """Admit, count and settle attempts at a user's secrets; see the module docstring."""

    def __init__(self, db: Database, config: IdentityConfig, hasher: PasswordHasher) -> None:
        self.db = db
        self.config = config
        self.hasher = hasher
        # The admitting UPDATE but for whom it counts: built once (it runs on every login).
        expired = User.locked_until <= func.now()
        count = case((expired, 1), else_=User.failed_login_count + 1)
        self._admit = (
            update(User)
            .where(User.deleted_at.is_(None), or_(User.locked_until.is_(None), expired))
            .values(
                failed_login_count=count,
                locked_until=case(
                    (count >= config.max_failed_logins, func.now() + config.lockout),
                    else_=None,
                ),
            )
            .returning(User)
            .execution_options(synchronize_session=False, populate_existing=True)
        )

    async def admit(self, who: ColumnElement[bool]) -> Attempt:
        """Count one attempt for the live, unlocked user `who` matches; Attempt(None) if none.

        An unknown address and a locked account cost the same single UPDATE (matching no
        row), so neither the answer nor its timing tells them from a wrong password.
        """
        # One statement by itself (no BEGIN/COMMIT around it): see `write_one`.
        row = await write_one(self.db, self._admit.where(who), {}, User)
        user: User | None = row[0] if row is not None else None
        if user is None:
            return Attempt(None)
        number = user.failed_login_count
        if number >= self.config.max_failed_logins:
            logger.warning(
                "user %s locked for %s: attempt %d in a row is the last one checked",
                user.id,
                self.config.lockout,
                number,
            )
            # Imported here: pgstack.identity._common imports this module.
            from pgstack.identity._common import security_event

            # Whoever made the attempt acts, as the context knows them (anonymous: no actor,
            # recorded as "system", as a failed login is); the locked user is the resource.
            await security_event(
                self.db,
                "auth.lockout",
                outcome="failure",
                resource_type="user",
                resource_id=user.id,
                description=f"locked for {self.config.lockout} after {number} attempts",
            )
        return Attempt(user, number)

    async def settle(self, attempt: Attempt, values: dict[str, Any]) -> User | None:
        """Clear the count and write `values` after a success; None if a lock came between.

        Only the attempt that itself reached the limit may clear a current lock: any other
        lock was set by attempts that are presumed wrong, and stands.
        """
        assert attempt.user is not None
        not_locked = or_(User.locked_until.is_(None), User.locked_until <= func.now())
        if attempt.number >= self.config.max_failed_logins:
            not_locked = or_(not_locked, User.failed_login_count == attempt.number)
        row = await write_one(
            self.db,
            update(User)
            .where(User.id == attempt.user.id, not_locked)
            .values(failed_login_count=0, locked_until=None, **values)
            .returning(User)
            .execution_options(synchronize_session=False, populate_existing=True),
            {},
            User,
        )
        user: User | None = row[0] if row is not None else None
        if user is None:
            logger.info(
                "user %s: a right secret was refused, the account is locked", attempt.user.id
            )
        return user

    async def run(self, who: ColumnElement[bool], check: Check) -> User | None:
        """Admit an attempt, run `check` on the user, and settle it: the user, or None.

        `check` receives None for an unknown or locked user and must then do the same work
        (e.g. verify a dummy hash) and fail. Whatever it raises leaves the attempt counted.
        """
        attempt = await self.admit(who)
        outcome = await check(attempt.user)
        if outcome is None or attempt.user is None:
            return None
        return await self.settle(attempt, outcome)

    async def password(self, who: ColumnElement[bool], password: str) -> User | None:
        """The user, if `password` is theirs and the account is not locked; else None."""
        return await self.run(who, self.password_check(password))

    def password_check(self, password: str) -> Check:
        """A check of `password` that costs one hash even when there is no user."""

        async def check(user: User | None) -> Outcome:
            stored = user.password_hash if user is not None else None
            ok, new_hash = await self.hasher.averify_and_update(password, stored)
            if not ok:
                return None
            # A bcrypt or weaker argon2 hash: replace it now that the password is known.
            return {"password_hash": new_hash} if new_hash is not None else {}

        return check
