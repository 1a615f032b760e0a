"""Authentication: login with lockout, sessions, password change, reset and verification."""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update

from pgstack.db.session import Session
from pgstack.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from pgstack.identity._common import LOGIN_FAILED, ServiceBase, digest, security_event, utcnow
from pgstack.identity._rows import read_one, write_one
from pgstack.identity.lockout import Outcome
from pgstack.identity.models import LoginSession, Provider, TokenPurpose, User, UserToken
from pgstack.identity.passwords import require_strong_password
from pgstack.identity.text import has_control_characters
from pgstack.identity.totp import spend_code
from pgstack.identity.users import UserRepository, end_sessions
from pgstack.orm.mixins import new_uuid7
from pgstack.orm.types import normalise_email

logger = logging.getLogger("pgstack.identity")

_INVALID_LINK = (
    "The link or token is not valid: it was already used, has expired, or was replaced. "
    "Ask for a new one."
)


_BAD_CREDENTIAL = (
    "The password is wrong, or the account is temporarily locked after repeated failures; "
    "check it and try again later."
)


# Every authenticated request runs this: built once, the token's digest bound per call.
_SESSION_USER = (
    select(User)
    .join(LoginSession, LoginSession.user_id == User.id)
    .where(
        LoginSession.token_hash == bindparam("token_hash"),
        LoginSession.revoked_at.is_(None),
        LoginSession.expires_at > func.now(),
        User.deleted_at.is_(None),
        User.is_active.is_(True),
    )
)


_NEW_SESSION = (
    insert(LoginSession)
    .values(
        id=bindparam("id"),
        user_id=bindparam("user_id"),
        token_hash=bindparam("token_hash"),
        expires_at=bindparam("expires_at"),
    )
    .returning(LoginSession)
)


class TwoFactorRequiredError(AuthenticationError):
    """The password was right, but the account also needs its two-factor code."""

    title = "Two-factor code required"


@dataclass(frozen=True)
class LoginResult:
    """A signed-in user and the opaque session token to hand them (shown once)."""

    user: User
    token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"LoginResult(user={self.user.id}, token='***', expires_at={self.expires_at})"


@dataclass(frozen=True)
class IssuedToken:
    """A single-use token to deliver to its user (shown once)."""

    user: User
    token: str

    def __repr__(self) -> str:
        return f"IssuedToken(user={self.user.id}, token='***')"


