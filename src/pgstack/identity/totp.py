"""Two-factor authentication: TOTP with replay protection, and single-use recovery codes."""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass

import pyotp
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm.attributes import set_committed_value

from pgstack.db.database import Database
from pgstack.db.session import Session
from pgstack.errors import AuthenticationError, InvalidInputError
from pgstack.identity._common import ServiceBase, digest, security_event
from pgstack.identity.config import IdentityConfig
from pgstack.identity.lockout import Check, Outcome
from pgstack.identity.models import RecoveryCode, User
from pgstack.identity.users import UserRepository

logger = logging.getLogger("pgstack.identity")

_STEP = 30  # seconds per TOTP code, what every authenticator app uses
_WINDOW = 1  # steps either side accepted, for clocks a little off


@dataclass(frozen=True)
class Enrolment:
    """What a user needs to add the account to an authenticator app (shown once)."""

    secret: str
    provisioning_uri: str

    def __repr__(self) -> str:
        return "Enrolment(secret='***', provisioning_uri='***')"


def _recovery_code() -> str:
    # 80 random bits in base32, grouped for reading aloud: safe to keep as a plain SHA-256.
    raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def _normalise_code(code: str) -> str:
    # Typed with or without the dashes and spaces it is shown with.
    return code.strip().lower().replace(" ", "").replace("-", "")


def _code_digest(code: str) -> str:
    """The stored digest of a recovery code: of its dashed form, as it is shown."""
    raw = _normalise_code(code)
    return digest("-".join(raw[i : i + 4] for i in range(0, len(raw), 4)))


async def spend_code(db: Database, config: IdentityConfig, user: User, code: str) -> bool:
    """Whether `code` is a current TOTP code or an unused recovery code of `user`; spends it.

    No lockout here: callers count the attempt first (see `Lockout`).
    """
    if not user.two_factor_enabled or user.totp_secret is None:
        return False
    normalised = _normalise_code(code)
    async with db.transaction() as session:
        if normalised.isdigit():
            return await _accept_totp(session, config, user, normalised)
        return await _use_recovery_code(session, user.id, normalised)


