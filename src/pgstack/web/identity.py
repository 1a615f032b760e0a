"""Identity over HTTP: `current_user`, `require_roles`, `require_scopes`, and the router.

    app = create_app(routers=[identity_router(send_token=mailer)])

    @app.get("/reports", dependencies=[Depends(require_scopes("reports:read"))])
    async def reports(user: CurrentUser) -> ...: ...

A caller authenticates with `Authorization: Bearer <token>`, where the token is a session
token from `POST /auth/login` or an API key (`pgs_...`). Scopes limit API keys; a session
acts with all of its user's rights.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

from pgstack.errors import AuthenticationError, ConflictError, PermissionDeniedError
from pgstack.identity import (
    ApiKey,
    Identity,
    IdentityConfig,
    User,
    looks_like_api_key,
)
from pgstack.identity import (
    require_scopes as _require_key_scopes,
)
from pgstack.identity.api_keys import MAX_KEY_DAYS
from pgstack.identity.text import has_control_characters
from pgstack.orm.context import note_request, set_actor
from pgstack.web.deps import Offset, get_database
from pgstack.web.pages import PageOut
from pgstack.web.ratelimit import enforce_caller_limit

logger = logging.getLogger("pgstack.web")

#: Called with the user, the purpose and the token, to deliver it (usually by e-mail), after
#: the answer is sent. Purposes: "email_verification" (sign-up), "password_reset" (forgot),
#: "account_exists" (someone signed up with an address that has an account: tell its owner;
#: the token is a reset token). Without one, tokens are issued but never delivered.
TokenSender = Callable[[User, str, str], Awaitable[None]]

_bearer = HTTPBearer(auto_error=False, description="A session token or an API key.")


def get_identity(request: Request) -> Identity:
    """The identity services of this app (one per database and settings, reused)."""
    db = get_database(request)
    config: IdentityConfig = getattr(request.app.state, "pgstack_identity_config", None) or (
        IdentityConfig()
    )
    identity: Identity | None = getattr(request.app.state, "pgstack_identity", None)
    if identity is None or identity.db is not db or identity.config != config:
        identity = Identity(db, config)
        request.app.state.pgstack_identity = identity
    return identity


IdentityDep = Annotated[Identity, Depends(get_identity)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user, and the API key or session token they came with."""

    user: User
    api_key: ApiKey | None = None
    session_token: str | None = None

    def __repr__(self) -> str:
        via = f"api key {self.api_key.prefix}" if self.api_key else "session"
        return f"Principal(user={self.user.id}, via={via})"


async def current_principal(
    request: Request,
    identity: IdentityDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from `Authorization: Bearer`; 401 when missing or not valid.

    Each call counts against the caller's rate-limit tier (429 when over; see
    `pgstack.web.ratelimit`).
    """
    if credentials is None or not credentials.credentials:
        raise AuthenticationError(
            "Authentication required: send `Authorization: Bearer <session token or API key>`."
        )
    token = credentials.credentials
    if looks_like_api_key(token):
        verified = await identity.api_keys.verify(token)
        principal = Principal(verified.user, api_key=verified.api_key)
    else:
        principal = Principal(await identity.auth.user_for_session(token), session_token=token)
    # The actor of every write for the rest of the request (Audited columns, audit entries).
    set_actor(principal.user.id)
    note_request(actor_type="api_key" if principal.api_key is not None else "user")
    await enforce_caller_limit(request, principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def current_user(principal: PrincipalDep) -> User:
    """The calling user; 401 unless a valid session token or API key is sent."""
    return principal.user


CurrentUser = Annotated[User, Depends(current_user)]


def require_roles(*roles: str, any_of: bool = False) -> Callable[..., Awaitable[User]]:
    """A dependency: the user must have every one of `roles` (or one, with `any_of=True`).

    A key's scopes bound what it reaches: with an API key, each role used must also be one
    of the key's scopes, named as such (`*` does not grant roles). A session needs none.
    """
    return _require_held("role", lambda user: user.roles, roles, any_of)


def require_groups(*groups: str, any_of: bool = False) -> Callable[..., Awaitable[User]]:
    """A dependency: the user must be in every one of `groups` (or one, with `any_of=True`).

    Groups bound API keys as roles do: with a key, each group used must also be one of the
    key's scopes, named as such (`*` does not grant groups). A session needs none.
    """
    return _require_held("group", lambda user: user.groups, groups, any_of)


def _require_held(
    kind: str, held_by: Callable[[User], Sequence[str]], needed: Sequence[str], any_of: bool
) -> Callable[..., Awaitable[User]]:
    async def dependency(principal: PrincipalDep) -> User:
        held = set(held_by(principal.user))
        if principal.api_key is not None:
            held &= set(principal.api_key.scopes)
        allowed = bool(held & set(needed)) if any_of else set(needed) <= held
        if not allowed:
            word = f"one of the {kind}s" if any_of else f"the {kind}(s)"
            via = (
                ", and an API key must also carry it as a scope"
                if principal.api_key is not None
                else ""
            )
            raise PermissionDeniedError(
                f"This needs {word} {', '.join(needed)}{via}; ask an administrator for access."
            )
        return principal.user

    return dependency


def require_scopes(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: an API key must carry every one of `scopes` (sessions pass)."""

    async def dependency(principal: PrincipalDep) -> Principal:
        if principal.api_key is not None:
            _require_key_scopes(principal.api_key, *scopes)
        return principal

    return dependency


