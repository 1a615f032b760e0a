"""Users: create, read, change, delete, search and count them."""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Date, cast, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pgstack.db.session import Session, flush_pending
from pgstack.errors import ConflictError, InvalidInputError
from pgstack.identity._common import ServiceBase, security_event, utcnow
from pgstack.identity.models import ApiKey, LoginSession, Provider, User, known_providers
from pgstack.identity.passwords import require_strong_password
from pgstack.identity.text import check_text
from pgstack.orm.types import normalise_email
from pgstack.repository import Eq, Filter, ILike, IsNull, Page, Repository
from pgstack.repository.filters import Fields


class UserRepository(Repository[User]):
    """Users through the generic repository; secrets can never be filtered or sorted on."""

    model = User
    # Listings of a big directory estimate their total instead of counting every row.
    page_total = "auto"
    filterable = (
        "id",
        "email",
        "username",
        "name",
        "provider",
        "provider_user_id",
        "is_active",
        "email_verified_at",
        "two_factor_enabled",
        "last_login_at",
        "login_count",
        "locked_until",
        "created_at",
        "updated_at",
        "deleted_at",
    )
    sortable = (
        "email",
        "username",
        "name",
        "created_at",
        "updated_at",
        "last_login_at",
        "login_count",
    )


@dataclass(frozen=True)
class HasRole(Filter):
    """Users with this role (a filter on the `roles` array, which plain filters cannot do)."""

    role: str

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        return literal(self.role) == func.any(User.roles)


@dataclass(frozen=True)
class InGroup(Filter):
    """Users in this group."""

    group: str

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        return literal(self.group) == func.any(User.groups)


@dataclass(frozen=True)
class UserStatistics:
    """Counts of users: by provider, by status, sign-ups per day, recently active."""

    total: int
    by_provider: dict[str, int]
    by_status: dict[str, int]
    signups_per_day: dict[date, int] = field(default_factory=dict)
    active_last_days: int = 0
    days: int = 30


STATUSES = ("active", "inactive", "locked", "unverified", "deleted")


# Letters whose scripts are written together, counted as one script.
_SCRIPT_FAMILIES = {"HIRAGANA": "JAPANESE", "KATAKANA": "JAPANESE", "CJK": "JAPANESE"}
_LOCAL_PUNCTUATION = set(".!#$%&'*+/=?^_`{|}~-")


def check_new_email(email: str) -> str:
    """The address as it is stored (NFKC, case-folded), or InvalidInputError.

    Refused: control characters, a missing part, and a local part that could pass for
    another one: letters from more than one script (a Cyrillic a, U+0430, among Latin
    letters), combining marks (U+0130, a capital I with a dot, folds to i and a dot), or
    symbols other than ASCII punctuation.
    """
    check_text(email, "e-mail address")
    address = normalise_email(email) or ""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in address):
        raise InvalidInputError(f"{email[:320]!r} is not an e-mail address.")
    if len(address) > 254:
        raise InvalidInputError(
            f"The e-mail address is {len(address)} characters long; an address has at most 254."
        )
    scripts: set[str] = set()
    for char in local:
        category = unicodedata.category(char)
        if char.isascii() and (char.isalnum() or char in _LOCAL_PUNCTUATION):
            if char.isalpha():
                scripts.add("LATIN")
        elif category[0] in "LN" and category != "Nl":
            script = unicodedata.name(char, "UNNAMED").split()[0]
            scripts.add(_SCRIPT_FAMILIES.get(script, script))
        else:
            raise InvalidInputError(
                f"The e-mail address {address[:320]!r} has a character that can pass for "
                "another in its local part (before the @); type it with plain letters."
            )
    if len(scripts) > 1:
        raise InvalidInputError(
            f"The local part of {address[:320]!r} mixes letters of {len(scripts)} scripts "
            f"({', '.join(sorted(scripts)).lower()}), so it can pass for another address; "
            "use letters of one script."
        )
    return address


def _check_provider(provider: str) -> str:
    if provider not in known_providers():
        names = ", ".join(sorted(known_providers()))
        raise InvalidInputError(
            f"Unknown provider {provider[:60]!r}; use one of {names}, or register it first "
            "(pgstack.identity.register_provider)."
        )
    return provider


_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,38}[a-z0-9]$")


def check_username(username: str) -> str:
    """The username as it is stored (lower-case), or InvalidInputError.

    3-40 ASCII letters, digits, dots, dashes or underscores, starting and ending with a
    letter or digit: no @ (so a login name is an e-mail address or a username, never
    both) and no look-alike letters from other scripts.
    """
    check_text(username, "username")
    name = username.strip().lower()
    if _USERNAME.fullmatch(name) is None:
        raise InvalidInputError(
            f"{username[:60]!r} is not a username: use 3-40 letters a-z, digits, '.', '-' or "
            "'_', starting and ending with a letter or digit."
        )
    return name