class TwoFactor(ServiceBase):
    """Enrol, confirm, verify and disable TOTP, and use recovery codes.

    Every code or password checked here goes through the same lockout as a login.
    """

    async def enrol(self, user_id: uuid.UUID) -> Enrolment:
        """Start enrolment: a new secret (stored encrypted) and its provisioning URI.

        Two-factor is not on until `confirm` receives a code made from this secret. Over
        HTTP both need the current password or a fresh sign-in (`reauthenticate`).
        """
        secret = pyotp.random_base32()
        async with self.db.transaction() as session:
            user = await UserRepository(session).get(user_id)
            if user.two_factor_enabled:
                raise InvalidInputError(
                    "Two-factor authentication is already on; disable it first to enrol again."
                )
            user.totp_secret = secret
            user.totp_last_step = None
            await session.flush()
            email = user.email
        uri = pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=self.config.totp_issuer)
        return Enrolment(secret, uri)

    async def confirm(self, user_id: uuid.UUID, code: str) -> list[str]:
        """Turn two-factor on with a first valid code; returns the recovery codes, shown once."""
        user = await self._get(user_id)
        if user.two_factor_enabled:
            raise InvalidInputError("Two-factor authentication is already on.")
        if user.totp_secret is None:
            raise InvalidInputError("Start with enrol: there is no secret to confirm yet.")

        async def check(user: User | None) -> Outcome:
            if user is None or user.two_factor_enabled or user.totp_secret is None:
                return None
            async with self.db.transaction() as session:
                accepted = await _accept_totp(session, self.config, user, code)
            return {"two_factor_enabled": True} if accepted else None

        if await self.lockout.run(User.id == user_id, check) is None:
            raise AuthenticationError(
                "The code does not match (or the account is locked after repeated failures); "
                "check the authenticator app's clock and try the next code."
            )
        async with self.db.transaction() as session:
            codes = await self._new_recovery_codes(session, user_id)
            await security_event(self.db, "auth.2fa_enabled", user_id=user_id, session=session)
        logger.info("user %s turned two-factor authentication on", user_id)
        return codes

    async def verify(self, user_id: uuid.UUID, code: str) -> bool:
        """Whether `code` is a current TOTP code or an unused recovery code; either is spent.

        The check counts towards the lockout: False while the account is locked.
        """
        return await self.lockout.run(User.id == user_id, self._code_check(code)) is not None

    async def regenerate_recovery_codes(self, user_id: uuid.UUID, code: str) -> list[str]:
        """Replace every recovery code, given a valid TOTP code; the old ones stop working."""

        async def check(user: User | None) -> Outcome:
            if user is None or not user.two_factor_enabled or not code.strip().isdigit():
                return None
            async with self.db.transaction() as session:
                return {} if await _accept_totp(session, self.config, user, code) else None

        if await self.lockout.run(User.id == user_id, check) is None:
            raise AuthenticationError("A valid two-factor code is needed to do that.")
        async with self.db.transaction() as session:
            return await self._new_recovery_codes(session, user_id)

    async def disable(
        self, user_id: uuid.UUID, *, code: str | None = None, password: str | None = None
    ) -> None:
        """Turn two-factor off; needs a valid code (TOTP or recovery) or the password."""
        if code is None and password is None:
            raise InvalidInputError("Give a two-factor code or the password to disable it.")
        check = self._code_check(code) if code is not None else None
        if check is None:
            assert password is not None
            check = self.lockout.password_check(password)
        if await self.lockout.run(User.id == user_id, check) is None:
            raise AuthenticationError(
                "The code or password is wrong (or the account is locked after repeated "
                "failures); two-factor stays on."
            )
        await self.reset(user_id)

    async def reset(self, user_id: uuid.UUID) -> None:
        """Turn two-factor off with no code: an administrator's recovery for a lost device.

        Logged as a warning, so the reset leaves a trace.
        """
        async with self.db.transaction() as session:
            user = await UserRepository(session).get(user_id)
            user.two_factor_enabled = False
            user.totp_secret = None
            user.totp_last_step = None
            await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
            await session.flush()
            await security_event(self.db, "auth.2fa_disabled", user_id=user_id, session=session)
        logger.warning("two-factor authentication of user %s was turned off", user_id)

    async def remaining_recovery_codes(self, user_id: uuid.UUID) -> int:
        """How many recovery codes the user has left."""
        async with self.db.transaction(readonly=True) as session:
            count = await session.scalar(
                select(func.count()).where(
                    RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
                )
            )
        return int(count or 0)

    async def _get(self, user_id: uuid.UUID) -> User:
        async with self.db.transaction(readonly=True) as session:
            return await UserRepository(session).get(user_id)

    def _code_check(self, code: str) -> Check:
        async def check(user: User | None) -> Outcome:
            if user is None:
                return None
            return {} if await spend_code(self.db, self.config, user, code) else None

        return check

    async def _new_recovery_codes(self, session: Session, user_id: uuid.UUID) -> list[str]:
        await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        codes = [_recovery_code() for _ in range(self.config.recovery_code_count)]
        session.add_all(RecoveryCode(user_id=user_id, code_hash=_code_digest(c)) for c in codes)
        await session.flush()
        return codes


async def _accept_totp(session: Session, config: IdentityConfig, user: User, code: str) -> bool:
    secret = user.totp_secret
    code = _normalise_code(code)
    if secret is None or not code.isdigit() or len(code) != 6:
        return False
    totp = pyotp.TOTP(secret)
    current = int(config.clock()) // _STEP
    matched: int | None = None
    for step in range(current - _WINDOW, current + _WINDOW + 1):
        if hmac.compare_digest(totp.at(step * _STEP), code):
            matched = step
    if matched is None:
        return False
    # Spend the step atomically: a code, once accepted, and every code before it, is refused,
    # even when two requests race with the same code.
    result = await session.execute(
        update(User)
        .where(
            User.id == user.id,
            or_(User.totp_last_step.is_(None), User.totp_last_step < matched),
        )
        .values(totp_last_step=matched)
        .execution_options(synchronize_session=False)
    )
    accepted = bool(getattr(result, "rowcount", 0))
    if accepted:
        # What the row now holds, without marking the object changed (no second UPDATE).
        set_committed_value(user, "totp_last_step", matched)
    return accepted


async def _use_recovery_code(session: Session, user_id: uuid.UUID, code: str) -> bool:
    result = await session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.code_hash == _code_digest(code),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=func.now())
        .returning(RecoveryCode.id)
    )
    used = result.scalar_one_or_none() is not None
    if used:
        logger.info("user %s used a recovery code", user_id)
    return used
