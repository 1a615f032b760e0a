"""Assertions for an application's migrations: they round-trip, and they match the models."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, MetaData, text

from pgstack.migrations.api import Target, _with_connection, check, downgrade, resolve, upgrade
from pgstack.migrations.project import MigrationProject

# Everything a migration can leave behind in the search-path schemas, one line per object,
# so two snapshots compare as sets. The version table is Alembic's and is left out.
_SNAPSHOT = text(
    """
    WITH s AS (SELECT oid, nspname FROM pg_namespace
               WHERE nspname = ANY (current_schemas(false))),
    ext AS (SELECT objid, classid FROM pg_depend WHERE deptype = 'e')
    SELECT format('relation %s.%s (%s)', s.nspname, c.relname, c.relkind)
    FROM pg_class c JOIN s ON s.oid = c.relnamespace
    WHERE c.relname NOT IN ('alembic_version', 'alembic_version_pkc')
      AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.objid = c.oid)
    UNION ALL
    SELECT format('column %s.%s %s %s default %s', c.relname, a.attname,
                  format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN 'not null' ELSE 'null' END,
                  coalesce(pg_get_expr(d.adbin, d.adrelid), 'none'))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN s ON s.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND c.relname <> 'alembic_version'
    UNION ALL
    SELECT format('constraint %s on %s: %s', con.conname, con.conrelid::regclass,
                  pg_get_constraintdef(con.oid))
    FROM pg_constraint con JOIN s ON s.oid = con.connamespace
    WHERE con.conrelid::regclass::text <> 'alembic_version'
    UNION ALL
    SELECT format('index %s', i.indexdef) FROM pg_indexes i
    WHERE i.schemaname = ANY (current_schemas(false)) AND i.tablename <> 'alembic_version'
    UNION ALL
    SELECT format('type %s.%s (%s) %s', s.nspname, t.typname, t.typtype,
                  (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                   FROM pg_enum e WHERE e.enumtypid = t.oid))
    FROM pg_type t JOIN s ON s.oid = t.typnamespace LEFT JOIN pg_class c ON c.oid = t.typrelid
    WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND c.relkind = 'c'))
      AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.objid = t.oid)
    UNION ALL
    SELECT format('function %s.%s(%s)', s.nspname, p.proname,
                  pg_get_function_identity_arguments(p.oid))
    FROM pg_proc p JOIN s ON s.oid = p.pronamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.objid = p.oid)
    UNION ALL
    SELECT format('trigger %s on %s', tg.tgname, tg.tgrelid::regclass)
    FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN s ON s.oid = c.relnamespace
    WHERE NOT tg.tgisinternal
    UNION ALL
    SELECT format('policy %s on %s', pol.polname, pol.polrelid::regclass) FROM pg_policy pol
    UNION ALL
    SELECT format('row level security on %s', c.oid::regclass)
    FROM pg_class c JOIN s ON s.oid = c.relnamespace WHERE c.relrowsecurity
    UNION ALL
    SELECT format('extension %s', e.extname) FROM pg_extension e
    """
)


def schema_snapshot(target: Target) -> set[str]:
    """Every table, column, constraint, index, type, function, trigger, policy and extension."""

    def snap(conn: Connection) -> set[str]:
        return {row[0] for row in conn.execute(_SNAPSHOT)}

    return _with_connection(resolve(target), snap, "reading the schema")


def assert_migrations_roundtrip(target: Target, *, project: MigrationProject | None = None) -> None:
    """Upgrade to head, downgrade to base, upgrade again: each downgrade must undo its upgrade.

    Run it on an empty database. After the downgrade the schema must be as it was before the
    first upgrade (an ENUM type or an extension left behind fails), and the second upgrade
    must build the same schema as the first.
    """
    project = project or MigrationProject.discover()
    before = schema_snapshot(target)
    upgrade(target, "heads", project=project)
    first = schema_snapshot(target)
    assert first != before, "upgrading to head changed nothing: are the migrations found?"
    downgrade(target, "base", project=project)
    after_down = schema_snapshot(target)
    _assert_same(before, after_down, "after `downgrade base` the schema differs from before")
    upgrade(target, "heads", project=project)
    second = schema_snapshot(target)
    _assert_same(first, second, "upgrading again built a different schema")


def assert_no_drift(
    target: Target,
    metadata: MetaData | Sequence[MetaData] | None = None,
    *,
    project: MigrationProject | None = None,
) -> None:
    """The database (at head) matches the models: tables, columns, types, nullability,
    server defaults, indexes and constraints.

    `metadata` defaults to pgstack's and the project's models; pass it explicitly to
    compare with exactly the models you name.
    """
    if isinstance(metadata, MetaData):
        metadata = [metadata]
    problems = check(target, project=project, metadata=metadata)
    assert not problems, "the models and the database differ:\n  - " + "\n  - ".join(problems)


def _assert_same(expected: set[str], actual: set[str], what: str) -> None:
    if expected == actual:
        return
    lines = [f"  left behind: {x}" for x in sorted(actual - expected)]
    lines += [f"  missing: {x}" for x in sorted(expected - actual)]
    raise AssertionError(what + ":\n" + "\n".join(lines))
