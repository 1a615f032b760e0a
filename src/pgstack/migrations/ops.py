"""Database operations beyond migrating: reset, clear, validate."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, inspect, text

from pgstack.config import Settings, render_url
from pgstack.errors import ProductionSafetyError
from pgstack.migrations._env import acquire_lock, release
from pgstack.migrations.api import (
    Target,
    _with_connection,
    migration_settings,
    resolve,
    upgrade,
)
from pgstack.migrations.compare import missing_objects
from pgstack.migrations.project import MigrationProject
from pgstack.migrations.state import describe_revisions, read_status

# Tables `clear` keeps: they describe the schema, not the application's data.
KEEP_ON_CLEAR = frozenset({"pgstack_meta", "alembic_version"})

# Everything in the search-path schemas that no extension owns; extensions, roles and grants
# (including default privileges from `pgstack db init`) survive a reset.
_DROP_STATEMENTS = text(
    """
    SELECT format('DROP %s IF EXISTS %I.%I CASCADE',
                  CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                 WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                                 ELSE 'TABLE' END,
                  n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY (current_schemas(false))
      AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT c.relispartition
      -- extension members stay; identity and serial sequences go with their tables (a
      -- partitioned table's key columns depend on it too: objsubid <> 0, not a reason)
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.objsubid = 0 AND d.deptype IN ('e', 'a', 'i'))
    UNION ALL
    SELECT format('DROP TYPE IF EXISTS %I.%I CASCADE', n.nspname, t.typname)
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    LEFT JOIN pg_class c ON c.oid = t.typrelid
    WHERE n.nspname = ANY (current_schemas(false))
      AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND c.relkind = 'c'))
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                      AND d.objid = t.oid AND d.deptype = 'e')
    UNION ALL
    SELECT format('DROP ROUTINE IF EXISTS %I.%I(%s) CASCADE', n.nspname, p.proname,
                  pg_get_function_identity_arguments(p.oid))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = ANY (current_schemas(false)) AND p.prokind IN ('f', 'p')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                      AND d.objid = p.oid AND d.deptype = 'e')
    """
)


def refuse_in_production(settings: Settings, what: str) -> None:
    """Raise `ProductionSafetyError` when PGSTACK_ENV is production."""
    if settings.environment == "production":
        raise ProductionSafetyError(
            f"`pgstack db {what}` is refused because PGSTACK_ENV=production; nothing was "
            "changed. Run it against a development or test database."
        )


def reset(target: Target | None = None, *, project: MigrationProject | None = None) -> list[str]:
    """Drop every table, view, sequence, type and function, then upgrade to head.

    Refused in production. Extensions, roles and grants stay. Returns the applied revisions.
    """
    settings = migration_settings(resolve(target))
    refuse_in_production(settings, "reset")
    project = project or MigrationProject.discover()

    def drop_all(conn: Connection) -> int:
        # Under the migration lock, so a replica starting meanwhile does not migrate half of it.
        acquire_lock(conn, settings.migration_lock_wait_s)
        try:
            statements = [row[0] for row in conn.execute(_DROP_STATEMENTS)]
            for statement in statements:
                conn.execute(text(statement))
            conn.commit()
        except BaseException:
            release(conn, locked=True, quiet=True)
            raise
        release(conn, locked=True)
        return len(statements)

    _with_connection(settings, drop_all, "dropping the schema")
    return upgrade(settings, "heads", project=project)


def clear(
    target: Target | None = None, *, project: MigrationProject | None = None
) -> dict[str, int]:
    """Delete every row of the models' tables (schema and version kept); rows removed per table.

    Refused in production.
    """
    settings = migration_settings(resolve(target))
    refuse_in_production(settings, "clear")
    project = project or MigrationProject.discover()
    tables = [t for md in project.metadata() for t in md.sorted_tables]

    def truncate(conn: Connection) -> dict[str, int]:
        present = _present(conn, tables)
        chosen = [t for t in present if t.name not in KEEP_ON_CLEAR]
        counts = {
            t.name: int(
                conn.execute(text(f"SELECT count(*) FROM {_qualified(conn, t)}")).scalar_one()
            )
            for t in chosen
        }
        if chosen:
            names = ", ".join(_qualified(conn, t) for t in chosen)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
        conn.commit()
        return counts

    return _with_connection(settings, truncate, "clearing the data")


@dataclass
class ValidationItem:
    """One line of `validate`'s report."""

    section: str
    name: str
    ok: bool
    detail: str


