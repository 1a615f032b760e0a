"""Migration safety: what in a revision's SQL locks or rewrites a busy table, or breaks code.

    findings = lint_sql("ALTER TABLE users ALTER COLUMN email SET NOT NULL;")
    findings = pending_findings(settings, project)   # the revisions not applied yet

The SQL is what Alembic's offline mode renders for each revision's `upgrade()`. One rule
per function (as squawk has one rule per file); each finding names the safe sequence.
Statements on a table created in the same revision are left alone: nobody uses it yet.
A revision silences a rule with a module attribute: `safety_ignore = ("index.not-concurrent",)`.

pgstack's migration runner already sets `lock_timeout` (PGSTACK_MIGRATION_LOCK_TIMEOUT_MS)
for every revision, so a lock that cannot be had fails the migration instead of queueing
the service behind it; these rules are about what happens once the lock is held.

Helpers for revisions (`from pgstack.migrations.safety import ...`): `lock_timeout` and
`create_index_concurrently`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alembic import op
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData

from pgstack.config import Settings
from pgstack.db.doctor import Finding, Severity
from pgstack.migrations.api import status
from pgstack.migrations.project import MigrationProject

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_QNAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"
_ALTER = re.compile(
    rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{_QNAME})\s+(?P<rest>.*)$",
    re.I | re.S,
)
_ADD_COLUMN = (
    r"ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?!(?:CONSTRAINT|PRIMARY|UNIQUE|FOREIGN|CHECK|EXCLUDE)\b)(?P<col>{_IDENT})\s+"
    r"(?P<spec>.*?)(?=,\s*(?:ADD|DROP|ALTER)\s|$)"
)
_VOLATILE = re.compile(
    r"\b(random|clock_timestamp|timeofday|gen_random_uuid|uuid_generate_v[14]\w*|nextval|"
    r"uuidv7|uuidv4)\s*\(",
    re.I,
)


def _name(raw: str) -> str:
    """`"Public".Users` -> `Public.users`: unquoted parts fold to lower case, as PostgreSQL does."""
    parts = re.findall(_IDENT, raw)
    return ".".join(p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts)


def _bare(table: str) -> str:
    return table.rsplit(".", 1)[-1]


@dataclass
class Statement:
    """One statement of a revision, with where it stands in the revision's transaction."""

    sql: str
    revision: str
    in_transaction: bool
    table: str | None = None  # the table of an ALTER TABLE
    rest: str = ""  # what an ALTER TABLE does to it


@dataclass
class _Revision:
    """What earlier statements of the same revision did (tables made, checks validated)."""

    name: str
    mapped: Mapping[str, set[str]]
    created: set[str] = field(default_factory=set)
    not_null_checks: dict[str, tuple[str, str]] = field(default_factory=dict)
    validated: set[tuple[str, str]] = field(default_factory=set)

    def is_new(self, table: str | None) -> bool:
        return table is not None and (table in self.created or _bare(table) in self.created)

    def maps(self, table: str, column: str | None = None) -> bool:
        columns = self.mapped.get(table, self.mapped.get(_bare(table)))
        return columns is not None and (column is None or column in columns)


Rule = Callable[[Statement, _Revision], Iterator[Finding]]


def _finding(id: str, severity: Severity, stmt: Statement, obj: str, why: str, fix: str) -> Finding:
    shown = stmt.sql if len(stmt.sql) <= 200 else stmt.sql[:197] + "..."
    where = f"revision {stmt.revision}: " if stmt.revision else ""
    return Finding(id, severity, obj, f"{where}{shown}", why, fix)


# -- rules ------------------------------------------------------------------------------------


def _on_existing(stmt: Statement, rev: _Revision, pattern: str) -> Iterator[re.Match[str]]:
    """Matches of `pattern` in what an ALTER TABLE does to a table older than this revision."""
    if stmt.table is None or rev.is_new(stmt.table):
        return
    yield from re.finditer(pattern, stmt.rest, re.I | re.S)


