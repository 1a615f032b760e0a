"""Identity tables: users, API keys, single-use tokens, recovery codes and login sessions."""

from __future__ import annotations

import enum
import re
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from pgstack.errors import InvalidInputError
from pgstack.orm import (
    Base,
    Email,
    EncryptedText,
    SoftDelete,
    Timestamped,
    UTCDateTime,
    UUIDPrimaryKey,
    Versioned,
)


class Provider(enum.StrEnum):
    """Where a user signs in: a local password, or an external identity provider."""

    LOCAL = "local"
    AZURE_AD = "azure_ad"
    AWS_COGNITO = "aws_cognito"
    GOOGLE = "google"
    GITHUB = "github"
    OIDC = "oidc"
    SLACK = "slack"


#: The shape of a provider name; applications add theirs with `register_provider`.
PROVIDER_NAME = r"^[a-z][a-z0-9_]{0,39}$"
_registered: set[str] = {p.value for p in Provider}


def register_provider(name: str) -> str:
    """Let users sign in through a provider of the application's own (`okta`, `keycloak`)."""
    if re.fullmatch(PROVIDER_NAME, name) is None:
        raise InvalidInputError(
            f"{name[:60]!r} is not a provider name: use 1-40 lower-case letters, digits or "
            "underscores, starting with a letter."
        )
    _registered.add(name)
    return name


def known_providers() -> frozenset[str]:
    """The built-in provider names and those the application registered."""
    return frozenset(_registered)


class TokenPurpose(enum.StrEnum):
    """What a single-use token proves when it comes back."""

    PASSWORD_RESET = "password_reset"  # noqa: S105 - a purpose name, not a secret
    EMAIL_VERIFICATION = "email_verification"


def _one_of(column: str, values: type[enum.StrEnum]) -> str:
    # Text + CHECK instead of a PostgreSQL ENUM: adding a value is a plain constraint swap,
    # and a downgrade leaves no orphaned type behind.
    listed = ", ".join(f"'{v.value}'" for v in values)
    return f"{column} IN ({listed})"


def _text_array() -> Mapped[list[str]]:
    return mapped_column(
        ARRAY(Text), nullable=False, default=list, server_default=text("'{}'::text[]")
    )


class User(UUIDPrimaryKey, Timestamped, SoftDelete, Versioned, Base):
    """A person or service account that signs in with a password or an external provider."""

    __tablename__ = "users"
    __table_args__ = (
        # A shape, not a list: applications register provider names of their own.
        CheckConstraint(f"provider ~ '{PROVIDER_NAME}'", name="provider"),
        CheckConstraint("login_count >= 0", name="login_count"),
        CheckConstraint("failed_login_count >= 0", name="failed_login_count"),
        # Case-insensitive because the Email type stores addresses lower-cased; partial so
        # that a soft-deleted account does not block signing up again with its address.
        Index("uq_users_email", "email", unique=True, postgresql_where=text("deleted_at IS NULL")),
        Index(
            "uq_users_username",
            "username",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        UniqueConstraint("provider", "provider_user_id"),
    )

    email: Mapped[str] = mapped_column(Email(), nullable=False)
    #: Optional second login name, stored lower-case (see `check_username`).
    username: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    avatar_url: Mapped[str | None] = mapped_column(Text)
    bio: Mapped[str | None] = mapped_column(Text)
    password_hash: Mapped[str | None] = mapped_column(Text, info={"secret": True})
    provider: Mapped[str] = mapped_column(
        Text, nullable=False, default=Provider.LOCAL.value, server_default=Provider.LOCAL.value
    )
    provider_user_id: Mapped[str | None] = mapped_column(Text)
    roles: Mapped[list[str]] = _text_array()
    groups: Mapped[list[str]] = _text_array()
    is_active: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=text("true")
    )
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    two_factor_enabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    totp_secret: Mapped[str | None] = mapped_column(EncryptedText())
    # The last TOTP time step accepted: a code of that step or earlier is a replay.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    login_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    failed_login_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # -- roles and groups ----------------------------------------------------------------------

    def has_role(self, role: str) -> bool:
        """Whether the user has this role."""
        return role in self.roles

    def has_any_role(self, *roles: str) -> bool:
        """Whether the user has at least one of these roles."""
        return any(r in self.roles for r in roles)

    def has_all_roles(self, *roles: str) -> bool:
        """Whether the user has every one of these roles."""
        return all(r in self.roles for r in roles)

    def add_role(self, role: str) -> None:
        """Give the user a role (no change if they have it); saved at the next flush."""
        if role not in self.roles:
            # A new list, not append(): the ORM sees an assignment, so the change is saved.
            self.roles = [*self.roles, role]

    def remove_role(self, role: str) -> None:
        """Take a role away (no change if they lack it); saved at the next flush."""
        if role in self.roles:
            self.roles = [r for r in self.roles if r != role]

    def is_in_group(self, group: str) -> bool:
        """Whether the user belongs to this group."""
        return group in self.groups

    def is_in_any_group(self, *groups: str) -> bool:
        """Whether the user belongs to at least one of these groups."""
        return any(g in self.groups for g in groups)

    def add_group(self, group: str) -> None:
        """Add the user to a group; saved at the next flush."""
        if group not in self.groups:
            self.groups = [*self.groups, group]

    def remove_group(self, group: str) -> None:
        """Remove the user from a group; saved at the next flush."""
        if group in self.groups:
            self.groups = [g for g in self.groups if g != group]

    # -- status ---------------------------------------------------------------------------------

    def activate(self) -> None:
        """Let the user sign in again."""
        self.is_active = True

    def deactivate(self) -> None:
        """Stop the user from signing in; their data stays."""
        self.is_active = False

    @property
    def is_external(self) -> bool:
        """Whether the user signs in through an external provider (no local password)."""
        return self.provider != Provider.LOCAL.value

    @property
    def is_verified(self) -> bool:
        """Whether the user has proven they own their e-mail address."""
        return self.email_verified_at is not None

    def is_locked(self, now: datetime) -> bool:
        """Whether repeated failed logins have locked the account at `now`."""
        return self.locked_until is not None and self.locked_until > now


