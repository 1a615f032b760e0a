"""`diagnose`: what hurts a PostgreSQL database in production, each finding with its fix.

    findings = await diagnose(db, workers=4)

The checks read the server's catalogs and statistics views on one connection of `db`, as
the service sees them. Every finding has a stable id (to silence it with `ignore=`), a
severity, the object it is about, the evidence, why it matters and what to do. A check the
connection's role may not run says so ("grant pg_monitor"); it never passes silently.
The CLI (`pgstack db doctor`) and the admin dashboard print the same list.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from pgstack.db.database import Database
from pgstack.db.metrics import sqlstate_of
from pgstack.db.tenant import CATALOG_SQL

Severity = Literal["info", "warn", "error"]
SEVERITIES: tuple[Severity, ...] = ("info", "warn", "error")


@dataclass(frozen=True)
class Finding:
    """One thing the doctor found: what, where, the evidence, why it matters, the fix."""

    id: str
    severity: Severity
    object: str
    evidence: str
    why: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        """The finding as JSON-ready strings."""
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """Where a finding starts; the defaults follow PgHero's and are meant for production."""

    long_query: timedelta = timedelta(minutes=1)
    idle_in_transaction: timedelta = timedelta(seconds=30)
    unused_index_bytes: int = 10 * 1024 * 1024
    #: Index usage counts younger than this say nothing about what is unused.
    min_stats_age: timedelta = timedelta(days=7)
    bloat_ratio: float = 0.5
    bloat_bytes: int = 10 * 1024 * 1024
    never_analyzed_bytes: int = 8 * 1024 * 1024
    sequence_warn: float = 0.9
    sequence_error: float = 0.98
    slow_statement_ms: float = 20.0
    slow_statement_calls: int = 100
    replication_lag: timedelta = timedelta(seconds=30)
    connection_budget_warn: float = 0.8


@dataclass
class _Context:
    conn: AsyncConnection
    db: Database
    workers: int
    limits: Thresholds
    can_monitor: bool = False
    findings: list[Finding] = field(default_factory=list)

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        result = await self.conn.execute(text(sql), params)
        return [dict(row) for row in result.mappings()]

    async def value(self, sql: str, **params: Any) -> Any:
        return (await self.conn.execute(text(sql), params)).scalar()

    def add(self, id: str, severity: Severity, obj: str, evidence: str, why: str, fix: str) -> None:
        self.findings.append(Finding(id, severity, obj, evidence, why, fix))

    def skipped(self, id: str, what: str) -> None:
        self.add(
            f"{id}.skipped",
            "info",
            "role",
            f"this role may not read {what}",
            "The check could not run, so it says nothing about the database.",
            "GRANT pg_monitor TO <service role>; (or run the doctor as a role that has it)",
        )


