"""Where a database stands against the scripts, and the record that lets older code judge it.

Alembic's version table holds only the heads a database is at. Code that does not know a
head (an older release, during a rolling deploy) cannot tell from it whether that head
descends from its own revisions. So pgstack's environment also records, in `pgstack_meta`
and in the transaction of every step, every revision applied: the heads and all they
depend on, as the code that applied them knew them. A database whose version table names
revisions this code does not know is *ahead* of it when that record holds every revision
this code has; otherwise it is on another lineage (or behind), and that is a failure.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection, text

VERSION_TABLE = "alembic_version"
APPLIED_KEY = "pgstack.migrations.applied"

_TABLES = text(
    "SELECT to_regclass(:version) IS NOT NULL AS versioned, "
    "to_regclass('pgstack_meta') IS NOT NULL AS has_meta"
)
_RECORD = text(
    "INSERT INTO pgstack_meta (key, value) VALUES (:key, :value) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()"
)


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database stands against the migration scripts."""

    current: tuple[str, ...]
    """Revisions in the database's version table."""
    heads: tuple[str, ...]
    """Head revisions of the scripts (pgstack's branch and the app's)."""
    missing: tuple[str, ...]
    """Revisions of the scripts not applied to the database, in the order they would run."""
    unknown: tuple[str, ...]
    """Revisions in the database that the scripts do not know (applied by newer code)."""
    versioned: bool
    """Whether the database has a version table at all."""

    @property
    def at_head(self) -> bool:
        """Every revision applied, and none the scripts do not know."""
        return self.versioned and not self.missing and not self.unknown

    @property
    def ahead(self) -> bool:
        """Newer code migrated the database past every revision of these scripts."""
        return self.versioned and bool(self.unknown) and not self.missing


def ancestry(script: ScriptDirectory, revisions: Iterable[str]) -> set[str]:
    """The revisions and everything they need: down revisions and `depends_on`, transitively."""
    seen: set[str] = set()
    todo = list(revisions)
    while todo:
        rev = todo.pop()
        if rev in seen:
            continue
        seen.add(rev)
        node = revision_node(script, rev)
        if node is not None:
            # Alembic's own normalised parents: down revisions plus resolved `depends_on`.
            todo.extend(node._normalized_down_revisions)
            todo.extend(node._resolved_dependencies)
    return seen


def revision_node(script: ScriptDirectory, rev: str) -> Script | None:
    """The script of revision id `rev` exactly (no prefix or label matching), or None."""
    # Alembic's map, without get_revision's partial-id matching and its errors.
    node = script.revision_map._revision_map.get(rev)
    return node if isinstance(node, Script) and node.revision == rev else None


def known(script: ScriptDirectory) -> set[str]:
    """Every revision id of the scripts."""
    return {s.revision for s in script.walk_revisions()}


def read_status(conn: Connection, script: ScriptDirectory) -> MigrationStatus:
    """Where the database on `conn` stands against `script`."""
    tables = conn.execute(_TABLES, {"version": VERSION_TABLE}).one()
    current: tuple[str, ...] = ()
    recorded: set[str] = set()
    if tables.versioned:
        current = tuple(
            r[0] for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        )
    ids = known(script)
    unknown = tuple(r for r in current if r not in ids)
    if unknown and tables.has_meta:
        value = conn.execute(
            text("SELECT value FROM pgstack_meta WHERE key = :key"), {"key": APPLIED_KEY}
        ).scalar()
        recorded = set((value or "").split())
    # The record counts only while the version table names revisions this code cannot
    # trace itself; otherwise the version table alone is the truth.
    applied = ancestry(script, [r for r in current if r in ids]) | recorded
    order = [s.revision for s in reversed(list(script.walk_revisions()))]
    return MigrationStatus(
        current=current,
        heads=tuple(script.get_heads()),
        missing=tuple(r for r in order if r not in applied),
        unknown=unknown,
        versioned=bool(tables.versioned),
    )


def record_applied(conn: Connection, script: ScriptDirectory, heads: Collection[str]) -> None:
    """Write the revisions applied at `heads` to `pgstack_meta` (gone below pgstack's base)."""
    if conn.execute(text("SELECT to_regclass('pgstack_meta')")).scalar() is None:
        return
    value = " ".join(sorted(ancestry(script, heads)))
    conn.execute(_RECORD, {"key": APPLIED_KEY, "value": value})


def dependency_downgrade(
    script: ScriptDirectory, heads: Collection[str], destination: str
) -> list[Script]:
    """What a downgrade from `heads` to `destination` undoes, newest first, when only
    `depends_on` leads from `destination` to the heads (an app's branch depends on pgstack's
    revisions): every applied revision that is neither `destination` nor what it needs.

    Alembic finds nothing to drop then, because it looks for children by down revision only.
    Empty when `destination` is not an applied revision.
    """
    if revision_node(script, destination) is None or destination not in ancestry(script, heads):
        return []
    keep = ancestry(script, [destination])
    every = script.iterate_revisions(tuple(heads), "base", select_for_downgrade=True)
    return [s for s in every if s.revision not in keep]


def describe_revisions(script: ScriptDirectory, revisions: Iterable[str]) -> str:
    """`rev (branch: message), ...` for messages; an id the scripts do not know as it is."""
    parts = []
    for rev in revisions:
        node = revision_node(script, rev)
        if node is None:
            parts.append(rev)
            continue
        label = ",".join(sorted(node.branch_labels)) or "unlabelled"
        parts.append(f"{rev} ({label}: {(node.doc or '').strip()})")
    return ", ".join(parts)