def _user_fk() -> Mapped[uuid.UUID]:
    return mapped_column(
        Uuid(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )


class ApiKey(UUIDPrimaryKey, Timestamped, Base):
    """An API key of a user: only its peppered HMAC is stored, looked up by its visible prefix."""

    __tablename__ = "api_keys"

    user_id: Mapped[uuid.UUID] = _user_fk()
    name: Mapped[str] = mapped_column(Text, nullable=False)
    prefix: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    key_hash: Mapped[str] = mapped_column(Text, nullable=False, info={"secret": True})
    scopes: Mapped[list[str]] = _text_array()
    rate_limit_tier: Mapped[str] = mapped_column(
        Text, nullable=False, default="standard", server_default="standard"
    )
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def has_scopes(self, *scopes: str) -> bool:
        """Whether the key carries every one of these scopes (`*` carries them all)."""
        return "*" in self.scopes or all(s in self.scopes for s in scopes)

    def is_usable(self, now: datetime) -> bool:
        """Whether the key is neither revoked nor expired at `now`."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now


class UserToken(UUIDPrimaryKey, Base):
    """A single-use token (password reset, e-mail verification); only its hash is stored."""

    __tablename__ = "user_tokens"
    __table_args__ = (CheckConstraint(_one_of("purpose", TokenPurpose), name="purpose"),)

    user_id: Mapped[uuid.UUID] = _user_fk()
    purpose: Mapped[str] = mapped_column(Text, nullable=False)
    token_hash: Mapped[str] = mapped_column(
        Text, nullable=False, unique=True, info={"secret": True}
    )
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=func.now()
    )


class RecoveryCode(UUIDPrimaryKey, Base):
    """A single-use two-factor recovery code; only its hash is stored."""

    __tablename__ = "recovery_codes"

    user_id: Mapped[uuid.UUID] = _user_fk()
    code_hash: Mapped[str] = mapped_column(Text, nullable=False, info={"secret": True})
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=func.now()
    )


class LoginSession(UUIDPrimaryKey, Base):
    """A signed-in session: the opaque token's hash, its expiry and whether it was ended."""

    __tablename__ = "login_sessions"

    user_id: Mapped[uuid.UUID] = _user_fk()
    token_hash: Mapped[str] = mapped_column(
        Text, nullable=False, unique=True, info={"secret": True}
    )
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=func.now()
    )
