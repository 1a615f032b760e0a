"""Models against the database: autogenerate's comparison, and readable lists of differences."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import _repr_type
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    ForeignKeyConstraint,
    Index,
    MetaData,
    Table,
    TypeDecorator,
    UniqueConstraint,
    inspect,
)


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write a TypeDecorator column (UTC datetime, encrypted text...) as its database type.

    A revision is history: it must keep working when a Python type is renamed or moved, and
    it must not need imports Alembic does not write. The database type is what it creates.
    """
    if kind == "type" and isinstance(obj, TypeDecorator):
        impl = obj.load_dialect_impl(autogen_context.dialect) if autogen_context.dialect else None
        # Alembic's own renderer, so dialect types get their imports written as usual.
        return _repr_type(impl if impl is not None else obj.impl_instance, autogen_context)
    return False


# The audit log's tables (pgstack_0007_audit, pgstack_0009_audit_speed): partitioned, made and
# guarded by SQL that models cannot express, its partitions made at run time. Autogenerate
# leaves them alone.
_SQL_MANAGED = re.compile(r"^(audit_log|audit_log_y\d{4}m\d{2}|audit_chain_heads|audit_anchors)$")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Whether autogenerate compares this object: not the audit log's own tables."""
    return not (type_ == "table" and name is not None and _SQL_MANAGED.match(name))


# Used by env.py (autogenerate) and by `check`, so both see the same differences: types and
# server defaults are compared too, not only tables and columns.
COMPARE_OPTIONS: dict[str, Any] = {
    "compare_type": True,
    "compare_server_default": True,
    "render_item": render_item,
    "include_name": include_name,
}


def differences(conn: Connection, metadata: Sequence[MetaData]) -> list[str]:
    """Every way the database differs from the models, one readable line each."""
    context = MigrationContext.configure(
        conn, opts={**COMPARE_OPTIONS, "target_metadata": list(metadata)}
    )
    # compare_metadata accepts a sequence of MetaData, like target_metadata does.
    diffs = compare_metadata(context, cast(MetaData, list(metadata)))
    lines: list[str] = []
    for diff in diffs:
        if isinstance(diff, list):
            lines.extend(_describe(d) for d in diff)
        else:
            lines.append(_describe(diff))
    lines.extend(p.message for p in missing_objects(conn, metadata) if p.kind == "check")
    return lines


@dataclass(frozen=True)
class SchemaProblem:
    """Something the models declare that the database lacks."""

    kind: str  # table, column, primary key, index, unique, foreign key, check
    table: str
    name: str
    message: str


def missing_objects(conn: Connection, metadata: Sequence[MetaData]) -> list[SchemaProblem]:
    """Tables, columns, indexes and constraints of the models that the database lacks.

    Constraints are matched by name, which the naming convention makes stable; that also
    covers CHECK constraints, which autogenerate does not compare. One catalog query per
    kind of object and schema serves every table.
    """
    inspector = inspect(conn)
    by_schema: dict[str | None, list[Table]] = {}
    for md in metadata:
        for table in md.sorted_tables:
            by_schema.setdefault(table.schema, []).append(table)
    problems: list[SchemaProblem] = []
    for schema, tables in by_schema.items():
        present = set(inspector.get_table_names(schema=schema))
        names = [t.name for t in tables if t.name in present]
        found = _catalog(inspector, schema, names) if names else {}
        for table in tables:
            if table.name not in present:
                problems.append(
                    SchemaProblem("table", table.name, table.name, f"table {table.name}: missing")
                )
            else:
                problems.extend(_missing_in_table(table, found))
    return problems


def _catalog(inspector: Any, schema: str | None, names: list[str]) -> dict[str, dict[Any, Any]]:
    """Per kind, `{(schema, table): reflected}` for the named tables, one query per kind."""
    kinds = {
        "columns": inspector.get_multi_columns,
        "pk": inspector.get_multi_pk_constraint,
        "indexes": inspector.get_multi_indexes,
        "uniques": inspector.get_multi_unique_constraints,
        "fks": inspector.get_multi_foreign_keys,
        "checks": inspector.get_multi_check_constraints,
    }
    return {kind: get(schema=schema, filter_names=names) for kind, get in kinds.items()}