Check = Callable[[_Context], Awaitable[None]]
_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'"


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def _age(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _ident(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


# -- connections ------------------------------------------------------------------------------


async def connection_budget(ctx: _Context) -> None:
    """Pool + overflow + read lane, times the workers, against the server's free slots."""
    s = ctx.db.settings
    per_worker = s.database_pool_size + s.database_max_overflow + s.read_pool_size
    wanted = per_worker * ctx.workers
    row = (
        await ctx.rows(
            "SELECT current_setting('max_connections')::int AS max,"
            " current_setting('superuser_reserved_connections')::int AS su,"
            " coalesce(current_setting('reserved_connections', true), '0')::int AS reserved"
        )
    )[0]
    free = row["max"] - row["su"] - row["reserved"]
    evidence = (
        f"{ctx.workers} worker(s) x (pool {s.database_pool_size} + overflow "
        f"{s.database_max_overflow} + read lane {s.read_pool_size}) = {wanted} connections; "
        f"the server allows {free} (max_connections {row['max']} minus "
        f"{row['su'] + row['reserved']} reserved)"
    )
    fix = (
        "Lower DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW / DATABASE_READ_POOL_SIZE so that "
        f"workers x per-worker <= {free}, put PgBouncer in front, or raise max_connections."
    )
    if wanted > free:
        ctx.add(
            "connections.budget",
            "error",
            "server",
            evidence,
            "Under load the pools ask for more connections than exist: requests fail with "
            "'too many clients' instead of waiting.",
            fix,
        )
    elif wanted > free * ctx.limits.connection_budget_warn:
        ctx.add(
            "connections.budget",
            "warn",
            "server",
            evidence,
            "Little room is left for migrations, consoles, backups and other services.",
            fix,
        )


async def privileged_role(ctx: _Context) -> None:
    """The service should connect as a role with data rights only."""
    role = (
        await ctx.rows(
            "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
    )[0]
    name = role["rolname"]
    fix = (
        "Connect the service as an application role with data rights only (`pgstack db init` "
        "makes one) and run migrations with DATABASE_MIGRATION_URL as the owner."
    )
    if role["rolsuper"]:
        ctx.add(
            "role.superuser",
            "error",
            f"role {name}",
            f"the service is connected as {name}, a superuser",
            "A superuser bypasses row-level security and every permission: one SQL "
            "injection reads or drops everything, including other databases.",
            fix,
        )
        return
    owned = await ctx.value(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS}"
        " AND pg_has_role(current_user, c.relowner, 'USAGE')"
    )
    if owned:
        ctx.add(
            "role.owner",
            "warn",
            f"role {name}",
            f"the service's role {name} owns {owned} table(s)",
            "A table's owner bypasses its row-level security (unless FORCE) and may ALTER or "
            "DROP it from the running service.",
            fix,
        )
    if role["rolbypassrls"]:
        ctx.add(
            "role.bypassrls",
            "warn",
            f"role {name}",
            f"{name} has BYPASSRLS",
            "Row-level security policies do not apply to this role.",
            f"ALTER ROLE {_ident(name)} NOBYPASSRLS;",
        )


async def risky_settings(ctx: _Context) -> None:
    """No statement_timeout or idle_in_transaction_session_timeout for the service."""
    role = await ctx.value("SELECT current_user")
    for setting, example, why in (
        (
            "statement_timeout",
            "30s",
            "A runaway query holds its connection and locks until someone kills it.",
        ),
        (
            "idle_in_transaction_session_timeout",
            "60s",
            "A transaction left open holds locks and stops VACUUM from cleaning up.",
        ),
    ):
        if await ctx.value(f"SELECT current_setting('{setting}')") in ("0", "0ms"):
            hint = " or DATABASE_STATEMENT_TIMEOUT_MS" if setting == "statement_timeout" else ""
            ctx.add(
                f"settings.{setting}",
                "warn",
                f"role {role}",
                f"{setting} is 0 (no limit) for the service's sessions",
                why,
                f"ALTER ROLE {_ident(role)} SET {setting} = '{example}';{hint}",
            )


# -- indexes ----------------------------------------------------------------------------------


async def unused_indexes(ctx: _Context) -> None:
    """Indexes never scanned since the statistics began (unique and primary keys excepted)."""
    since = await ctx.value(
        "SELECT extract(epoch FROM clock_timestamp()"
        " - coalesce(stats_reset, pg_postmaster_start_time()))"
        " FROM pg_stat_database WHERE datname = current_database()"
    )
    if since is None or float(since) < ctx.limits.min_stats_age.total_seconds():
        ctx.add(
            "indexes.unused.not-enough-data",
            "info",
            "statistics",
            f"index usage counts cover only {_age(float(since or 0))}",
            "Whether an index is used can only be told after a full business cycle of traffic.",
            f"Run the doctor again once the statistics are {ctx.limits.min_stats_age.days} "
            "days old (they start at a stats reset or restore).",
        )
        return
    for row in await ctx.rows(
        "SELECT s.schemaname, s.relname, s.indexrelname, pg_relation_size(s.indexrelid) AS size"
        " FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid"
        " WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary"
        " AND pg_relation_size(s.indexrelid) >= :floor ORDER BY size DESC",
        floor=ctx.limits.unused_index_bytes,
    ):
        ctx.add(
            "indexes.unused",
            "info",
            f"index {row['schemaname']}.{row['indexrelname']}",
            f"0 scans since the statistics began; {_bytes(row['size'])} on {row['relname']}",
            "Every write to the table also writes this index, and it takes space and cache. "
            "Statistics are per server: check replicas before dropping.",
            f"DROP INDEX CONCURRENTLY {_ident(row['schemaname'], row['indexrelname'])};",
        )


async def duplicate_indexes(ctx: _Context) -> None:
    """An index whose columns lead another index of the same kind is redundant."""
    rows = await ctx.rows(
        "SELECT n.nspname AS schema, t.relname AS tbl, ic.relname AS name, i.indrelid,"
        " i.indkey::text AS keys, i.indclass::text AS classes, am.amname,"
        " i.indisunique AS uniq, i.indisprimary AS pk,"
        " i.indexprs IS NULL AND i.indpred IS NULL AS plain, i.indisvalid AS valid"
        " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
        " JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
        " JOIN pg_am am ON am.oid = ic.relam"
        f" WHERE {_USER_SCHEMAS} ORDER BY ic.relname"
    )
    plain = [r for r in rows if r["plain"] and r["valid"]]
    for a in plain:
        if a["pk"]:
            continue
        for b in plain:
            if a is b or a["indrelid"] != b["indrelid"] or a["amname"] != b["amname"]:
                continue
            akeys, bkeys = a["keys"].split(), b["keys"].split()
            aclass, bclass = a["classes"].split(), b["classes"].split()
            if bkeys[: len(akeys)] != akeys or bclass[: len(aclass)] != aclass:
                continue
            if a["uniq"] and not (b["uniq"] and akeys == bkeys):
                continue  # a unique index enforces something a wider one does not
            if akeys == bkeys and (b["uniq"], b["pk"], b["name"]) < (a["uniq"], a["pk"], a["name"]):
                continue  # of two identical indexes, report only one
            ctx.add(
                "indexes.duplicate",
                "warn",
                f"index {a['schema']}.{a['name']}",
                f"its columns lead {b['name']} on {a['tbl']}, which serves the same queries",
                "A redundant index costs every write and its space, and helps no read.",
                f"DROP INDEX CONCURRENTLY {_ident(a['schema'], a['name'])};",
            )
            break


async def foreign_keys_without_index(ctx: _Context) -> None:
    """A foreign key whose columns lead no index makes deletes on the parent scan the child."""
    for row in await ctx.rows(
        "SELECT n.nspname AS schema, t.relname AS tbl, c.conname,"
        " array_to_string(array(SELECT quote_ident(a.attname) FROM unnest(c.conkey)"
        " WITH ORDINALITY k(attnum, ord) JOIN pg_attribute a ON a.attrelid = c.conrelid"
        " AND a.attnum = k.attnum ORDER BY k.ord), ', ') AS cols"
        " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        f" WHERE c.contype = 'f' AND {_USER_SCHEMAS} AND NOT EXISTS ("
        "   SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid"
        "   AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey"
        "   AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey)"
        " ORDER BY 1, 2, 3"
    ):
        ctx.add(
            "indexes.missing-fk",
            "warn",
            f"foreign key {row['schema']}.{row['tbl']}.{row['conname']}",
            f"no index starts with ({row['cols']})",
            "Deleting or updating a parent row scans the whole child table under lock, and "
            "joins on the key cannot use an index.",
            f"CREATE INDEX CONCURRENTLY ON {_ident(row['schema'], row['tbl'])} ({row['cols']});",
        )


async def tenant_tables_without_rls(ctx: _Context) -> None:
    """A table with a `tenant_id` column whose rows row-level security does not guard."""
    for row in await ctx.rows(CATALOG_SQL):
        missing = [
            what
            for what, ok in (
                ("enabled", row["enabled"]),
                ("forced", row["forced"]),
                ("a policy", row["policies"] > 0),
            )
            if not ok
        ]
        if not missing:
            continue
        ctx.add(
            "tenancy.rls-missing",
            "error",
            f"table {row['table_name']}",
            f"has tenant_id, but row-level security is not {', '.join(missing)}",
            "One tenant's raw SQL, a bug or a forgotten filter can read or write another "
            "tenant's rows: only the application's own filters stand between them.",
            f"In a migration: enable_tenant_rls(op, {row['table_name']!r}) (from pgstack.tenancy).",
        )


# This month and the next (UTC), and whether the audit log has their partitions.
_AUDIT_MONTHS_SQL = """
SELECT m.label, to_char(m.month, 'YYYY-MM') AS month, EXISTS (
    SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = to_regclass('audit_log')
      AND c.relname = to_char(m.month, '"audit_log_y"YYYY"m"MM')
) AS present
FROM (VALUES ('this month', date_trunc('month', now() AT TIME ZONE 'UTC')),
             ('next month', date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month'))
     AS m(label, month)
WHERE to_regclass('audit_log') IS NOT NULL
"""


async def audit_partitions(ctx: _Context) -> None:
    """The audit log has no partition for this month or the next: its writes will fail."""
    for row in await ctx.rows(_AUDIT_MONTHS_SQL):
        if row["present"]:
            continue
        now = row["label"] == "this month"
        ctx.add(
            "audit.partition-missing",
            "error" if now else "warn",
            "table audit_log",
            f"no partition for {row['label']} ({row['month']})",
            "Every audit entry of that month fails, and with it the transaction that writes it"
            + (" (now)." if now else " (from the first of the month)."),
            "pgstack audit maintain  (as the owner role; run it from a monthly job)",
        )


async def tables_without_primary_key(ctx: _Context) -> None:
    """Tables with no primary key."""
    for row in await ctx.rows(
        "SELECT n.nspname AS schema, c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_USER_SCHEMAS}"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k"
        "   WHERE k.conrelid = c.oid AND k.contype = 'p') ORDER BY 1, 2"
    ):
        ctx.add(
            "tables.no-primary-key",
            "warn",
            f"table {row['schema']}.{row['relname']}",
            "the table has no primary key",
            "Rows cannot be addressed one by one: the ORM, logical replication and "
            "deduplication all need a key.",
            f"ALTER TABLE {_ident(row['schema'], row['relname'])} ADD PRIMARY KEY (...);"
            " (build the unique index CONCURRENTLY first, then ADD PRIMARY KEY USING INDEX)",
        )


# -- bloat and maintenance --------------------------------------------------------------------

# Estimates from the planner's statistics (row count and average column widths), as the
# well-known bloat queries do: a heuristic, not a measurement (pgstattuple measures).
_TABLE_BLOAT = f"""
SELECT n.nspname AS schema, c.relname AS name, c.reltuples,
       pg_relation_size(c.oid) AS bytes, current_setting('block_size')::int AS block,
       (SELECT sum(s.avg_width) FROM pg_stats s
         WHERE s.schemaname = n.nspname AND s.tablename = c.relname) AS width
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND {_USER_SCHEMAS} AND c.reltuples >= 0
"""
_INDEX_BLOAT = f"""
SELECT n.nspname AS schema, ic.relname AS name, t.relname AS tbl, ic.reltuples,
       pg_relation_size(ic.oid) AS bytes, current_setting('block_size')::int AS block,
       (SELECT sum(s.avg_width) FROM unnest(i.indkey::int2[]) k(attnum)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = t.relname
          AND s.attname = a.attname) AS width
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_am am ON am.oid = ic.relam
WHERE am.amname = 'btree' AND i.indexprs IS NULL AND {_USER_SCHEMAS} AND ic.reltuples >= 0
"""


def _waste(row: dict[str, Any], per_row: float, fill: float) -> tuple[float, float] | None:
    if row["width"] is None or not row["bytes"]:
        return None
    usable = (row["block"] - 24) * fill
    expected = math.ceil(row["reltuples"] * (float(row["width"]) + per_row) / usable + 1)
    wasted = row["bytes"] - expected * row["block"]
    return wasted, wasted / row["bytes"]


async def bloat(ctx: _Context) -> None:
    """Tables and btree indexes much larger than their rows need (an estimate)."""
    lim = ctx.limits
    for kind, sql, per_row, fill in (
        ("table", _TABLE_BLOAT, 28.0, 1.0),  # tuple header + item pointer
        ("index", _INDEX_BLOAT, 12.0, 0.9),  # index tuple header + item pointer; fillfactor
    ):
        for row in await ctx.rows(sql):
            waste = _waste(row, per_row, fill)
            if waste is None or waste[0] < lim.bloat_bytes or waste[1] < lim.bloat_ratio:
                continue
            name = _ident(row["schema"], row["name"])
            if kind == "table":
                fix = (
                    f"pg_repack -t {row['schema']}.{row['name']} (online); VACUUM FULL {name} "
                    "also works but locks the table for its whole run"
                )
            else:
                fix = f"REINDEX INDEX CONCURRENTLY {name};"
            ctx.add(
                f"bloat.{kind}",
                "warn",
                f"{kind} {row['schema']}.{row['name']}",
                f"estimated {_bytes(waste[0])} ({waste[1]:.0%}) of {_bytes(row['bytes'])} "
                "is empty space (an estimate from the planner's statistics)",
                "Scans read the empty pages too, and they take cache and disk.",
                fix,
            )


async def never_vacuumed(ctx: _Context) -> None:
    """Tables of some size that were never analyzed (the planner guesses) or vacuumed."""
    for row in await ctx.rows(
        "SELECT schemaname, relname, pg_relation_size(relid) AS bytes,"
        " coalesce(last_analyze, last_autoanalyze) IS NULL AS never_analyzed,"
        " coalesce(last_vacuum, last_autovacuum) IS NULL AS never_vacuumed"
        " FROM pg_stat_user_tables WHERE pg_relation_size(relid) >= :floor"
        " AND (coalesce(last_analyze, last_autoanalyze) IS NULL"
        "  OR coalesce(last_vacuum, last_autovacuum) IS NULL) ORDER BY bytes DESC",
        floor=ctx.limits.never_analyzed_bytes,
    ):
        name = _ident(row["schemaname"], row["relname"])
        obj = f"table {row['schemaname']}.{row['relname']}"
        if row["never_analyzed"]:
            ctx.add(
                "tables.never-analyzed",
                "warn",
                obj,
                f"{_bytes(row['bytes'])} and never analyzed",
                "The planner has no statistics for it and guesses row counts: bad plans.",
                f"ANALYZE {name}; and check that autovacuum is on for it",
            )
        if row["never_vacuumed"]:
            ctx.add(
                "tables.never-vacuumed",
                "info",
                obj,
                f"{_bytes(row['bytes'])} and never vacuumed",
                "Dead rows are not reclaimed and index-only scans cannot skip the heap.",
                f"VACUUM (ANALYZE) {name}; and check autovacuum_enabled on the table",
            )


async def sequences(ctx: _Context) -> None:
    """Sequences near the end of their range, or of the column they feed."""
    for row in await ctx.rows(
        "SELECT s.schemaname, s.sequencename, s.last_value, s.increment_by,"
        " least(s.max_value, CASE a.atttypid WHEN 'int2'::regtype THEN 32767"
        "   WHEN 'int4'::regtype THEN 2147483647 ELSE s.max_value END) AS max_value,"
        " t.relname AS tbl, a.attname AS col"
        " FROM pg_sequences s"
        " JOIN pg_class sc ON sc.relname = s.sequencename"
        " JOIN pg_namespace sn ON sn.oid = sc.relnamespace AND sn.nspname = s.schemaname"
        " LEFT JOIN pg_depend d ON d.objid = sc.oid AND d.classid = 'pg_class'::regclass"
        "   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')"
        " LEFT JOIN pg_class t ON t.oid = d.refobjid"
        " LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
        " WHERE s.last_value IS NOT NULL AND s.increment_by > 0"
    ):
        used = row["last_value"] / row["max_value"]
        if used < ctx.limits.sequence_warn:
            continue
        feeds = f" feeding {row['tbl']}.{row['col']}" if row["tbl"] else ""
        column = _ident(row["tbl"], row["col"]) if row["tbl"] else "the column"
        ctx.add(
            "sequences.exhaustion",
            "error" if used >= ctx.limits.sequence_error else "warn",
            f"sequence {row['schemaname']}.{row['sequencename']}",
            f"{used:.1%} used ({row['last_value']} of {row['max_value']}){feeds}",
            "When it runs out every insert fails.",
            f"ALTER TABLE ... ALTER COLUMN {column} TYPE bigint (rewrites the table: plan a "
            f"new bigint column, backfill, swap), then ALTER SEQUENCE "
            f"{_ident(row['schemaname'], row['sequencename'])} AS bigint;",
        )


# -- sessions, locks, statements, replication -------------------------------------------------


async def sessions(ctx: _Context) -> None:
    """Long-running statements, idle-in-transaction sessions and blocked queries."""
    if not ctx.can_monitor:
        ctx.skipped("sessions", "other roles' sessions in pg_stat_activity")
        return
    lim = ctx.limits
    rows = await ctx.rows(
        "SELECT pid, usename, state, left(query, 200) AS query, pg_blocking_pids(pid) AS blockers,"
        " extract(epoch FROM clock_timestamp() - query_start) AS running,"
        " extract(epoch FROM clock_timestamp() - state_change) AS in_state"
        " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )
    by_pid = {r["pid"]: r for r in rows}
    for r in rows:
        who = f"pid {r['pid']} ({r['usename']})"
        if r["blockers"]:
            blockers = ", ".join(
                f"pid {p} ({by_pid[p]['state']}: {by_pid[p]['query']!r})" if p in by_pid else f"{p}"
                for p in r["blockers"]
            )
            ctx.add(
                "locks.blocked",
                "error",
                who,
                f"waiting {_age(r['in_state'] or 0)} on a lock held by {blockers}; "
                f"query: {r['query']!r}",
                "Blocked queries pile up and take every pooled connection with them.",
                f"Find why the blocker holds its lock; to end it now: SELECT "
                f"pg_terminate_backend({r['blockers'][0]}); set lock_timeout in migrations.",
            )
        elif r["state"] == "active" and (r["running"] or 0) >= lim.long_query.total_seconds():
            ctx.add(
                "sessions.long-running",
                "warn",
                who,
                f"running for {_age(r['running'])}: {r['query']!r}",
                "A long statement holds its connection and locks, and keeps VACUUM waiting.",
                f"SELECT pg_cancel_backend({r['pid']}); and set statement_timeout for the role",
            )
        if (
            r["state"] in ("idle in transaction", "idle in transaction (aborted)")
            and (r["in_state"] or 0) >= lim.idle_in_transaction.total_seconds()
        ):
            ctx.add(
                "sessions.idle-in-transaction",
                "warn",
                who,
                f"idle in a transaction for {_age(r['in_state'])}; last query {r['query']!r}",
                "An open transaction holds its locks and stops VACUUM from cleaning up.",
                f"SELECT pg_terminate_backend({r['pid']}); and set "
                "idle_in_transaction_session_timeout for the role",
            )


async def slow_statements(ctx: _Context) -> None:
    """The slowest statements on average, when pg_stat_statements is loaded."""
    for row in await _statements(ctx, limit=5):
        if row["mean_ms"] < ctx.limits.slow_statement_ms:
            continue
        if row["calls"] < ctx.limits.slow_statement_calls:
            continue
        ctx.add(
            "statements.slow",
            "warn",
            f"statement {row['queryid']}",
            f"{row['mean_ms']:.1f} ms on average over {row['calls']} calls: {row['query']!r}",
            "Slow statements hold connections longer and cap the service's throughput.",
            "EXPLAIN (ANALYZE, BUFFERS) it; add the index the plan lacks or rewrite it.",
        )


async def slowest_statements(db: Database, limit: int = 10) -> list[dict[str, Any]] | None:
    """The statements with the highest mean time, or None when pg_stat_statements is absent."""
    async with db.engine.connect() as conn:
        ctx = _Context(conn, db, 1, Thresholds())
        ctx.can_monitor = await _can_monitor(ctx)
        return await _statements(ctx, limit, report=False) if await _has_pgss(ctx) else None


async def _has_pgss(ctx: _Context) -> bool:
    return bool(
        await ctx.value("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
    ) and "pg_stat_statements" in str(await ctx.value("SHOW shared_preload_libraries"))


async def _statements(ctx: _Context, limit: int, report: bool = True) -> list[dict[str, Any]]:
    if not await _has_pgss(ctx):
        if report:
            ctx.add(
                "statements.unavailable",
                "info",
                "server",
                "pg_stat_statements is not loaded, so the slowest statements are unknown",
                "Without it nobody can tell which queries cost the most time.",
                "Add shared_preload_libraries = 'pg_stat_statements' to postgresql.conf, "
                "restart, then CREATE EXTENSION pg_stat_statements; in this database.",
            )
        return []
    if not ctx.can_monitor:
        if report:
            ctx.skipped("statements", "other roles' statements in pg_stat_statements")
        return []
    return await ctx.rows(
        "SELECT s.queryid::text AS queryid, left(s.query, 300) AS query, s.calls,"
        " s.mean_exec_time AS mean_ms, s.total_exec_time AS total_ms"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname = current_database() ORDER BY s.mean_exec_time DESC LIMIT :limit",
        limit=limit,
    )


async def replication(ctx: _Context) -> None:
    """Lag of replicas (seen from the primary, or on a replica itself) and idle slots."""
    lag_s = ctx.limits.replication_lag.total_seconds()
    if await ctx.value("SELECT pg_is_in_recovery()"):
        # A streaming replica that replayed all it received is current, however long ago the
        # primary last committed; otherwise the age of the last replayed commit is the lag.
        lag = await ctx.value(
            "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()"
            " AND EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming') THEN 0"
            " ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) END"
        )
        if lag is not None and float(lag) >= lag_s:
            ctx.add(
                "replication.lag",
                "warn",
                "this replica",
                f"last replayed transaction is {_age(float(lag))} old",
                "Reads from this replica see old data.",
                "Check the replica's disk and network, and long queries cancelling replay.",
            )
        return
    if not ctx.can_monitor:
        ctx.skipped("replication", "pg_stat_replication")
        return
    for row in await ctx.rows(
        "SELECT application_name, client_addr::text AS addr,"
        " extract(epoch FROM replay_lag) AS lag FROM pg_stat_replication"
    ):
        if row["lag"] is not None and float(row["lag"]) >= lag_s:
            ctx.add(
                "replication.lag",
                "warn",
                f"replica {row['application_name'] or row['addr']}",
                f"replay lag {_age(float(row['lag']))}",
                "Reads routed to this replica see old data.",
                "Check the replica's disk and network, and long queries cancelling replay.",
            )
    for row in await ctx.rows(
        "SELECT slot_name, slot_type,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) AS retained"
        " FROM pg_replication_slots WHERE NOT active AND restart_lsn IS NOT NULL"
    ):
        ctx.add(
            "replication.inactive-slot",
            "warn",
            f"slot {row['slot_name']}",
            f"inactive {row['slot_type']} slot retaining {_bytes(float(row['retained']))} of WAL",
            "The server keeps all WAL the slot has not consumed: the disk fills up.",
            f"Reconnect its consumer, or SELECT pg_drop_replication_slot('{row['slot_name']}');",
        )


_LOCK_WAIT = "1s"
CHECKS: tuple[Check, ...] = (
    sessions,
    connection_budget,
    privileged_role,
    risky_settings,
    unused_indexes,
    duplicate_indexes,
    foreign_keys_without_index,
    tenant_tables_without_rls,
    audit_partitions,
    tables_without_primary_key,
    bloat,
    never_vacuumed,
    sequences,
    slow_statements,
    replication,
)


#: Every id the checks above report, for `ignore=` (which also takes an id's group, the part
#: before its first dot).
FINDING_IDS: tuple[str, ...] = (
    "audit.partition-missing",
    "bloat.index",
    "bloat.table",
    "connections.budget",
    "indexes.duplicate",
    "indexes.missing-fk",
    "indexes.unused",
    "indexes.unused.not-enough-data",
    "locks.blocked",
    "replication.inactive-slot",
    "replication.lag",
    "replication.skipped",
    "role.bypassrls",
    "role.owner",
    "role.superuser",
    "sequences.exhaustion",
    "sessions.idle-in-transaction",
    "sessions.long-running",
    "sessions.skipped",
    "settings.idle_in_transaction_session_timeout",
    "settings.statement_timeout",
    "statements.slow",
    "statements.skipped",
    "statements.unavailable",
    "tables.never-analyzed",
    "tables.never-vacuumed",
    "tables.no-primary-key",
    "tenancy.rls-missing",
    *(f"doctor.{check.__name__}.locked" for check in CHECKS),
)


def unknown_ignores(ignore: Iterable[str]) -> list[str]:
    """The entries of `ignore` that name neither a finding id of CHECKS nor a group of them."""
    known = {*FINDING_IDS, *(finding.split(".")[0] for finding in FINDING_IDS)}
    return [name for name in ignore if name not in known]


async def _can_monitor(ctx: _Context) -> bool:
    return bool(
        await ctx.value(
            "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')"
            " FROM pg_roles WHERE rolname = current_user"
        )
    )


async def diagnose(
    db: Database,
    *,
    workers: int = 1,
    ignore: Iterable[str] = (),
    thresholds: Thresholds | None = None,
    checks: Sequence[Check] = CHECKS,
) -> list[Finding]:
    """Run the checks on one connection of `db`; the findings, worst first.

    `workers` is how many processes run the service (each with its own pools). A finding
    whose id (or the id's first part, like `indexes`) is in `ignore` is left out.
    """
    silenced = set(ignore)
    async with db.engine.connect() as conn:
        ctx = _Context(conn, db, max(1, workers), thresholds or Thresholds())
        ctx.can_monitor = await _can_monitor(ctx)
        for check in checks:
            # A table locked by someone else must not hang the doctor (size functions lock).
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_LOCK_WAIT}'")
            try:
                await check(ctx)
            except DBAPIError as exc:
                if sqlstate_of(exc) != "55P03":
                    raise
                ctx.add(
                    f"doctor.{check.__name__}.locked",
                    "warn",
                    "doctor",
                    f"the check {check.__name__} waited {_LOCK_WAIT} for a lock and gave up",
                    "A table is locked exclusively right now; see locks.blocked for who holds it.",
                    "Run the doctor again once the lock is released.",
                )
            # Each check reads fresh statistics (they are cached per transaction).
            await conn.rollback()
    kept = [f for f in ctx.findings if f.id not in silenced and f.id.split(".")[0] not in silenced]
    return sorted(kept, key=lambda f: -SEVERITIES.index(f.severity))


def worst(findings: Iterable[Finding]) -> Severity | None:
    """The highest severity among `findings`, or None when there are none."""
    levels = [SEVERITIES.index(f.severity) for f in findings]
    return SEVERITIES[max(levels)] if levels else None