async def _create(session: AsyncSession, fields: dict[str, Any]) -> User:
    """Insert the user in `session`, unless the e-mail address or username is taken."""
    repo = UserRepository(session)
    taken = {
        "uq_users_email": f"A user with the e-mail address {fields['email']} already exists; "
        "sign in, or reset the password.",
        "uq_users_username": f"The username {fields['username']} is taken; pick another.",
    }
    if await repo.exists(email=fields["email"]):
        raise ConflictError(taken["uq_users_email"])
    if fields["username"] and await repo.exists(username=fields["username"]):
        raise ConflictError(taken["uq_users_username"])
    try:
        return await repo.create(fields)
    except ConflictError as exc:
        # Another transaction took the address or username between the check and the
        # insert (two sign-ups at once): the same message as when it was taken before.
        message = taken.get(exc.constraint or "")
        if message is None:
            raise
        raise ConflictError(message) from exc


def _check_profile(changes: dict[str, Any]) -> None:
    if changes.get("username") is not None:
        changes["username"] = check_username(changes["username"])
    for key in ("name", "bio", "avatar_url"):
        if changes.get(key) is not None:
            check_text(changes[key], key)
    url = changes.get("avatar_url")
    if url is not None and not (url.startswith("https://") or url.startswith("http://")):
        raise InvalidInputError("avatar_url must be an http(s) URL.")


