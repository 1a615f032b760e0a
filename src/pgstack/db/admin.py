"""Server administration: create the application's database, its roles, grants and extensions."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.engine import URL

from pgstack.config import Settings, hosts_text, libpq_url, to_asyncpg_url
from pgstack.errors import ConfigurationError, DatabaseUnavailableError, PgStackError

EXTENSIONS = ("citext", "pgcrypto")


def asyncpg_dsn(url: URL) -> str:
    """A DSN for `asyncpg.connect` from a SQLAlchemy URL (Unix-socket hosts included)."""
    return libpq_url(url)


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
        where = hosts_text(url)
        raise DatabaseUnavailableError(
            f"Cannot connect to the {what} at {where}, database {url.database!r}: "
            f"{type(exc).__name__}: {exc}. Check the URL and that the server is running."
        ) from None


async def init_database(admin_url: str, app_url: URL, owner_url: URL | None = None) -> InitResult:
    """Create the app's database, its owner and application roles, grants and extensions.

    `owner_url` (DATABASE_MIGRATION_URL) names the owner: it owns the database, the schema
    and every table, and runs the migrations. `app_url` (DATABASE_URL) names the
    application role: it may log in and read and write rows, no more (no DDL, no ownership,
    no BYPASSRLS), so row-level security applies to it; default privileges give it the
    tables the owner creates later. Without `owner_url`, or with the same role in both, one
    role owns and serves. Idempotent: roles and the database that exist are kept.
    """
    admin = to_asyncpg_url(admin_url, "--admin-url")
    # TLS as for the app's connections: the admin URL's sslmode/sslrootcert/..., else DATABASE_SSL*.
    tls = Settings().with_url(admin_url).ssl_option
    if not app_url.database:
        raise ConfigurationError("DATABASE_URL names no database; add one: .../DATABASE")
    owner = owner_url or app_url
    if owner.database != app_url.database:
        raise ConfigurationError(
            f"DATABASE_MIGRATION_URL names database {owner.database!r} and DATABASE_URL "
            f"{app_url.database!r}: the owner and the application must share one database."
        )
    try:
        return await _init(admin, app_url, owner, tls)
    except asyncpg.PostgresError as exc:
        hint = (
            " The admin role needs CREATEDB and CREATEROLE (a superuser such as postgres has both)."
            if isinstance(exc, asyncpg.InsufficientPrivilegeError)
            else ""
        )
        raise PgStackError(f"db init stopped: {type(exc).__name__}: {exc}.{hint}") from None


# Roles made here never hold more than logging in: their rights come from grants and ownership.
_ROLE_OPTIONS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


async def _ensure_role(conn: asyncpg.Connection, url: URL, kind: str, result: InitResult) -> None:
    role = url.username or "postgres"
    found = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", role
    )
    if found is not None:
        powers = [n for n, has in (("SUPERUSER", found[0]), ("BYPASSRLS", found[1])) if has]
        note = f" (it has {' and '.join(powers)}: not a plain {kind} role)" if powers else ""
        result.add(f"{kind} role {role}", "exists" + note)
        return
    ddl = await conn.fetchval(
        f"SELECT format('CREATE ROLE %I {_ROLE_OPTIONS}', $1::text) || "
        "CASE WHEN $2::text IS NULL THEN '' ELSE format(' PASSWORD %L', $2::text) END",
        role,
        url.password,
    )
    await conn.execute(ddl)
    result.add(f"{kind} role {role}", "created")


async def _init(
    admin: URL, app_url: URL, owner_url: URL, tls: ssl.SSLContext | str | None
) -> InitResult:
    result = InitResult()
    database = app_url.database
    app_role, owner_role = app_url.username or "postgres", owner_url.username or "postgres"
    split = app_role != owner_role
    conn = await _connect(admin, "server (admin URL)", tls)
    try:
        admin_role = await conn.fetchval("SELECT current_user")
        if owner_role != admin_role:
            await _ensure_role(conn, owner_url, "owner" if split else "database", result)
        if split and app_role != admin_role:
            await _ensure_role(conn, app_url, "application", result)
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            result.add(f"database {database}", "exists")
        else:
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                    database,
                    owner_role,
                )
            )
            result.add(f"database {database}", f"created, owned by {owner_role}")
        for role in {owner_role, app_role} - {admin_role}:
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
        if owner_role != admin_role:
            # Before PostgreSQL 15 every role may create in public; from 15 on the schema
            # belongs to the database's owner. Either way: the owner's, and only its.
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('ALTER SCHEMA public OWNER TO %1$I; "
                    "REVOKE CREATE ON SCHEMA public FROM PUBLIC', $1::text)",
                    owner_role,
                )
            )
            result.add("schema public", f"owned by {owner_role}, no CREATE for others")
        if split:
            await _grant_data_rights(conn, owner_role, app_role, admin_role, result)
        else:
            result.add(
                f"role {owner_role}",
                "owns and serves the database; set DATABASE_MIGRATION_URL to a second role "
                "to let the service connect with data rights only",
            )
    finally:
        await conn.close()
    return result


async def _grant_data_rights(
    conn: asyncpg.Connection, owner: str, app: str, admin: str, result: InitResult
) -> None:
    """Rows, not schema, for `app`, on the tables `owner` has and on those it makes later."""
    owned = await conn.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
        "WHERE r.rolname = $1 AND c.relnamespace = 'public'::regnamespace",
        app,
    )
    if owned and app != admin:
        # An earlier set-up let the application role create tables: they become the owner's.
        await conn.execute(
            await conn.fetchval(
                "SELECT format('REASSIGN OWNED BY %I TO %I', $1::text, $2::text)", app, owner
            )
        )
        result.add(f"objects of {app}", f"{owned} handed to {owner}")
    grants = await conn.fetchval(
        "SELECT format('GRANT USAGE ON SCHEMA public TO %2$I; "
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %2$I; "
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %2$I; "
        "ALTER DEFAULT PRIVILEGES FOR ROLE %1$I IN SCHEMA public "
        "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %2$I; "
        "ALTER DEFAULT PRIVILEGES FOR ROLE %1$I IN SCHEMA public "
        "GRANT USAGE, SELECT ON SEQUENCES TO %2$I', $1::text, $2::text)",
        owner,
        app,
    )
    await conn.execute(grants)
    result.add(f"grants to {app}", f"data rights on {owner}'s tables, now and later")
    await _keep_audit_append_only(conn, app, result)


async def _keep_audit_append_only(conn: asyncpg.Connection, app: str, result: InitResult) -> None:
    """Take back what the blanket grants gave `app` on the audit tables (a re-run of init).

    The audit log's migrations leave the application role INSERT and SELECT on `audit_log`,
    SELECT on its heads and anchors, nothing on the monthly partitions.
    """
    from pgstack.audit.models import APP_RIGHTS, PARTITION_PATTERN

    tables = await conn.fetch(
        "SELECT c.oid::regclass::text AS name, c.relname FROM pg_class c "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') "
        "AND (c.relname = ANY($1::text[]) OR c.relname ~ $2)",
        list(APP_RIGHTS),
        PARTITION_PATTERN,
    )
    for table in tables:
        keep = APP_RIGHTS.get(table["relname"])
        sql = await conn.fetchval(
            "SELECT format('REVOKE ALL ON %s FROM %I', $1::text, $2::text)", table["name"], app
        )
        if keep:
            sql += await conn.fetchval(
                "SELECT format('; GRANT %s ON %s TO %I', $1::text, $2::text, $3::text)",
                keep,
                table["name"],
                app,
            )
        await conn.execute(sql)
    if tables:
        result.add(f"audit tables for {app}", "append-only: INSERT and SELECT on audit_log")