@dataclass
class ValidationReport:
    """What `validate` found; `ok` when nothing failed."""

    items: list[ValidationItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every item passed."""
        return all(item.ok for item in self.items)

    def add(self, section: str, name: str, ok: bool, detail: str) -> None:
        self.items.append(ValidationItem(section, name, ok, detail))


def validate(
    target: Target | None = None, *, project: MigrationProject | None = None
) -> ValidationReport:
    """Check migrations, schema objects and data access, and summarise the configuration."""
    settings = resolve(target)
    project = project or MigrationProject.discover()
    metadata = project.metadata()
    script = project.script
    report = ValidationReport()

    def run(conn: Connection) -> None:
        version = conn.execute(text("SHOW server_version")).scalar_one()
        report.add("server", "connection", True, f"PostgreSQL {version}")
        report.add("roles", "service role", *_role_check(conn, settings))
        state = read_status(conn, script)
        if state.missing:
            report.add(
                "migrations",
                "at head",
                False,
                f"missing: {describe_revisions(script, state.missing)}",
            )
        else:
            report.add("migrations", "at head", True, ", ".join(state.current))
        if state.unknown:
            report.add(
                "migrations",
                "known",
                state.ahead,
                f"unknown: {', '.join(state.unknown)}"
                + (" (a newer release migrated it)" if state.ahead else " (another lineage)"),
            )
        conn.rollback()

        problems = missing_objects(conn, metadata)
        for problem in problems:
            what = problem.table if problem.kind == "table" else f"{problem.table}.{problem.name}"
            report.add("schema", f"{problem.kind} {what}", False, problem.message)
        if not problems:
            report.add("schema", "objects", True, _census(metadata))
        conn.rollback()

        report.add("data", "create/read/update/delete", *_crud_probe(conn))

    _with_connection(settings, run, "validating")
    summary: dict[str, Any] = settings.summary()
    summary["database_url"] = render_url(settings.url) if settings.url is not None else "(none)"
    owner = migration_settings(settings)
    if owner is not settings and owner.url is not None:
        summary["database_migration_url"] = render_url(owner.url)
    summary["app_migrations"] = str(project.versions) if project.versions else "(none)"
    summary["models"] = project.models or "(none)"
    summary["branch"] = project.branch if project.versions else "(pgstack only)"
    for key, value in summary.items():
        report.add("configuration", key, True, str(value))
    return report


_ROLE = text(
    """
    SELECT current_user AS name, r.rolsuper AS superuser, r.rolbypassrls AS bypassrls,
           pg_has_role(current_user, n.nspowner, 'USAGE') AS owns_schema,
           EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid
                   AND pg_has_role(current_user, c.relowner, 'USAGE')) AS owns_tables
    FROM pg_roles r, pg_namespace n
    WHERE r.rolname = current_user AND n.nspname = current_schema()
    """
)


def _role_check(conn: Connection, settings: Settings) -> tuple[bool, str]:
    """Whether the service's role is the application role: no superuser, owns nothing."""
    role = conn.execute(_ROLE).one_or_none()
    conn.rollback()
    if role is None:
        return True, "no current schema to judge ownership by"
    powers = [
        what
        for what, has in (
            ("a superuser", role.superuser),
            ("exempt from row-level security (BYPASSRLS)", role.bypassrls),
            ("the schema's owner", role.owns_schema),
            ("the owner of tables", role.owns_tables),
        )
        if has
    ]
    if not powers:
        return True, f"{role.name}: data rights only"
    detail = (
        f"DATABASE_URL connects as {role.name}, {' and '.join(powers)}: in production "
        "connect the service as the application role and migrate as the owner with "
        "DATABASE_MIGRATION_URL (`pgstack db init` makes both)"
    )
    if settings.environment != "production":
        return True, detail + f" (allowed in {settings.environment})"
    return False, detail


def _crud_probe(conn: Connection) -> tuple[bool, str]:
    key = f"pgstack.validate.{uuid.uuid4().hex}"
    if conn.in_transaction():
        conn.rollback()
    transaction = conn.begin()
    try:
        conn.execute(text("INSERT INTO pgstack_meta (key, value) VALUES (:k, 'probe')"), {"k": key})
        read = conn.execute(text("SELECT value FROM pgstack_meta WHERE key = :k"), {"k": key})
        ok_read = read.scalar_one_or_none() == "probe"
        updated = conn.execute(
            text("UPDATE pgstack_meta SET value = 'probed' WHERE key = :k"), {"k": key}
        ).rowcount
        deleted = conn.execute(text("DELETE FROM pgstack_meta WHERE key = :k"), {"k": key}).rowcount
    except Exception as exc:
        inner = getattr(exc, "orig", None) or exc
        return False, f"on pgstack_meta: {type(inner).__name__}: {str(inner).splitlines()[0]}"
    finally:
        # Nothing of the probe may stay, whatever happened.
        transaction.rollback()
    if ok_read and updated == 1 and deleted == 1:
        return True, "insert, select, update, delete on pgstack_meta, rolled back"
    return False, "the probe row did not read back, update or delete as written"


def _census(metadata: list[Any]) -> str:
    tables = [t for md in metadata for t in md.sorted_tables]
    columns = sum(len(t.columns) for t in tables)
    indexes = sum(len(t.indexes) for t in tables)
    constraints = sum(len(t.constraints) for t in tables)
    return (
        f"{len(tables)} tables, {columns} columns, {indexes} indexes, "
        f"{constraints} constraints present"
    )


def _present(conn: Connection, tables: list[Table]) -> list[Table]:
    inspector = inspect(conn)
    names: dict[str | None, set[str]] = {}
    found = []
    for table in tables:
        if table.schema not in names:
            names[table.schema] = set(inspector.get_table_names(schema=table.schema))
        if table.name in names[table.schema]:
            found.append(table)
    return found


def _qualified(conn: Connection, table: Table) -> str:
    return str(conn.dialect.identifier_preparer.format_table(table))