async def require_session(principal: PrincipalDep) -> Principal:
    """A dependency: the caller signed in with a password (an API key is not enough)."""
    if principal.session_token is None:
        raise PermissionDeniedError(
            "This needs a signed-in session; API keys cannot manage credentials."
        )
    return principal


SessionPrincipal = Annotated[Principal, Depends(require_session)]

# -- bodies ---------------------------------------------------------------------------------


def _printable(value: str) -> str:
    if has_control_characters(value):
        raise ValueError("must not contain control characters")
    return value


# Every text field and query parameter refuses control characters (NUL among them) here,
# as a 422, before anything reaches the database.
_Clean = AfterValidator(_printable)
_Email = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"), _Clean]
_Password = Annotated[str, Field(min_length=1, max_length=1024), _Clean]
_Token = Annotated[str, Field(min_length=1, max_length=200), _Clean]
_Name = Annotated[str, Field(max_length=200), _Clean]
_Username = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[^@\s]+$"), _Clean]
_Bio = Annotated[str, Field(max_length=2000), _Clean]
_Url = Annotated[str, Field(max_length=2000, pattern=r"^https?://\S+$"), _Clean]
_Word = Annotated[str, Field(min_length=1, max_length=100), _Clean]
_Code = Annotated[str, Field(min_length=6, max_length=40), _Clean]
_Search = Annotated[str | None, Query(max_length=320), _Clean]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class RegisterIn(_Body):
    email: _Email
    password: _Password
    name: _Name | None = None


class LoginIn(_Body):
    """Sign in with `email` or `username` (one of them) and the password."""

    email: _Email | None = None
    username: _Username | None = None
    password: _Password
    otp: Annotated[str, Field(max_length=40), _Clean] | None = None

    @model_validator(mode="after")
    def _one_login_name(self) -> LoginIn:
        if (self.email is None) == (self.username is None):
            raise ValueError("send either email or username")
        return self


class LoginOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type name
    expires_at: datetime


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    username: str | None
    name: str | None
    avatar_url: str | None
    bio: str | None
    provider: str
    roles: list[str]
    groups: list[str]
    is_active: bool
    email_verified_at: datetime | None
    two_factor_enabled: bool
    last_login_at: datetime | None
    login_count: int
    created_at: datetime


class PasswordChangeIn(_Body):
    current_password: _Password
    new_password: _Password
    #: API keys stay valid only when asked; by default a password change revokes them.
    keep_api_keys: StrictBool = False


class TokenIn(_Body):
    token: _Token


class ForgotIn(_Body):
    email: _Email


class ResetIn(_Body):
    token: _Token
    new_password: _Password


class ReauthIn(_Body):
    #: The current password; not needed within a few minutes of signing in.
    password: _Password | None = None


class CodeIn(ReauthIn):
    code: _Code