def _missing_in_table(table: Table, found: dict[str, dict[Any, Any]]) -> list[SchemaProblem]:
    name, key = table.name, (table.schema, table.name)
    problems: list[SchemaProblem] = []

    def names(kind: str) -> set[str]:
        return {item["name"] for item in found[kind].get(key, [])}

    def lack(kind: str, what: str) -> None:
        problems.append(SchemaProblem(kind, name, what, f"table {name}: {kind} {what} missing"))

    columns, indexes, uniques = names("columns"), names("indexes"), names("uniques")
    fks, checks = names("fks"), names("checks")
    for column in table.columns:
        if column.name not in columns:
            lack("column", column.name)
    pk = found["pk"].get(key) or {}
    if table.primary_key.columns and not pk.get("constrained_columns"):
        lack("primary key", str(table.primary_key.name or ""))
    for index in table.indexes:
        if index.name and index.name not in indexes:
            lack("index", str(index.name))
    for constraint in table.constraints:
        cname = str(constraint.name) if constraint.name else None
        if cname is None:
            continue
        if isinstance(constraint, UniqueConstraint) and cname not in uniques | indexes:
            lack("unique", cname)
        elif isinstance(constraint, ForeignKeyConstraint) and cname not in fks:
            lack("foreign key", cname)
        elif isinstance(constraint, CheckConstraint) and cname not in checks:
            problems.append(
                SchemaProblem(
                    "check",
                    name,
                    cname,
                    f"table {name}: check constraint {cname} is in the models, "
                    "missing from the database",
                )
            )
    return problems


def _describe(diff: tuple[Any, ...]) -> str:
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        table: Table = diff[1]
        return f"table {table.name}: {_where(kind)}"
    if kind in ("add_column", "remove_column"):
        column: Column[Any] = diff[3]
        return f"column {diff[2]}.{column.name}: {_where(kind)} ({column.type})"
    if kind in ("add_index", "remove_index"):
        index: Index = diff[1]
        columns = ", ".join(str(getattr(c, "name", c)) for c in index.expressions)
        table_name = index.table.name if index.table is not None else "?"
        return f"index {index.name} on {table_name} ({columns}): {_where(kind)}"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        label = "foreign key" if kind.endswith("_fk") else "constraint"
        table_name = constraint.table.name if constraint.table is not None else "?"
        return f"{label} {constraint.name} on {table_name}: {_where(kind)}"
    if kind == "modify_nullable":
        _, _, table_name, column_name, _, old, new = diff
        return (
            f"column {table_name}.{column_name}: "
            f"{_nullable(old)} in the database, {_nullable(new)} in the models"
        )
    if kind == "modify_type":
        _, _, table_name, column_name, _, old, new = diff
        return f"column {table_name}.{column_name}: type {old} in the database, {new} in the models"
    if kind == "modify_default":
        _, _, table_name, column_name, _, old, new = diff
        return (
            f"column {table_name}.{column_name}: server default {_default(old)} in the "
            f"database, {_default(new)} in the models"
        )
    if kind == "modify_comment":
        _, _, table_name, column_name, _, old, new = diff
        return f"column {table_name}.{column_name}: comment {old!r} in the database, {new!r}"
    if kind in ("add_table_comment", "remove_table_comment"):
        return f"table {diff[1].name}: comment differs"
    return f"{kind}: {diff[1:]}"


def _where(kind: str) -> str:
    if kind.startswith("add"):
        return "in the models, missing from the database"
    return "in the database, not in the models"


def _nullable(value: Any) -> str:
    return "nullable" if value else "NOT NULL"


def _default(value: Any) -> str:
    if value is None:
        return "none"
    arg = getattr(value, "arg", value)
    return str(getattr(arg, "text", arg))