class Users(ServiceBase):
    """Create, change, delete, search and count users; every call is its own transaction.

    `create` may join the caller's transaction instead (`session=`).
    """

    async def create(
        self,
        email: str,
        password: str | None = None,
        *,
        name: str | None = None,
        username: str | None = None,
        avatar_url: str | None = None,
        bio: str | None = None,
        roles: Iterable[str] = (),
        groups: Iterable[str] = (),
        provider: str = Provider.LOCAL.value,
        provider_user_id: str | None = None,
        verified: bool = False,
        check_strength: bool = True,
        session: AsyncSession | None = None,
    ) -> User:
        """Create a user; a local user needs a password, an external one a provider user id.

        The password is checked for strength (unless `check_strength=False`, for imports)
        and only its argon2id hash is kept. A live user with the same e-mail address, in any
        letter case, is a ConflictError.

        With `session`, the user's row (the only row `create` writes) is written in that
        session's transaction, committed or rolled back with it (a sign-up that creates the
        user with their workspace and the application's own rows); the password is hashed
        before any statement of `create` is sent. Without it, the call is a transaction of
        its own.
        """
        provider = _check_provider(provider)
        address = check_new_email(email)
        profile: dict[str, Any] = {
            "name": name,
            "username": username,
            "avatar_url": avatar_url,
            "bio": bio,
        }
        _check_profile(profile)
        if provider == Provider.LOCAL.value:
            if password is None:
                raise InvalidInputError("A local user needs a password.")
        elif password is not None:
            raise InvalidInputError(
                f"A {provider} user signs in with {provider}; do not give them a password."
            )
        elif not provider_user_id:
            raise InvalidInputError(f"A {provider} user needs the provider's user id.")
        password_hash = None
        if password is not None:
            check_text(password, "password")
            if check_strength:
                require_strong_password(password, email=address, name=name, config=self.config)
            password_hash = await self.hasher.ahash(password)
        now = utcnow()
        fields: dict[str, Any] = {
            "email": address,
            **profile,
            "password_hash": password_hash,
            "password_changed_at": now if password_hash else None,
            "provider": provider,
            "provider_user_id": provider_user_id,
            "roles": _words(roles, "roles"),
            "groups": _words(groups, "groups"),
            "email_verified_at": now if verified else None,
        }
        if session is not None:
            # The caller's pending changes first: their errors stay theirs, not the user's.
            await flush_pending(session, "users.create")
            return await _create(session, fields)
        async with self.db.transaction() as own:
            return await _create(own, fields)

    async def get(self, user_id: uuid.UUID, *, include_deleted: bool = False) -> User:
        """The user with this id (NotFoundError if there is none, or it was deleted)."""
        async with self.db.transaction(readonly=True) as session:
            return await UserRepository(session).get(user_id, include_deleted=include_deleted)

    async def get_by_email(self, email: str) -> User | None:
        """The live user with this e-mail address, in any letter case, or None."""
        async with self.db.transaction(readonly=True) as session:
            return await UserRepository(session).get_by_or_none(email=normalise_email(email))

    async def get_by_username(self, username: str) -> User | None:
        """The live user with this username, in any letter case, or None."""
        async with self.db.transaction(readonly=True) as session:
            return await UserRepository(session).get_by_or_none(username=username.strip().lower())

    async def update(
        self, user_id: uuid.UUID, *, keep_role: str | None = None, **changes: Any
    ) -> User:
        """Change a user's name, username, profile (avatar_url, bio), roles, groups or active flag.

        With `keep_role`, a change that would leave no active user with that role (an admin
        demoting or deactivating the last admin) is a ConflictError; see `set_active`.
        """
        allowed = {"name", "username", "avatar_url", "bio", "roles", "groups", "is_active"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidInputError(
                f"Cannot change {', '.join(sorted(unknown))} here; change "
                f"{', '.join(sorted(allowed))}, or use the password and e-mail verbs."
            )
        for key in ("roles", "groups"):
            if key in changes:
                changes[key] = _words(changes[key], key)
        _check_profile(changes)
        if "is_active" in changes and not isinstance(changes["is_active"], bool):
            raise InvalidInputError("is_active is true or false.")
        async with self._keeping(keep_role, user_id) as session:
            before = list((await UserRepository(session).get(user_id)).roles)
            user = await UserRepository(session).update(user_id, changes)
            await _roles_changed(self.db, session, user_id, before, user.roles)
            if changes.get("is_active") is False:
                await end_sessions(session, user.id)  # as set_active(False) does
            return user

    async def set_roles(
        self, user_id: uuid.UUID, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> User:
        """Add and remove roles in one change."""
        async with self.db.transaction() as session:
            user = await UserRepository(session).get(user_id)
            before = list(user.roles)
            for role in _words(add, "roles"):
                user.add_role(role)
            for role in remove:
                user.remove_role(role)
            await session.flush()
            await _roles_changed(self.db, session, user_id, before, user.roles)
            return user

    async def set_active(
        self, user_id: uuid.UUID, active: bool, *, keep_role: str | None = None
    ) -> User:
        """Activate or deactivate a user; deactivating also ends their sessions.

        With `keep_role`, deactivating the last active user with that role is a ConflictError.
        """
        async with self._keeping(keep_role, user_id) as session:
            user = await UserRepository(session).get(user_id)
            if active:
                user.activate()
            else:
                user.deactivate()
                await end_sessions(session, user.id)
            await session.flush()
            return user

    async def delete(self, user_id: uuid.UUID, *, keep_role: str | None = None) -> None:
        """Soft-delete a user: hidden, unable to sign in, their keys and sessions refused.

        With `keep_role`, deleting the last active user with that role is a ConflictError.
        """
        async with self._keeping(keep_role, user_id) as session:
            await UserRepository(session).delete(user_id)
            await end_sessions(session, user_id)

    @asynccontextmanager
    async def _keeping(self, role: str | None, user_id: uuid.UUID) -> AsyncIterator[Session]:
        # A transaction in which the change may not take `role` from its last active holder.
        # The advisory lock serialises such changes, so two admins demoting each other at
        # once cannot both succeed.
        async with self.db.transaction() as session:
            if role is None:
                yield session
                return
            await session.execute(select(func.pg_advisory_xact_lock(func.hashtext(role))))
            holders = select(func.count()).where(
                User.deleted_at.is_(None),
                User.is_active.is_(True),
                literal(role) == func.any(User.roles),
            )
            held = await session.scalar(holders.where(User.id == user_id))
            yield session
            await session.flush()
            if held and not await session.scalar(holders):
                raise ConflictError(
                    f"This would leave no active user with the role {role}; give the role to "
                    "another user first."
                )

    async def restore(self, user_id: uuid.UUID) -> User:
        """Bring back a soft-deleted user."""
        async with self.db.transaction() as session:
            return await UserRepository(session).restore(user_id)

    async def hard_delete(self, user_id: uuid.UUID) -> None:
        """Delete a user for good, with their keys, tokens, codes and sessions (cascade)."""
        async with self.db.transaction() as session:
            await UserRepository(session).hard_delete(user_id)

    async def search(
        self,
        *,
        email: str | None = None,
        name: str | None = None,
        role: str | None = None,
        group: str | None = None,
        status: str | None = None,
        provider: str | None = None,
        sort: str | Sequence[str] | None = "-created_at",
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[User]:
        """A page of users matching every given criterion, with the total count.

        `email` and `name` match any part, ignoring case; `status` is one of active,
        inactive, locked, unverified, deleted.
        """
        for text, what in ((email, "e-mail"), (name, "name"), (role, "role"), (group, "group")):
            if text:
                check_text(text, f"{what} to search for")
        filters: list[Filter] = []
        if email:
            filters.append(ILike("email", f"%{_escape(normalise_email(email) or '')}%"))
        if name:
            filters.append(ILike("name", f"%{_escape(name)}%"))
        if role:
            filters.append(HasRole(role))
        if group:
            filters.append(InGroup(group))
        if provider:
            filters.append(Eq("provider", _check_provider(provider)))
        include_deleted = False
        if status is not None:
            if status not in STATUSES:
                raise InvalidInputError(
                    f"Unknown status {status!r}; use one of {', '.join(STATUSES)}."
                )
            now = utcnow()
            if status == "deleted":
                include_deleted = True
                filters.append(_Where(User.deleted_at.is_not(None)))
            elif status == "active":
                filters.append(Eq("is_active", True))
            elif status == "inactive":
                filters.append(Eq("is_active", False))
            elif status == "locked":
                filters.append(_Where(User.locked_until > now))
            else:
                filters.append(IsNull("email_verified_at"))
        async with self.db.transaction(readonly=True) as session:
            return await UserRepository(session).page(
                *filters, sort=sort, limit=limit, offset=offset, include_deleted=include_deleted
            )

    async def statistics(self, *, days: int = 30) -> UserStatistics:
        """Totals by provider and status, sign-ups per day and users active in the last `days`."""
        if days < 1:
            raise InvalidInputError("days must be 1 or more.")
        now = utcnow()
        since = now - timedelta(days=days)
        live = User.deleted_at.is_(None)
        async with self.db.transaction(readonly=True) as session:
            providers = (
                await session.execute(
                    select(User.provider, func.count()).where(live).group_by(User.provider)
                )
            ).all()
            counts = (
                await session.execute(
                    select(
                        func.count().filter(live),
                        func.count().filter(live, User.is_active.is_(True)),
                        func.count().filter(live, User.is_active.is_(False)),
                        func.count().filter(live, User.locked_until > now),
                        func.count().filter(live, User.email_verified_at.is_(None)),
                        func.count().filter(User.deleted_at.is_not(None)),
                        func.count().filter(live, User.last_login_at >= since),
                    )
                )
            ).one()
            day = cast(func.timezone("UTC", User.created_at), Date)
            signups = (
                await session.execute(
                    select(day, func.count())
                    .where(live, User.created_at >= since)
                    .group_by(day)
                    .order_by(day)
                )
            ).all()
        by_provider = {p.value: 0 for p in Provider}
        by_provider.update({str(p): int(n) for p, n in providers})
        return UserStatistics(
            total=int(counts[0]),
            by_provider=by_provider,
            by_status=dict(zip(STATUSES, (int(n) for n in counts[1:6]), strict=True)),
            signups_per_day={d: int(n) for d, n in signups},
            active_last_days=int(counts[6]),
            days=days,
        )


@dataclass(frozen=True)
class _Where(Filter):
    condition: ColumnElement[bool]

    def clause(self, fields: Fields) -> ColumnElement[bool]:
        return self.condition


def _words(values: Any, what: str) -> list[str]:
    # Roles and groups: a list (null is not "no change" but a mistake), of printable words.
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidInputError(f"{what} is a list of names; send [] to remove them all.")
    words = list(dict.fromkeys(values))
    if not all(
        isinstance(w, str) and w.strip() and w.isprintable() and len(w) <= 64 for w in words
    ):
        raise InvalidInputError(
            f"Each of the {what} is a non-empty name of at most 64 characters, without "
            "control characters."
        )
    return words


def _escape(text: str) -> str:
    # The search text is matched literally: % and _ typed by a user are not wildcards.
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def end_sessions(session: Any, user_id: uuid.UUID, *, api_keys: bool = False) -> None:
    """End every session of the user, and with `api_keys` revoke every key of theirs too."""
    await session.execute(
        update(LoginSession)
        .where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    if api_keys:
        # A key rotated with a grace period still working is cut off now as well.
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.user_id == user_id,
                or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > func.now()),
            )
            .values(revoked_at=func.now())
        )


async def _roles_changed(
    db: Any, session: Any, user_id: uuid.UUID, before: Sequence[str], after: Sequence[str]
) -> None:
    """A security entry for a change of roles (none when the roles stayed the same)."""
    added = [r for r in after if r not in before]
    removed = [r for r in before if r not in after]
    if added or removed:
        await security_event(
            db,
            "user.roles_changed",
            user_id=user_id,
            request_data={"add": added, "remove": removed},
            session=session,
        )