def add_column_volatile_default(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """ADD COLUMN with a volatile default (or serial, or a stored generated column) rewrites."""
    for match in _on_existing(stmt, rev, _ADD_COLUMN):
        spec = match["spec"]
        default = re.search(r"\bDEFAULT\s+(.*)", spec, re.I | re.S)
        volatile = default is not None and _VOLATILE.search(default.group(1))
        serial = re.match(r"\s*(small|big)?serial\b", spec, re.I)
        stored = re.search(r"\bGENERATED\s+ALWAYS\s+AS\s*\(.*\)\s*STORED", spec, re.I | re.S)
        if not (volatile or serial or stored):
            continue
        col = _name(match["col"])
        yield _finding(
            "column.volatile-default",
            "warn",
            stmt,
            f"column {stmt.table}.{col}",
            "A default computed per row (or a serial or stored generated column) makes "
            "PostgreSQL rewrite the whole table under an ACCESS EXCLUSIVE lock.",
            f"Add the column without a default (ALTER TABLE {stmt.table} ADD COLUMN {col} ...), "
            f"then ALTER COLUMN {col} SET DEFAULT ... for new rows, then backfill existing rows "
            "in batches.",
        )


def add_column_not_null_without_default(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """ADD COLUMN ... NOT NULL without a default fails on a table that has rows."""
    for match in _on_existing(stmt, rev, _ADD_COLUMN):
        spec = match["spec"]
        if re.search(r"\bNOT\s+NULL\b", spec, re.I) and not re.search(
            r"\bDEFAULT\b|\bGENERATED\b|\b(small|big)?serial\b", spec, re.I
        ):
            col = _name(match["col"])
            yield _finding(
                "column.not-null-without-default",
                "error",
                stmt,
                f"column {stmt.table}.{col}",
                "Existing rows have no value for it: the migration fails on any table with rows.",
                f"Add {col} with a constant DEFAULT (no rewrite since PostgreSQL 11), or add it "
                "nullable, backfill in batches, then SET NOT NULL via a validated CHECK.",
            )


def set_not_null(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """SET NOT NULL scans the table under ACCESS EXCLUSIVE unless a validated CHECK proves it."""
    for match in _on_existing(
        stmt, rev, rf"ALTER\s+(?:COLUMN\s+)?(?P<col>{_IDENT})\s+SET\s+NOT\s+NULL"
    ):
        col = _name(match["col"])
        if (stmt.table, col) in rev.validated:
            continue
        yield _finding(
            "column.set-not-null",
            "warn",
            stmt,
            f"column {stmt.table}.{col}",
            "PostgreSQL scans every row to prove there is no NULL while holding an ACCESS "
            "EXCLUSIVE lock: reads and writes of the table wait for the whole scan.",
            f"ALTER TABLE {stmt.table} ADD CONSTRAINT {_bare(str(stmt.table))}_{col}_not_null "
            f"CHECK ({col} IS NOT NULL) NOT VALID; ALTER TABLE {stmt.table} VALIDATE "
            f"CONSTRAINT {_bare(str(stmt.table))}_{col}_not_null; then SET NOT NULL (it uses the "
            "check, no scan) and drop the check.",
        )


def index_not_concurrent(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """CREATE INDEX without CONCURRENTLY blocks writes for the whole build."""
    match = re.match(
        rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY\b)(?:IF\s+NOT\s+EXISTS\s+)?"
        rf"(?:{_IDENT}\s+)?ON\s+(?:ONLY\s+)?(?P<table>{_QNAME})",
        stmt.sql,
        re.I,
    )
    if match is None or rev.is_new(_name(match["table"])):
        return
    yield _finding(
        "index.not-concurrent",
        "warn",
        stmt,
        f"table {_name(match['table'])}",
        "CREATE INDEX holds a SHARE lock for the whole build: every write to the table waits.",
        "with op.get_context().autocommit_block(): op.create_index(..., "
        "postgresql_concurrently=True) - or pgstack.migrations.safety.create_index_concurrently",
    )


def drop_index_not_concurrent(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the table."""
    if not re.match(r"^DROP\s+INDEX\s+(?!CONCURRENTLY\b)", stmt.sql, re.I):
        return
    yield _finding(
        "index.drop-not-concurrent",
        "warn",
        stmt,
        "index",
        "DROP INDEX locks the index's table against reads and writes while it waits and runs.",
        "with op.get_context().autocommit_block(): op.drop_index(..., "
        "postgresql_concurrently=True)",
    )


def concurrently_in_transaction(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """CONCURRENTLY cannot run inside a transaction block: the migration fails."""
    if stmt.in_transaction and re.match(
        r"^(CREATE\s+(UNIQUE\s+)?INDEX|DROP\s+INDEX|REINDEX\b.*)\s+CONCURRENTLY\b", stmt.sql, re.I
    ):
        yield _finding(
            "index.concurrently-in-transaction",
            "error",
            stmt,
            "index",
            "CREATE/DROP INDEX CONCURRENTLY refuses to run inside a transaction, and each "
            "revision runs in one.",
            "Wrap it: with op.get_context().autocommit_block(): ... (or use "
            "pgstack.migrations.safety.create_index_concurrently).",
        )


def constraint_not_valid(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """ADD FOREIGN KEY / CHECK without NOT VALID checks every row under lock."""
    for match in _on_existing(
        stmt,
        rev,
        rf"ADD\s+(?:CONSTRAINT\s+(?P<name>{_IDENT})\s+)?(?P<kind>FOREIGN\s+KEY|CHECK)\b"
        r"(?P<body>.*?)(?=,\s*ADD\s|$)",
    ):
        if re.search(r"\bNOT\s+VALID\b", match["body"], re.I):
            continue
        kind = " ".join(match["kind"].upper().split())
        name = _name(match["name"]) if match["name"] else "<name>"
        yield _finding(
            "constraint.not-valid-missing",
            "warn",
            stmt,
            f"table {stmt.table}",
            f"Adding a {kind} checks every existing row while writes to the table"
            + (" and the referenced table" if kind == "FOREIGN KEY" else "")
            + " are blocked.",
            f"ALTER TABLE {stmt.table} ADD CONSTRAINT {name} {kind} ... NOT VALID; then, in a "
            f"later statement, ALTER TABLE {stmt.table} VALIDATE CONSTRAINT {name}; (the "
            "validation lets reads and writes through).",
        )


def column_type_change(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """ALTER COLUMN ... TYPE usually rewrites the table and its indexes."""
    for match in _on_existing(
        stmt, rev, rf"ALTER\s+(?:COLUMN\s+)?(?P<col>{_IDENT})\s+(?:SET\s+DATA\s+)?TYPE\b"
    ):
        col = _name(match["col"])
        yield _finding(
            "column.type-change",
            "warn",
            stmt,
            f"column {stmt.table}.{col}",
            "Changing a column's type rewrites the table and rebuilds its indexes under an "
            "ACCESS EXCLUSIVE lock (only a few changes, like widening varchar, are free), and "
            "running code may still send the old type.",
            f"Add a new column of the new type, write both from the code, backfill in batches, "
            f"switch reads, then drop {col} in a later release.",
        )


def rename(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """Renaming a table or column breaks the code that is running during the deploy."""
    if rev.is_new(stmt.table) or stmt.table is None:
        return
    column = re.match(rf"RENAME\s+(?:COLUMN\s+)?(?P<old>{_IDENT})\s+TO\s+", stmt.rest, re.I)
    table = re.match(r"RENAME\s+TO\s+", stmt.rest, re.I)
    if table is not None:
        what = f"table {stmt.table}"
    elif column is not None and column["old"].upper() not in ("CONSTRAINT",):
        what = f"column {stmt.table}.{_name(column['old'])}"
    else:
        return
    yield _finding(
        "rename",
        "error",
        stmt,
        what,
        "The running release still uses the old name: its queries fail from the moment "
        "the migration commits until the new code is everywhere.",
        "Add the new name (a new column, or a view for a table), write both, move readers, "
        "and drop the old name in a later release once no running code uses it.",
    )


def drop_mapped_column(stmt: Statement, rev: _Revision) -> Iterator[Finding]:
    """Dropping a column or table the models still map breaks the running code."""
    if stmt.table is not None:
        for match in re.finditer(
            rf"DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?(?P<col>{_IDENT})", stmt.rest, re.I
        ):
            col = _name(match["col"])
            if col in ("constraint",) or not rev.maps(stmt.table, col):
                continue
            yield _finding(
                "column.drop-mapped",
                "error",
                stmt,
                f"column {stmt.table}.{col}",
                "The models still map this column: every query of the running code that "
                "selects or inserts it fails once it is gone.",
                f"Remove {col} from the model (or mark it deferred and unused) and deploy "
                "that first; drop the column in the next release.",
            )
    dropped = re.match(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?P<t>{_QNAME})", stmt.sql, re.I)
    if dropped is not None and rev.maps(_name(dropped["t"])):
        yield _finding(
            "table.drop-mapped",
            "error",
            stmt,
            f"table {_name(dropped['t'])}",
            "The models still map this table: the running code fails once it is gone.",
            "Remove the model and deploy that first; drop the table in the next release.",
        )


RULES: tuple[Rule, ...] = (
    add_column_volatile_default,
    add_column_not_null_without_default,
    set_not_null,
    index_not_concurrent,
    drop_index_not_concurrent,
    concurrently_in_transaction,
    constraint_not_valid,
    column_type_change,
    rename,
    drop_mapped_column,
)


# -- reading SQL ------------------------------------------------------------------------------


def split_sql(sql: str) -> list[str]:
    """Statements of `sql`, comments removed, whitespace collapsed (quotes respected)."""
    statements, current, i, n = [], [], 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            i = sql.find("\n", i)
            i = n if i < 0 else i
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            current.append(" ")
            continue
        if c in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == c and sql[end + 1 : end + 2] == c:
                    end += 2
                elif sql[end] == c:
                    break
                else:
                    end += 1
            current.append(sql[i : end + 1])
            i = end + 1
            continue
        dollar = re.match(r"\$(\w*)\$", sql[i:]) if c == "$" else None
        if dollar:
            tag = dollar.group(0)
            end = sql.find(tag, i + len(tag))
            end = n if end < 0 else end + len(tag)
            current.append(sql[i:end])
            i = end
            continue
        if c == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    statements.append("".join(current))
    return [" ".join(s.split()) for s in statements if s.strip()]


def lint_sql(
    sql: str,
    *,
    revision: str = "",
    mapped: Mapping[str, set[str]] | None = None,
    ignore: Iterable[str] = (),
    rules: Sequence[Rule] = RULES,
) -> list[Finding]:
    """The findings for one revision's SQL (run in a transaction, as pgstack runs revisions).

    `mapped` is table name -> column names the running code's models map.
    """
    rev = _Revision(revision, mapped or {})
    silenced = set(ignore)
    findings: list[Finding] = []
    in_transaction = True
    for sql_stmt in split_sql(sql):
        head = sql_stmt.upper()
        if head in ("COMMIT", "END", "ROLLBACK"):
            in_transaction = False
            continue
        if head in ("BEGIN", "START TRANSACTION"):
            in_transaction = True
            continue
        stmt = Statement(sql_stmt, revision, in_transaction)
        alter = _ALTER.match(sql_stmt)
        if alter is not None:
            stmt.table, stmt.rest = _name(alter["table"]), alter["rest"]
        for rule in rules:
            findings.extend(f for f in rule(stmt, rev) if f.id not in silenced)
        _remember(stmt, rev)
    return findings


def _remember(stmt: Statement, rev: _Revision) -> None:
    created = re.match(
        rf"^CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<t>{_QNAME})",
        stmt.sql,
        re.I,
    )
    if created is not None:
        rev.created.add(_name(created["t"]))
    if stmt.table is None:
        return
    for match in re.finditer(
        rf"ADD\s+CONSTRAINT\s+(?P<name>{_IDENT})\s+CHECK\s*\(\s*(?P<col>{_IDENT})\s+IS\s+NOT\s+"
        r"NULL\s*\)",
        stmt.rest,
        re.I,
    ):
        check = (stmt.table, _name(match["col"]))
        if re.search(r"NOT\s+VALID", stmt.rest, re.I):
            rev.not_null_checks[_name(match["name"])] = check
        else:
            rev.validated.add(check)
    validate = re.match(rf"VALIDATE\s+CONSTRAINT\s+(?P<name>{_IDENT})", stmt.rest, re.I)
    if validate is not None and _name(validate["name"]) in rev.not_null_checks:
        rev.validated.add(rev.not_null_checks[_name(validate["name"])])


# -- pending revisions ------------------------------------------------------------------------


def render_upgrade(module: Any) -> str:
    """The SQL Alembic's offline mode writes for a revision module's `upgrade()`."""
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        opts={"as_sql": True, "output_buffer": buffer, "literal_binds": True},
    )
    with Operations.context(context):
        module.upgrade()
    return buffer.getvalue()


def mapped_columns(metadata: Iterable[MetaData]) -> dict[str, set[str]]:
    """Table name (bare and schema-qualified) -> the columns the models map."""
    mapped: dict[str, set[str]] = {}
    for meta in metadata:
        for table in meta.tables.values():
            columns = {c.name for c in table.columns}
            mapped[table.name] = columns
            if table.schema:
                mapped[f"{table.schema}.{table.name}"] = columns
    return mapped


def lint_revisions(
    project: MigrationProject, revisions: Iterable[str], mapped: Mapping[str, set[str]]
) -> list[Finding]:
    """The findings for `revisions` (ids) of `project`, in the order given."""
    findings: list[Finding] = []
    for rev_id in revisions:
        script = project.script.get_revision(rev_id)
        if script is None:  # pragma: no cover - ids come from the same scripts
            continue
        try:
            sql = render_upgrade(script.module)
        except Exception as exc:
            findings.append(
                Finding(
                    "revision.not-renderable",
                    "warn",
                    f"revision {rev_id}",
                    f"its upgrade() cannot run offline ({type(exc).__name__}: {exc})",
                    "It reads the database while migrating, so its SQL cannot be checked.",
                    "Review it by hand for the locks these rules look for.",
                )
            )
            continue
        ignore = getattr(script.module, "safety_ignore", ())
        findings.extend(lint_sql(sql, revision=rev_id, mapped=mapped, ignore=ignore))
    return findings


def pending_findings(settings: Settings, project: MigrationProject) -> list[Finding]:
    """Lint the revisions `settings`' database has not applied yet, against the models."""
    missing = status(settings, project=project).missing
    return lint_revisions(project, missing, mapped_columns(project.metadata()))


# -- helpers for revisions --------------------------------------------------------------------


def lock_timeout(ms: int) -> None:
    """In a revision: give up on a lock after `ms` milliseconds for the rest of it."""
    op.execute(f"SET LOCAL lock_timeout = '{int(ms)}ms'")


def create_index_concurrently(name: str, table: str, columns: Sequence[str], **kwargs: Any) -> None:
    """In a revision: build an index without blocking writes (outside the transaction).

    If a previous attempt failed half-way, PostgreSQL leaves an INVALID index with this
    name: drop it (DROP INDEX CONCURRENTLY) before running the revision again.
    """
    with op.get_context().autocommit_block():
        op.create_index(name, table, list(columns), postgresql_concurrently=True, **kwargs)