class Authenticator(ServiceBase):
    """Check passwords, keep sessions, change and reset passwords, verify e-mail addresses."""

    async def authenticate(self, email: str, password: str, *, otp: str | None = None) -> User:
        """The user these credentials belong to, or AuthenticationError.

        `email` may also be the user's username (anything without an @).

        The attempt is counted before the password is checked (see `Lockout`): after
        `max_failed_logins` attempts without a success the account is locked for `lockout`,
        and even the right password is refused, however many guesses arrive at once. An
        unknown address costs the same UPDATE and password hash as a known one, so neither
        answer nor timing tells which accounts exist. An account with two-factor on also
        needs `otp`: a current TOTP code or an unused recovery code, in the same attempt.
        """
        check_password = self.lockout.password_check(password)

        async def check(user: User | None) -> Outcome:
            values = await check_password(user)
            if user is None or values is None:
                return None
            if not user.is_active:
                raise AuthenticationError(
                    "This account is deactivated; ask an administrator to activate it."
                )
            if user.two_factor_enabled:
                if not otp:
                    raise TwoFactorRequiredError(
                        "This account uses two-factor authentication: send the code from your "
                        "authenticator app, or a recovery code."
                    )
                if not await spend_code(self.db, self.config, user, otp):
                    logger.info("login failed: wrong two-factor code for user %s", user.id)
                    raise AuthenticationError(
                        "The two-factor code is wrong or was already used; wait for the next one."
                    )
            return {**values, "last_login_at": func.now(), "login_count": User.login_count + 1}

        if has_control_characters(email):
            email = ""  # matches no one, and still costs the same work as an unknown address
        # A login name without @ is a username: the same lockout, the same work, the same
        # answer as an e-mail address.
        who = (
            User.email == normalise_email(email)
            if "@" in email or not email
            else User.username == email.strip().lower()
        )
        try:
            user = await self.lockout.run(who, check)
        except AuthenticationError as error:
            if not isinstance(error, TwoFactorRequiredError):
                await self._login_failed(email, error.message)
            raise
        if user is None:
            logger.info("login failed: unknown address, locked account or wrong password")
            await self._login_failed(email, LOGIN_FAILED)
            raise AuthenticationError(LOGIN_FAILED)
        logger.info("user %s signed in", user.id)
        await security_event(self.db, "auth.login", user_id=user.id)
        return user

    async def _login_failed(self, login: str, reason: str) -> None:
        # The name tried is kept (it says which account is under attack); never the secret.
        await security_event(
            self.db,
            "auth.login",
            outcome="failure",
            resource_id=login[:320] or None,
            description=reason,
        )

    # -- sessions -------------------------------------------------------------------------------

    async def login(self, email: str, password: str, *, otp: str | None = None) -> LoginResult:
        """Authenticate and open a session; the returned token is shown once, stored hashed."""
        return await self._open_session(await self.authenticate(email, password, otp=otp))

    async def login_external(self, provider: str, provider_user_id: str) -> LoginResult:
        """Open a session for the user an external provider vouched for; the token shown once.

        Call it after the application has checked the provider's assertion (an OpenID
        Connect ID token's signature, issuer, audience and expiry): pgstack trusts the pair
        as given. The live user with that provider and provider user id is signed in as by
        `login` (login count, last login, a security entry). A deactivated user is an
        AuthenticationError; an identity no user has is a NotFoundError: create the user
        first with `users.create(email, provider=..., provider_user_id=...)`.
        """
        async with self.db.transaction() as session:
            user = await session.scalar(
                update(User)
                .where(
                    User.provider == provider,
                    User.provider != Provider.LOCAL.value,
                    User.provider_user_id == provider_user_id,
                    User.deleted_at.is_(None),
                )
                .values(
                    last_login_at=case((User.is_active, func.now()), else_=User.last_login_at),
                    login_count=User.login_count + case((User.is_active, 1), else_=0),
                )
                .returning(User)
            )
        if user is None:
            raise NotFoundError(
                f"No user signs in with this {provider[:40]} identity; create one with "
                "users.create(email, provider=..., provider_user_id=...)."
            )
        if not user.is_active:
            await self._login_failed(f"{provider}:{provider_user_id}", "deactivated account")
            raise AuthenticationError(
                "This account is deactivated; ask an administrator to activate it."
            )
        logger.info("user %s signed in through %s", user.id, user.provider)
        await security_event(
            self.db, "auth.login", user_id=user.id, request_data={"provider": user.provider}
        )
        return await self._open_session(user)

    async def _open_session(self, user: User) -> LoginResult:
        token = "pgss_" + secrets.token_urlsafe(32)
        expires = utcnow() + self.config.session_ttl
        # One INSERT by itself (see `write_one`); the id is made here, as the model's default.
        await write_one(
            self.db,
            _NEW_SESSION,
            {
                "id": new_uuid7(),
                "user_id": user.id,
                "token_hash": digest(token),
                "expires_at": expires,
            },
            LoginSession,
        )
        return LoginResult(user, token, expires)

    async def user_for_session(self, token: str) -> User:
        """The user a live session token belongs to, or AuthenticationError."""
        row = await read_one(self.db, _SESSION_USER, {"token_hash": digest(token)}, User)
        if row is None:
            raise AuthenticationError(
                "The session is not valid (signed out, expired or unknown); sign in again."
            )
        user: User = row[0]
        return user

    async def logout(self, token: str) -> None:
        """End the session of this token (no error if it is already over)."""
        async with self.db.transaction() as session:
            await session.execute(
                update(LoginSession)
                .where(LoginSession.token_hash == digest(token), LoginSession.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )

    async def purge_expired(self, *, older_than: timedelta = timedelta(days=1)) -> int:
        """Delete sessions and single-use tokens that ended more than `older_than` ago.

        Returns how many rows went. Run it now and then (a daily job); ended rows are
        already refused, so this only keeps the tables small.
        """
        cutoff = utcnow() - older_than
        async with self.db.transaction() as session:
            sessions = await session.execute(
                delete(LoginSession).where(
                    or_(LoginSession.expires_at < cutoff, LoginSession.revoked_at < cutoff)
                )
            )
            tokens = await session.execute(
                delete(UserToken).where(
                    or_(UserToken.expires_at < cutoff, UserToken.used_at < cutoff)
                )
            )
        return int(getattr(sessions, "rowcount", 0)) + int(getattr(tokens, "rowcount", 0))

    # -- passwords ------------------------------------------------------------------------------

    async def change_password(
        self, user_id: uuid.UUID, current: str, new: str, *, keep_api_keys: bool = False
    ) -> User:
        """Change a password, given the current one; outstanding reset links stop working.

        Every session of the user ends, and every API key is revoked unless `keep_api_keys`,
        so a thief who signed in with the old password, or made a key then, is out. The
        current password is checked under the lockout, like a login.
        """
        async with self.db.transaction(readonly=True) as session:
            user = await UserRepository(session).get(user_id)
        require_strong_password(new, email=user.email, name=user.name, config=self.config)
        if await self.lockout.password(User.id == user_id, current) is None:
            raise AuthenticationError(_BAD_CREDENTIAL)
        new_hash = await self.hasher.ahash(new)
        async with self.db.transaction() as session:
            changed = await self._store_password(session, user_id, new_hash, keep_api_keys)
        logger.info(
            "user %s changed their password; sessions ended%s",
            user_id,
            "" if keep_api_keys else ", API keys revoked",
        )
        return changed

    async def reauthenticate(
        self,
        user_id: uuid.UUID,
        *,
        password: str | None = None,
        session_token: str | None = None,
    ) -> None:
        """Make sure the caller is the user: their current password, or a fresh sign-in.

        Guards what a stolen session must not do (enrol or remove two-factor, mint API keys).
        With `password`, it is checked under the lockout (AuthenticationError if wrong); else
        `session_token` must be the user's and younger than `reauthentication_window`
        (PermissionDeniedError otherwise).
        """
        if password is not None:
            if await self.lockout.password(User.id == user_id, password) is None:
                raise AuthenticationError(_BAD_CREDENTIAL)
            return
        if session_token is not None:
            async with self.db.transaction(readonly=True) as session:
                fresh = await session.scalar(
                    select(LoginSession.id).where(
                        LoginSession.token_hash == digest(session_token),
                        LoginSession.user_id == user_id,
                        LoginSession.revoked_at.is_(None),
                        LoginSession.expires_at > func.now(),
                        LoginSession.created_at > func.now() - self.config.reauthentication_window,
                    )
                )
            if fresh is not None:
                return
        minutes = int(self.config.reauthentication_window.total_seconds() // 60)
        raise PermissionDeniedError(
            "Confirm it is you: send your current password, or sign in again (a sign-in "
            f"counts as fresh for {minutes} minutes)."
        )

    async def _store_password(
        self, session: Session, user_id: uuid.UUID, new_hash: str, keep_api_keys: bool
    ) -> User:
        # The failure count and a lock stay as they are: only a right password clears them.
        user = await UserRepository(session).get(user_id)
        await security_event(self.db, "auth.password_changed", user_id=user_id, session=session)
        user.password_hash = new_hash
        user.password_changed_at = utcnow()
        await session.execute(
            update(UserToken)
            .where(
                UserToken.user_id == user_id,
                UserToken.purpose == TokenPurpose.PASSWORD_RESET.value,
                UserToken.used_at.is_(None),
            )
            .values(used_at=func.now())
        )
        await end_sessions(session, user_id, api_keys=not keep_api_keys)
        await session.flush()
        return user

    async def request_password_reset(self, email: str) -> IssuedToken | None:
        """A reset token and its user, to send to this address; None without a local account.

        One transaction. Callers answer the same way either way, and deliver the token after
        answering (as the router does), so neither the answer nor its timing reveals accounts.
        """
        if has_control_characters(email):
            return None
        async with self.db.transaction() as session:
            user = await UserRepository(session).get_by_or_none(email=normalise_email(email))
            if user is None or user.is_external or not user.is_active:
                logger.info("password reset asked for an address with no local account")
                return None
            token = await _issue(
                session, user.id, TokenPurpose.PASSWORD_RESET, self.config.reset_token_ttl
            )
        logger.info("password reset token issued for user %s", user.id)
        return IssuedToken(user, token)

    async def reset_password(self, token: str, new: str) -> User:
        """Set a new password with a reset token; the token then stops working."""
        # A password change marks every outstanding reset token used, so a token issued
        # before it fails here like a used one.
        async with self.db.transaction() as session:
            row = await _consume(session, token, TokenPurpose.PASSWORD_RESET)
            user = await UserRepository(session).get_or_none(row.user_id)
            if user is None:
                raise AuthenticationError(_INVALID_LINK)
            require_strong_password(new, email=user.email, name=user.name, config=self.config)
            new_hash = await self.hasher.ahash(new)
            changed = await self._store_password(session, user.id, new_hash, False)
        logger.info(
            "user %s reset their password with a reset token; sessions ended, API keys revoked",
            changed.id,
        )
        return changed

    # -- e-mail verification --------------------------------------------------------------------

    async def request_email_verification(self, user_id: uuid.UUID) -> str:
        """A verification token to send to the user's address."""
        async with self.db.transaction() as session:
            user = await UserRepository(session).get(user_id)
            if user.is_verified:
                raise InvalidInputError(f"{user.email} is already verified.")
            return await _issue(
                session,
                user.id,
                TokenPurpose.EMAIL_VERIFICATION,
                self.config.verification_token_ttl,
            )

    async def verify_email(self, token: str) -> User:
        """Mark the address of the token's user verified; the token then stops working."""
        async with self.db.transaction() as session:
            row = await _consume(session, token, TokenPurpose.EMAIL_VERIFICATION)
            user = await UserRepository(session).get_or_none(row.user_id)
            if user is None:
                raise AuthenticationError(_INVALID_LINK)
            if user.email_verified_at is None:
                user.email_verified_at = utcnow()
                await session.flush()
        logger.info("user %s verified their e-mail address", user.id)
        return user


async def _issue(
    session: Session, user_id: uuid.UUID, purpose: TokenPurpose, ttl: timedelta
) -> str:
    token = secrets.token_urlsafe(32)  # 256 bits: unguessable, so SHA-256 of it is safe to keep
    session.add(
        UserToken(
            user_id=user_id,
            purpose=purpose.value,
            token_hash=digest(token),
            expires_at=utcnow() + ttl,
        )
    )
    await session.flush()
    return token


async def _consume(session: Session, token: str, purpose: TokenPurpose) -> UserToken:
    # One UPDATE marks the token used only if it is unused and unexpired: two requests racing
    # with the same token cannot both succeed.
    result = await session.execute(
        update(UserToken)
        .where(
            and_(
                UserToken.token_hash == digest(token),
                UserToken.purpose == purpose.value,
                UserToken.used_at.is_(None),
                UserToken.expires_at > func.now(),
            )
        )
        .values(used_at=func.now())
        .returning(UserToken)
        .execution_options(synchronize_session=False)
    )
    row = result.scalar_one_or_none()
    if row is None:
        raise AuthenticationError(_INVALID_LINK)
    return row
