"""Server administration: create the application's database, role, grants and extensions."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.engine import URL

from pgstack.config import Settings, to_asyncpg_url
from pgstack.errors import ConfigurationError, DatabaseUnavailableError, PgStackError

EXTENSIONS = ("citext", "pgcrypto")


def asyncpg_dsn(url: URL) -> str:
    """A DSN for `asyncpg.connect` from a SQLAlchemy URL (Unix-socket hosts included)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class InitResult:
    """What `init_database` did, step by step."""

    steps: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, outcome: str) -> None:
        self.steps.append((what, outcome))


async def _connect(
    url: URL, what: str, tls: ssl.SSLContext | str | None = None
) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(asyncpg_dsn(url), timeout=10, ssl=tls)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        where = f"{url.host or url.query.get('host') or 'localhost'}:{url.port or 5432}"
        raise DatabaseUnavailableError(
            f"Cannot connect to the {what} at {where}, database {url.database!r}: "
            f"{type(exc).__name__}: {exc}. Check the URL and that the server is running."
        ) from None


async def init_database(admin_url: str, app_url: URL) -> InitResult:
    """Create the app's database and login role, grant it data access, add extensions.

    Idempotent: what exists is left as it is. The role gets data rights (select, insert,
    update, delete) but owns nothing, so row-level security applies to it.
    """
    admin = to_asyncpg_url(admin_url, "--admin-url")
    # TLS as for the app's connections: the admin URL's sslmode/sslrootcert/..., else DATABASE_SSL*.
    tls = Settings().with_url(admin_url).ssl_option
    if not app_url.database:
        raise ConfigurationError("DATABASE_URL names no database; add one: .../DATABASE")
    try:
        return await _init(admin, app_url, tls)
    except asyncpg.PostgresError as exc:
        hint = (
            " The admin role needs CREATEDB and CREATEROLE (a superuser such as postgres has both)."
            if isinstance(exc, asyncpg.InsufficientPrivilegeError)
            else ""
        )
        raise PgStackError(f"db init stopped: {type(exc).__name__}: {exc}.{hint}") from None


async def _init(admin: URL, app_url: URL, tls: ssl.SSLContext | str | None) -> InitResult:
    result = InitResult()
    database, role = app_url.database, app_url.username or "postgres"
    conn = await _connect(admin, "server (admin URL)", tls)
    try:
        admin_role = await conn.fetchval("SELECT current_user")
        if role != admin_role:
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                result.add(f"role {role}", "exists")
            else:
                if app_url.password:
                    ddl = await conn.fetchval(
                        "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                        role,
                        app_url.password,
                    )
                else:
                    ddl = await conn.fetchval(
                        "SELECT format('CREATE ROLE %I LOGIN', $1::text)", role
                    )
                await conn.execute(ddl)
                result.add(f"role {role}", "created")
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            result.add(f"database {database}", "exists")
        else:
            await conn.execute(
                await conn.fetchval("SELECT format('CREATE DATABASE %I', $1::text)", database)
            )
            result.add(f"database {database}", "created")
        if role != admin_role:
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', $1::text, "
                    "$2::text)",
                    database,
                    role,
                )
            )
    finally:
        await conn.close()

    conn = await _connect(admin.set(database=database), "new database", tls)
    try:
        for extension in EXTENSIONS:
            present = await conn.fetchval(
                "SELECT 1 FROM pg_extension WHERE extname = $1", extension
            )
            try:
                await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
            except (asyncpg.FeatureNotSupportedError, asyncpg.UndefinedFileError):
                # Servers built without it (the embedded one has no OpenSSL, so no pgcrypto);
                # pgstack runs without it: gen_random_uuid() is built in since PostgreSQL 13.
                result.add(f"extension {extension}", "not available on this server, skipped")
                continue
            result.add(f"extension {extension}", "exists" if present else "created")
        if role != admin_role:
            grants = await conn.fetchval(
                "SELECT format('GRANT USAGE ON SCHEMA public TO %1$I; "
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %1$I; "
                "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %1$I; "
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
                "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %1$I; "
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
                "GRANT USAGE, SELECT ON SEQUENCES TO %1$I', $1::text)",
                role,
            )
            await conn.execute(grants)
            result.add(f"grants to {role}", "applied")
    finally:
        await conn.close()
    return result
