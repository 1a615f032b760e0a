"""`pgstack users create-admin|list` and `pgstack api-keys create|revoke`."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from pgstack.cli.main import JsonOpt, expected_failures, group, on_database, show_secret
from pgstack.errors import ConfigurationError, InvalidInputError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from pgstack.db.database import Database
    from pgstack.identity import Identity

T = TypeVar("T")

users_app = group("Users: create an administrator, list users.")
api_keys_app = group("API keys: create and revoke.")


def _run(work: Callable[[Identity], Awaitable[T]]) -> T:
    from pgstack.identity import Identity

    return on_database(lambda db: work(Identity(db)))


def _run_then_show(
    work: Callable[[Identity, AsyncSession], Awaitable[T]], show: Callable[[T], None]
) -> T:
    """Run `work` in one transaction, `show` its secret, then commit (or roll back if `show`
    raises): a secret that cannot be shown is never stored."""
    from pgstack.identity import Identity

    async def in_one_transaction(db: Database) -> T:
        async with db.transaction() as session:
            result = await work(Identity(db), session)
            show(result)
        return result

    return on_database(in_one_transaction)


def _read_password() -> str:
    """The new password: asked for twice on a terminal, else the first line of stdin."""
    if sys.stdin is not None and sys.stdin.isatty():
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    # Piped (`echo "$PW" | pgstack ...`): nothing to hide, so no getpass and its warning.
    line = sys.stdin.readline() if sys.stdin is not None else ""
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise InvalidInputError(
            'No password on standard input: pipe it as one line (echo "$PW" | pgstack ...), '
            "run the command in a terminal to be asked for it, or pass --generate."
        )
    return password


@users_app.command("create-admin")
@expected_failures
def create_admin(
    email: Annotated[str, typer.Option(help="The administrator's e-mail address.")],
    name: Annotated[str | None, typer.Option(help="Their name.")] = None,
    generate: Annotated[
        bool, typer.Option("--generate", help="Generate a strong password and print it once.")
    ] = False,
    role: Annotated[str, typer.Option(help="The administrator role.")] = "admin",
) -> None:
    """Create a verified user with the admin role (asks for the password unless --generate).

    With standard input piped, its first line is the password.
    """
    if generate:
        from pgstack.identity import generate_password

        password = generate_password()
    else:
        password = _read_password()

    async def work(identity: Identity, session: AsyncSession) -> uuid.UUID:
        user = await identity.users.create(
            email, password, name=name, roles=[role], verified=True, session=session
        )
        return user.id

    def created(user_id: uuid.UUID) -> str:
        return f"created administrator {email.strip().lower()} ({user_id})"

    def show(user_id: uuid.UUID) -> None:
        if generate:
            text = f"{created(user_id)}\npassword (shown once): {password}"
            show_secret(text, what="The generated password")

    user_id = _run_then_show(work, show)
    if not generate:
        typer.echo(created(user_id))


@users_app.command("list")
@expected_failures
def list_users(
    email: Annotated[str | None, typer.Option(help="Part of the e-mail address.")] = None,
    role: Annotated[str | None, typer.Option(help="Only users with this role.")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="active, inactive, locked, unverified or deleted."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many to show.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List users, newest first."""

    async def work(identity: Identity) -> tuple[list[dict[str, Any]], int | None, bool]:
        page = await identity.users.search(email=email, role=role, status=status, limit=limit)
        rows: list[dict[str, Any]] = [
            {
                "id": str(u.id),
                "email": u.email,
                "provider": u.provider,
                "roles": list(u.roles),
                "active": u.is_active,
                "verified": u.is_verified,
            }
            for u in page.items
        ]
        return rows, page.total, page.total_is_estimate

    rows, total, estimated = _run(work)
    if as_json:
        out = {"total": total, "total_is_estimate": estimated, "users": rows}
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.table import Table

    from pgstack.cli.main import console

    of = f"about {total}" if estimated else total
    table = Table(title=f"users ({len(rows)} of {of})")
    for column in ("id", "email", "provider", "roles", "active", "verified"):
        table.add_column(column)
    yes_no = {True: "yes", False: "no"}
    for row in rows:
        table.add_row(
            row["id"],
            row["email"],
            row["provider"],
            ",".join(row["roles"]),
            yes_no[row["active"]],
            yes_no[row["verified"]],
        )
    console.print(table)


@api_keys_app.command("create")
@expected_failures
def create_key(
    email: Annotated[str, typer.Option(help="The e-mail address of the key's user.")],
    name: Annotated[str, typer.Option(help="A name that tells the key apart.")],
    scope: Annotated[list[str] | None, typer.Option(help="A scope; repeat for more.")] = None,
    expires_in_days: Annotated[
        int | None,
        typer.Option(min=1, max=3650, help="Days until the key expires (default: never)."),
    ] = None,
) -> None:
    """Create an API key and print it once (only its hash is stored)."""

    async def work(identity: Identity, session: AsyncSession) -> tuple[str, str]:
        user = await identity.users.get_by_email(email)
        if user is None:
            raise ConfigurationError(f"No user has the e-mail address {email.strip().lower()}.")
        expires = timedelta(days=expires_in_days) if expires_in_days else None
        issued = await identity.api_keys.create(
            user.id, name, scopes=scope or (), expires_in=expires, session=session
        )
        return str(issued.api_key.id), issued.key

    def show(created: tuple[str, str]) -> None:
        key_id, key = created
        show_secret(f"created API key {key_id}; the key (shown once):\n{key}", what="The API key")

    _run_then_show(work, show)


@api_keys_app.command("revoke")
@expected_failures
def revoke_key(
    key_id: Annotated[uuid.UUID, typer.Argument(help="The id of the key to revoke.")],
) -> None:
    """Revoke an API key now."""

    async def work(identity: Identity) -> str:
        return (await identity.api_keys.revoke(key_id)).prefix

    prefix = _run(work)
    typer.echo(f"revoked API key {key_id} (pgs_{prefix}_...)")
