"""Users, passwords, authentication, two-factor and API keys.

identity = Identity(db)
user = await identity.users.create("ada@example.com", "a long passphrase here")
session = await identity.auth.login("ada@example.com", "a long passphrase here")
issued = await identity.api_keys.create(user.id, "ci", scopes=["reports:read"])
"""

from __future__ import annotations

from pgstack.db.database import Database
from pgstack.identity.api_keys import (
    ApiKeys,
    IssuedKey,
    VerifiedKey,
    generate_api_key,
    looks_like_api_key,
    parse_api_key,
    require_scopes,
)
from pgstack.identity.auth import (
    Authenticator,
    IssuedToken,
    LoginResult,
    TwoFactorRequiredError,
)
from pgstack.identity.config import IdentityConfig
from pgstack.identity.models import (
    ApiKey,
    LoginSession,
    Provider,
    RecoveryCode,
    TokenPurpose,
    User,
    UserToken,
    known_providers,
    register_provider,
)
from pgstack.identity.passwords import (
    PasswordHasher,
    PasswordStrength,
    check_password_strength,
    generate_password,
    require_strong_password,
)
from pgstack.identity.totp import Enrolment, TwoFactor
from pgstack.identity.users import (
    HasRole,
    InGroup,
    UserRepository,
    Users,
    UserStatistics,
    check_username,
)


class Identity:
    """Every identity service on one database, sharing settings and the password hasher."""

    def __init__(self, db: Database, config: IdentityConfig | None = None) -> None:
        self.db = db
        self.config = config or IdentityConfig()
        self.hasher = PasswordHasher(self.config)
        self.users = Users(db, self.config, self.hasher)
        self.auth = Authenticator(db, self.config, self.hasher)
        self.two_factor = TwoFactor(db, self.config, self.hasher)
        self.api_keys = ApiKeys(db, self.config, self.hasher)

    def __repr__(self) -> str:
        return f"Identity({self.db!r})"


__all__ = [
    "ApiKey",
    "ApiKeys",
    "Authenticator",
    "Enrolment",
    "HasRole",
    "Identity",
    "IdentityConfig",
    "InGroup",
    "IssuedKey",
    "IssuedToken",
    "LoginResult",
    "LoginSession",
    "PasswordHasher",
    "PasswordStrength",
    "Provider",
    "RecoveryCode",
    "TokenPurpose",
    "TwoFactor",
    "TwoFactorRequiredError",
    "User",
    "UserRepository",
    "UserStatistics",
    "UserToken",
    "Users",
    "VerifiedKey",
    "check_password_strength",
    "check_username",
    "generate_api_key",
    "generate_password",
    "known_providers",
    "looks_like_api_key",
    "parse_api_key",
    "register_provider",
    "require_scopes",
    "require_strong_password",
]