class DisableTwoFactorIn(ReauthIn):
    code: _Code | None = None


class EnrolmentOut(BaseModel):
    secret: str
    provisioning_uri: str


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str]


class ApiKeyIn(ReauthIn):
    name: Annotated[str, Field(min_length=1, max_length=200), _Clean]
    scopes: list[_Word] = []
    expires_in_days: Annotated[StrictInt, Field(ge=1, le=MAX_KEY_DAYS)] | None = None


class RotateIn(ReauthIn):
    grace_seconds: Annotated[StrictInt, Field(ge=0, le=30 * 86400)] = 86400


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    rate_limit_tier: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class IssuedKeyOut(ApiKeyOut):
    key: str


class UserPatchIn(_Body):
    """Only the fields sent change; `name: null` clears the name, a null list or flag is 422."""

    name: _Name | None = None
    username: _Username | None = None
    avatar_url: _Url | None = None
    bio: _Bio | None = None
    roles: list[_Word] = Field(default_factory=list)
    groups: list[_Word] = Field(default_factory=list)
    is_active: StrictBool = True


class ProfileIn(_Body):
    """Only the fields sent change; null clears one."""

    name: _Name | None = None
    username: _Username | None = None
    avatar_url: _Url | None = None
    bio: _Bio | None = None


class UserPageOut(PageOut[UserOut]):
    """One page; `total` is the planner's estimate when `total_is_estimate` is true."""


class StatisticsOut(BaseModel):
    total: int
    by_provider: dict[str, int]
    by_status: dict[str, int]
    signups_per_day: dict[date, int]
    active_last_days: int
    days: int


def _issued(issued: Any) -> IssuedKeyOut:
    data = ApiKeyOut.model_validate(issued.api_key).model_dump()
    return IssuedKeyOut(**data, key=issued.key)


# -- router ---------------------------------------------------------------------------------


