"""Single sign-on: an OpenID Connect ID token from the company's provider opens a session.

The provider (Okta here; any OIDC provider works the same) signs the ID token with a key it
publishes as a JWKS. We check the signature, the issuer, the audience and the expiry, then
hand the provider's user id to pgstack, which opens the session. A first sign-in creates the
user; every sign-in copies the provider's groups onto the user, so a group removed at the
provider is gone here at the next sign-in.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import jwt
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from pgstack.errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PgStackError,
)
from pgstack.identity import Identity, LoginResult, register_provider
from pgstack.web.identity import IdentityDep
from pgstack.web.ratelimit import rate_limit

PROVIDER = register_provider("okta")
#: Sign-in attempts per client address (behind a proxy: set TRUSTED_PROXIES).
SIGN_IN_LIMIT = "30/minute; 300/hour"
_MAX_GROUPS = 100


class ProviderUnavailableError(PgStackError):
    """The identity provider's signing keys could not be fetched."""

    status_code = 502
    title = "Identity provider unavailable"


@dataclass(frozen=True)
class SsoConfig:
    """Where the provider publishes its keys, and what its ID tokens must say."""

    issuer: str
    audience: str
    jwks_url: str

    @classmethod
    def from_env(cls) -> SsoConfig | None:
        """`AGENT_SSO_ISSUER`, `AGENT_SSO_AUDIENCE`, `AGENT_SSO_JWKS_URL`; None when unset."""
        issuer = os.environ.get("AGENT_SSO_ISSUER")
        if not issuer:
            return None
        audience = os.environ.get("AGENT_SSO_AUDIENCE")
        if not audience:
            raise ConfigurationError(
                "AGENT_SSO_ISSUER is set but AGENT_SSO_AUDIENCE is not: set it to the client id "
                "the provider puts in its ID tokens' `aud`."
            )
        return cls(
            issuer=issuer,
            audience=audience,
            jwks_url=os.environ.get("AGENT_SSO_JWKS_URL") or f"{issuer.rstrip('/')}/v1/keys",
        )


# What a failed check means to the person signing in; PyJWT's own text can quote the token.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "has expired"),
    (jwt.InvalidAudienceError, "was issued for another application"),
    (jwt.InvalidIssuerError, "comes from another issuer"),
    (jwt.ImmatureSignatureError, "is not valid yet"),
    (jwt.MissingRequiredClaimError, "lacks a required claim (sub, email, exp, iat)"),
)


class IdTokenVerifier:
    """Checks ID tokens against the provider's published keys (fetched once, then cached)."""

    def __init__(self, config: SsoConfig) -> None:
        self.config = config
        self._keys = jwt.PyJWKClient(config.jwks_url, cache_keys=True, timeout=10)

    async def claims(self, id_token: str) -> dict[str, Any]:
        """The token's claims once signature, issuer, audience and expiry hold."""
        try:
            # PyJWKClient fetches over blocking HTTP: keep it off the event loop.
            key = await asyncio.to_thread(self._keys.get_signing_key_from_jwt, id_token)
        except jwt.PyJWKClientConnectionError:
            raise ProviderUnavailableError(
                "The identity provider's signing keys could not be fetched; try again shortly."
            ) from None
        except jwt.PyJWTError:
            raise AuthenticationError(
                "The ID token is malformed or names a key the provider does not publish; "
                "sign in at the provider again."
            ) from None
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key.key,
                algorithms=["RS256", "ES256"],
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp", "iat", "sub", "email"]},
                leeway=30,
            )
        except jwt.PyJWTError as error:
            reason = next(
                (text for kind, text in _REASONS if isinstance(error, kind)),
                "does not verify",
            )
            raise AuthenticationError(
                f"The ID token {reason}; sign in at the provider again."
            ) from None
        return claims


def _groups(claims: dict[str, Any]) -> list[str]:
    groups = claims.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise AuthenticationError("The ID token's groups claim is not a list of names.")
    return groups[:_MAX_GROUPS]


async def sign_in(identity: Identity, claims: dict[str, Any]) -> LoginResult:
    """A session for the provider's user: created at the first sign-in, groups kept in step."""
    subject, groups = str(claims["sub"]), _groups(claims)
    try:
        login = await identity.auth.login_external(PROVIDER, subject)
    except NotFoundError:
        try:
            await identity.users.create(
                str(claims["email"]),
                provider=PROVIDER,
                provider_user_id=subject,
                name=name if isinstance(name := claims.get("name"), str) else None,
                groups=groups,
                verified=claims.get("email_verified") is True,
            )
        except ConflictError:
            # A concurrent first sign-in made the user; anyone else holding the address
            # keeps it: accounts are never merged on an e-mail address alone.
            existing = await identity.users.get_by_email(str(claims["email"]))
            if existing is None or (existing.provider, existing.provider_user_id) != (
                PROVIDER,
                subject,
            ):
                raise ConflictError(
                    "An account with this e-mail address already signs in another way; ask "
                    "an administrator to link it to single sign-on."
                ) from None
        login = await identity.auth.login_external(PROVIDER, subject)
    if sorted(login.user.groups) != sorted(groups):
        user = await identity.users.update(login.user.id, groups=groups)
        login = LoginResult(user, login.token, login.expires_at)
    return login


class IdTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    id_token: Annotated[str, Field(min_length=1, max_length=16_000, pattern=r"^[\w.-]+$")]


class SessionOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type name
    expires_at: datetime
    groups: list[str]


def sso_router(config: SsoConfig | None) -> APIRouter:
    """`POST /auth/sso/okta`: an ID token in, a pgstack session token out."""
    router = APIRouter(tags=["single sign-on"])
    verifier = IdTokenVerifier(config) if config is not None else None

    # Every unknown key id in a token makes the key client ask the provider again: a limit
    # per client address keeps anyone from turning this route against the provider.
    @router.post(
        f"/auth/sso/{PROVIDER}",
        responses={401: {"description": "The ID token does not verify."}},
        dependencies=[Depends(rate_limit(SIGN_IN_LIMIT, resource="sso", per="ip"))],
    )
    async def sso_sign_in(body: IdTokenIn, identity: IdentityDep) -> SessionOut:
        """Sign in with the provider's ID token; 401 when it does not verify."""
        if verifier is None:
            raise NotFoundError(
                "Single sign-on is not configured here: set AGENT_SSO_ISSUER and "
                "AGENT_SSO_AUDIENCE, or sign in with a password at /auth/login."
            )
        login = await sign_in(identity, await verifier.claims(body.id_token))
        return SessionOut(
            access_token=login.token, expires_at=login.expires_at, groups=login.user.groups
        )

    return router