def identity_router(
    config: IdentityConfig | None = None,
    *,
    send_token: TokenSender | None = None,
    admin_role: str = "admin",
    tags: Sequence[str] = ("identity",),
    registration: bool = True,
) -> APIRouter:
    """Routes for sign-up, sign-in, sessions, passwords, two-factor, API keys and admin.

    `/auth/...` serves the caller; `/admin/users/...` needs `admin_role`. Reset and
    verification tokens go to `send_token`; `/auth/forgot` answers 202 whether or not the
    address has an account. `registration=False` leaves out `POST /auth/register`, for
    services whose accounts an administrator creates.
    """
    settings = config or IdentityConfig()

    def _configure(request: Request) -> None:
        request.app.state.pgstack_identity_config = settings

    router = APIRouter(tags=list(tags), dependencies=[Depends(_configure)])
    admin = require_roles(admin_role)

    async def deliver(user: User, purpose: str, token: str) -> None:
        if send_token is None:
            logger.warning(
                "no send_token configured: the %s token for user %s was not sent", purpose, user.id
            )
            return
        try:
            await send_token(user, purpose, token)
        except Exception as exc:  # the answer is sent already: log, without the token
            logger.error("delivering a %s token to user %s failed: %s", purpose, user.id, type(exc))

    async def send_reset(identity: Identity, email: str, purpose: str) -> None:
        issued = await identity.auth.request_password_reset(email)
        if issued is not None:
            await deliver(issued.user, purpose, issued.token)

    if registration:

        @router.post("/auth/register", status_code=status.HTTP_202_ACCEPTED)
        async def register(
            body: RegisterIn, identity: IdentityDep, tasks: BackgroundTasks
        ) -> dict[str, str]:
            # The same answer whether or not the address has an account; its owner hears of it.
            try:
                user = await identity.users.create(body.email, body.password, name=body.name)
            except ConflictError:
                tasks.add_task(send_reset, identity, body.email, "account_exists")
            else:
                token = await identity.auth.request_email_verification(user.id)
                tasks.add_task(deliver, user, "email_verification", token)
            return {"detail": "Check your inbox: a link to finish signing up is on its way."}

    @router.post("/auth/login")
    async def login(body: LoginIn, identity: IdentityDep) -> LoginOut:
        name = body.email if body.email is not None else body.username
        assert name is not None  # the body's validator requires one
        result = await identity.auth.login(name, body.password, otp=body.otp)
        return LoginOut(access_token=result.token, expires_at=result.expires_at)

    @router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
    async def logout(principal: SessionPrincipal, identity: IdentityDep) -> Response:
        assert principal.session_token is not None
        await identity.auth.logout(principal.session_token)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/auth/me")
    async def me(user: CurrentUser) -> UserOut:
        return UserOut.model_validate(user)

    @router.patch("/auth/me")
    async def update_profile(body: ProfileIn, user: CurrentUser, identity: IdentityDep) -> UserOut:
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            return UserOut.model_validate(user)
        return UserOut.model_validate(await identity.users.update(user.id, **changes))

    @router.post("/auth/me/password", status_code=status.HTTP_204_NO_CONTENT)
    async def change_password(
        body: PasswordChangeIn, principal: SessionPrincipal, identity: IdentityDep
    ) -> Response:
        await identity.auth.change_password(
            principal.user.id,
            body.current_password,
            body.new_password,
            keep_api_keys=body.keep_api_keys,
        )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.post("/auth/verify/request", status_code=status.HTTP_202_ACCEPTED)
    async def request_verification(
        user: CurrentUser, identity: IdentityDep, tasks: BackgroundTasks
    ) -> dict[str, str]:
        token = await identity.auth.request_email_verification(user.id)
        tasks.add_task(deliver, user, "email_verification", token)
        return {"detail": "A verification link is on its way."}

    @router.post("/auth/verify")
    async def verify(body: TokenIn, identity: IdentityDep) -> UserOut:
        return UserOut.model_validate(await identity.auth.verify_email(body.token))

    @router.post("/auth/forgot", status_code=status.HTTP_202_ACCEPTED)
    async def forgot(
        body: ForgotIn, identity: IdentityDep, tasks: BackgroundTasks
    ) -> dict[str, str]:
        # Answered before the address is even looked up: the lookup, the token and the
        # delivery run after the answer, so its timing cannot tell accounts apart.
        tasks.add_task(send_reset, identity, body.email, "password_reset")
        return {"detail": "If the address has an account, a reset link is on its way."}

    @router.post("/auth/reset", status_code=status.HTTP_204_NO_CONTENT)
    async def reset(body: ResetIn, identity: IdentityDep) -> Response:
        await identity.auth.reset_password(body.token, body.new_password)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    async def reauthenticate(identity: Identity, principal: Principal, body: ReauthIn) -> None:
        await identity.auth.reauthenticate(
            principal.user.id, password=body.password, session_token=principal.session_token
        )

    @router.post("/auth/2fa/enrol")
    async def enrol(
        principal: SessionPrincipal, identity: IdentityDep, body: ReauthIn | None = None
    ) -> EnrolmentOut:
        await reauthenticate(identity, principal, body or ReauthIn())
        enrolment = await identity.two_factor.enrol(principal.user.id)
        return EnrolmentOut(secret=enrolment.secret, provisioning_uri=enrolment.provisioning_uri)

    @router.post("/auth/2fa/confirm")
    async def confirm(
        body: CodeIn, principal: SessionPrincipal, identity: IdentityDep
    ) -> RecoveryCodesOut:
        await reauthenticate(identity, principal, body)
        codes = await identity.two_factor.confirm(principal.user.id, body.code)
        return RecoveryCodesOut(recovery_codes=codes)

    @router.post("/auth/2fa/disable", status_code=status.HTTP_204_NO_CONTENT)
    async def disable(
        body: DisableTwoFactorIn, principal: SessionPrincipal, identity: IdentityDep
    ) -> Response:
        if body.password is None:
            # Without the password: a fresh sign-in, and then still a code.
            await reauthenticate(identity, principal, body)
        await identity.two_factor.disable(principal.user.id, code=body.code, password=body.password)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/auth/api-keys")
    async def list_keys(user: CurrentUser, identity: IdentityDep) -> list[ApiKeyOut]:
        return [ApiKeyOut.model_validate(k) for k in await identity.api_keys.list_for(user.id)]

    async def may_mint_keys(
        request: Request, identity: Identity, principal: Principal, body: ReauthIn
    ) -> None:
        if not principal.user.is_verified:
            # The path as this app mounts the router (under /v1 in `pgstack serve`).
            where = request.app.url_path_for(request_verification.__name__)
            raise PermissionDeniedError(
                f"Verify your e-mail address before creating API keys (POST {where})."
            )
        await reauthenticate(identity, principal, body)

    @router.post("/auth/api-keys", status_code=status.HTTP_201_CREATED)
    async def create_key(
        request: Request, body: ApiKeyIn, principal: SessionPrincipal, identity: IdentityDep
    ) -> IssuedKeyOut:
        await may_mint_keys(request, identity, principal, body)
        expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
        issued = await identity.api_keys.create(
            principal.user.id, body.name, scopes=body.scopes, expires_in=expires
        )
        return _issued(issued)

    @router.post("/auth/api-keys/{key_id}/rotate", status_code=status.HTTP_201_CREATED)
    async def rotate_key(
        request: Request,
        key_id: uuid.UUID,
        body: RotateIn,
        principal: SessionPrincipal,
        identity: IdentityDep,
    ) -> IssuedKeyOut:
        await may_mint_keys(request, identity, principal, body)
        issued = await identity.api_keys.rotate(
            key_id, grace=timedelta(seconds=body.grace_seconds), user_id=principal.user.id
        )
        return _issued(issued)

    @router.delete("/auth/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def revoke_key(
        key_id: uuid.UUID, principal: SessionPrincipal, identity: IdentityDep
    ) -> Response:
        await identity.api_keys.revoke(key_id, user_id=principal.user.id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/admin/users", dependencies=[Depends(admin)])
    async def search_users(
        identity: IdentityDep,
        email: _Search = None,
        name: _Search = None,
        role: _Search = None,
        status_: Annotated[str | None, Query(alias="status", max_length=20), _Clean] = None,
        provider: _Search = None,
        sort: Annotated[str, Query(max_length=200), _Clean] = "-created_at",
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        offset: Offset = 0,
    ) -> UserPageOut:
        page = await identity.users.search(
            email=email,
            name=name,
            role=role,
            status=status_,
            provider=provider,
            sort=sort,
            limit=limit,
            offset=offset,
        )
        return UserPageOut.from_page(page, UserOut)

    @router.get("/admin/users/statistics", dependencies=[Depends(admin)])
    async def user_statistics(
        identity: IdentityDep, days: Annotated[int, Query(ge=1, le=3650)] = 30
    ) -> StatisticsOut:
        stats = await identity.users.statistics(days=days)
        return StatisticsOut(
            total=stats.total,
            by_provider=stats.by_provider,
            by_status=stats.by_status,
            signups_per_day=stats.signups_per_day,
            active_last_days=stats.active_last_days,
            days=stats.days,
        )

    @router.get("/admin/users/{user_id:uuid}", dependencies=[Depends(admin)])
    async def get_user(user_id: uuid.UUID, identity: IdentityDep) -> UserOut:
        return UserOut.model_validate(await identity.users.get(user_id))

    @router.patch("/admin/users/{user_id:uuid}", dependencies=[Depends(admin)])
    async def patch_user(user_id: uuid.UUID, body: UserPatchIn, identity: IdentityDep) -> UserOut:
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            return UserOut.model_validate(await identity.users.get(user_id))
        # One transaction; refused with 409 if it would leave no active administrator.
        user = await identity.users.update(user_id, keep_role=admin_role, **changes)
        return UserOut.model_validate(user)

    @router.delete(
        "/admin/users/{user_id:uuid}",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=[Depends(admin)],
    )
    async def delete_user(user_id: uuid.UUID, identity: IdentityDep) -> Response:
        await identity.users.delete(user_id, keep_role=admin_role)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.delete(
        "/admin/users/{user_id:uuid}/2fa",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=[Depends(admin)],
    )
    async def reset_two_factor(user_id: uuid.UUID, identity: IdentityDep) -> Response:
        # For a user who lost both the device and the recovery codes; logged as a warning.
        await identity.two_factor.reset(user_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
