"""The audit log's verbs: write an entry, verify a chain, make and archive partitions, read.

    from pgstack.audit import AuditLog

    audit = AuditLog(db)
    await audit.record("invoice.sent", resource_type="invoice", resource_id=str(invoice.id))
    report = await audit.verify()          # the global chain; verify(tenant_id=...) a tenant's
    page = await audit.entries(category="security", limit=50)

Entries take the actor, tenant, request id, IP and user agent from the context
(`acting_as`, `tenant_context`, `request_context`, set per request by the web middleware).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from pgstack.audit.models import audit_log
from pgstack.db.database import Database
from pgstack.db.session import translated_errors
from pgstack.errors import InvalidInputError
from pgstack.orm.context import all_tenants, audit_context, current_tenant, tenant_context

OUTCOMES = ("success", "failure", "partial")
#: The category of sign-ins, lockouts, password, 2FA, role and key changes.
SECURITY = "security"
GENESIS = "0" * 64

# Keys whose values never reach the log, at any depth (matched case-insensitively, as parts).
_SECRET_PARTS = ("password", "passwd", "token", "secret", "key", "authorization", "cookie", "otp")
REDACTED = "***"


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_PARTS)


def redact(value: Any) -> Any:
    """`value` with the values of secret-looking keys replaced by "***", recursively."""
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _is_secret(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True)
class ChainReport:
    """What `verify` found: how many entries it checked and the first broken one, if any."""

    chain: str
    checked: int
    first_seq: int | None
    last_seq: int | None
    broken_id: uuid.UUID | None = None
    broken_seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every entry links to the one before and matches its hash."""
        return self.reason is None


# The stored columns, as `_canonical` reads them: jsonb as its own text (the canonical
# form holds it verbatim), uuid as text; the rest as they come.
_COLUMNS_SQL = text(
    "SELECT a.attname AS name, a.atttypid::regtype::text AS type FROM pg_attribute a "
    "WHERE a.attrelid = 'audit_log'::regclass AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)
_HEAD_SQL = text("SELECT seq, hash FROM audit_chain_heads WHERE chain = :chain")
_ANCHOR_SQL = text(
    "SELECT seq, hash, archived_from FROM audit_anchors WHERE chain = :chain "
    "ORDER BY seq DESC LIMIT 1"
)
_READABLE_TYPES = {"text", "uuid", "jsonb", "bigint", "integer", "smallint", "boolean"}
# PostgreSQL's JSON string escapes (escape_json), which the canonical form uses.
_JSON_ESCAPES = {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    8: "\\b",
    12: "\\f",
    10: "\\n",
    13: "\\r",
    9: "\\t",
}
for _code in range(32):
    _JSON_ESCAPES.setdefault(_code, f"\\u{_code:04x}")


def _json_string(value: str) -> str:
    return '"' + value.translate(_JSON_ESCAPES) + '"'


def _canonical(entry: Mapping[str, Any], types: Mapping[str, str]) -> str:
    """The text an entry's hash covers, built here from the stored fields.

    The entry as jsonb would print it (keys by length, then bytes; NULL fields left out),
    the time as UTC microseconds. Built in Python, not by the database's
    `pgstack_audit_hash`, so a function changed in the database cannot vouch for a row
    changed with it.
    """
    parts: list[tuple[bytes, str]] = []
    for name, value in entry.items():
        if name in ("hash", "prev_hash") or value is None:
            continue
        kind = types[name]
        if name == "occurred_at":
            moment = value.astimezone(UTC)
            shown = '"' + moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") + '"'
        elif kind == "jsonb":
            if value == "null":
                continue
            shown = value
        elif kind in ("bigint", "integer", "smallint"):
            shown = str(int(value))
        elif kind == "boolean":
            shown = "true" if value else "false"
        else:
            shown = _json_string(str(value))
        parts.append((name.encode(), f"{_json_string(name)}: {shown}"))
    parts.sort(key=lambda part: (len(part[0]), part[0]))
    return "{" + ", ".join(shown for _, shown in parts) + "}"


def entry_hash(entry: Mapping[str, Any], types: Mapping[str, str]) -> str:
    """sha256(prev_hash | canonical form), hex: what the entry's `hash` must be."""
    body = f"{entry['prev_hash']}|{_canonical(entry, types)}"
    return hashlib.sha256(body.encode()).hexdigest()


def _select_list(types: Mapping[str, str]) -> str:
    columns = []
    for name, kind in types.items():
        quoted = '"' + name.replace('"', '""') + '"'
        columns.append(
            f"e.{quoted}::text AS {quoted}" if kind in ("jsonb", "uuid") else f"e.{quoted}"
        )
    return ", ".join(columns)


@dataclass(frozen=True)
class Cursor:
    """Where a page of entries ends: the next page starts after it (keyset)."""

    occurred_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        """The cursor as an opaque string for a URL."""
        return f"{self.occurred_at.isoformat()}~{self.id}"

    @classmethod
    def decode(cls, value: str) -> Cursor:
        """A cursor from `encode`; anything else is an InvalidInputError (422)."""
        try:
            at, _, ident = value.partition("~")
            moment = datetime.fromisoformat(at)
            if moment.tzinfo is None:
                raise ValueError(at)
            return cls(moment, uuid.UUID(ident))
        except ValueError:
            raise InvalidInputError(
                "The cursor is not one this service handed out: pass `next` from a page."
            ) from None


@dataclass(frozen=True)
class EntryPage:
    """A page of entries, newest first, and the cursor of the next page (None at the end)."""

    items: list[dict[str, Any]]
    next: str | None


class AuditLog:
    """The audit log of one database: record, verify, maintain, archive and read entries."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self,
        action: str,
        *,
        category: str = "data",
        outcome: str = "success",
        resource_type: str | None = None,
        resource_id: Any = None,
        description: str | None = None,
        error: str | None = None,
        request_data: Any = None,
        response_data: Any = None,
        changes: Any = None,
        tenant_id: uuid.UUID | None = None,
        actor_id: Any = None,
        actor_type: str | None = None,
        session: AsyncSession | AsyncConnection | None = None,
    ) -> None:
        """Write one entry: in `session`'s transaction when given, else as one INSERT by itself.

        The actor, tenant and request fields default to the context. Request and response
        data are redacted (passwords, tokens, secrets, keys, authorization) at any depth.

        Without `session`, the entry is a single INSERT, which is atomic: on the read lane
        (`pgstack.db.lane`) it is sent by itself, with no BEGIN and COMMIT around it, so the
        chain's lock, which the INSERT takes, is held for that statement only and not across
        a transaction's round trips; writers of one chain wait on each other less. A tenant
        entry goes in the lane's transaction that sets the tenant first, as row-level
        security needs. It is sent once (a lost connection is an error, as for any write).
        Where the lane cannot serve (off, SQL echo on) the same INSERT runs in a transaction
        of its own. Either way the entry, its scope and its errors are the same.
        """
        values = entry_values(
            action,
            category=category,
            outcome=outcome,
            resource_type=resource_type,
            resource_id=resource_id,
            description=description,
            error=error,
            request_data=request_data,
            response_data=response_data,
            changes=changes,
            tenant_id=tenant_id,
            actor_id=actor_id,
            actor_type=actor_type,
        )
        if session is not None:
            await session.execute(_ENTRY, values)
            return
        tenant = values["tenant_id"]
        scope = tenant_context(tenant) if tenant is not None else all_tenants()
        lane = self.db.read_lane
        planned = lane.plan(_ENTRY) if lane is not None and not lane.echo else None
        with scope, translated_errors():
            if lane is not None and planned is not None:
                await lane.run(*planned, values, reset=False)
                return
            async with self.db.engine.begin() as conn:
                await conn.execute(_ENTRY, values)

    async def verify(self, tenant_id: uuid.UUID | None = None) -> ChainReport:
        """Walk a chain (a tenant's, or the global one) and name its first broken entry.

        Each hash is recomputed here from the stored fields, each link and number checked,
        the first entry checked against the chain's start (or, once months are archived,
        against the anchor `archive` recorded), the last against the chain's head.
        """
        chain = "global" if tenant_id is None else str(tenant_id)
        scope = tenant_context(tenant_id) if tenant_id is not None else all_tenants()
        with scope:
            async with self.db.engine.connect() as conn:
                types = {r.name: r.type for r in await conn.execute(_COLUMNS_SQL)}
                unknown = {
                    name
                    for name, kind in types.items()
                    if kind not in _READABLE_TYPES and name != "occurred_at"
                }
                if unknown:
                    raise InvalidInputError(
                        f"audit_log has columns verify cannot read ({', '.join(sorted(unknown))})"
                        ": add them to the canonical form first."
                    )
                # The head before the entries: an entry written meanwhile is then read too.
                head = (await conn.execute(_HEAD_SQL, {"chain": chain})).first()
                anchor = (await conn.execute(_ANCHOR_SQL, {"chain": chain})).first()
                statement = text(
                    f"SELECT {_select_list(types)} FROM audit_log e "
                    "WHERE e.tenant_id IS NOT DISTINCT FROM CAST(:tenant AS uuid) ORDER BY e.seq"
                )
                rows = await conn.stream(
                    statement, {"tenant": None if tenant_id is None else chain}
                )
                checked, first, last, broken = 0, None, None, None
                previous: Mapping[str, Any] | None = None
                async for mapping in rows.mappings():
                    row: dict[str, Any] = dict(mapping)
                    checked += 1
                    first = row["seq"] if first is None else first
                    last = row["seq"]
                    if broken is None:
                        reason = _fault(row, previous, anchor, types)
                        if reason is not None:
                            broken = (row["id"], row["seq"], reason)
                    previous = row
                await conn.rollback()
        if broken is not None:
            return ChainReport(chain, checked, first, last, uuid.UUID(broken[0]), *broken[1:])
        end = last if last is not None else (anchor.seq if anchor is not None else 0)
        if head is not None and head.seq > end:
            return ChainReport(
                chain,
                checked,
                first,
                last,
                None,
                head.seq,
                f"entries {end + 1} to {head.seq} are missing (removed)",
            )
        return ChainReport(chain, checked, first, last)

    async def entries(
        self,
        *,
        tenant_id: uuid.UUID | None = None,
        actor_id: Any = None,
        resource_type: str | None = None,
        resource_id: Any = None,
        category: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> EntryPage:
        """A page of entries, newest first, filtered; `after` is the previous page's `next`."""
        if not 1 <= limit <= 500:
            raise InvalidInputError("limit must be between 1 and 500.")
        if outcome is not None and outcome not in OUTCOMES:
            raise InvalidInputError(f"outcome must be one of {', '.join(OUTCOMES)}.")
        if category is not None:
            check_category(category)
        filters: list[Any] = []
        pairs = (
            (audit_log.c.actor_id, actor_id),
            (audit_log.c.resource_type, resource_type),
            (audit_log.c.resource_id, resource_id),
            (audit_log.c.category, category),
            (audit_log.c.action, action),
            (audit_log.c.outcome, outcome),
        )
        for column, value in pairs:
            if value is not None:
                filters.append(column == str(value))
        if since is not None:
            filters.append(audit_log.c.occurred_at >= since)
        if until is not None:
            filters.append(audit_log.c.occurred_at < until)
        if after is not None:
            cursor = Cursor.decode(after)
            filters.append(
                or_(
                    audit_log.c.occurred_at < cursor.occurred_at,
                    and_(
                        audit_log.c.occurred_at == cursor.occurred_at,
                        audit_log.c.id < cursor.id,
                    ),
                )
            )
        tenant = tenant_id if tenant_id is not None else current_tenant()
        statement = (
            select(audit_log)
            .where(audit_log.c.tenant_id.is_not_distinct_from(tenant), *filters)
            .order_by(audit_log.c.occurred_at.desc(), audit_log.c.id.desc())
            .limit(limit + 1)
        )
        scope = tenant_context(tenant) if tenant is not None else all_tenants()
        with scope:
            async with self.db.engine.connect() as conn:
                rows = list((await conn.execute(statement)).mappings())
        items = [dict(row) for row in rows[:limit]]
        following = None
        if len(rows) > limit:
            last = items[-1]
            following = Cursor(last["occurred_at"], last["id"]).encode()
        return EntryPage(items, following)

    async def failures(self, **filters: Any) -> EntryPage:
        """Recent entries whose outcome was a failure."""
        return await self.entries(outcome="failure", **filters)

    async def security_events(self, **filters: Any) -> EntryPage:
        """Recent sign-ins, lockouts, password, 2FA, role and key changes."""
        return await self.entries(category=SECURITY, **filters)


#: What a category can be (the check constraint ck_audit_log_category).
_CATEGORY = re.compile(r"[a-z][a-z0-9_.:-]{0,62}")


def check_category(category: str) -> str:
    """`category`, or InvalidInputError if the audit log could never hold it."""
    if not _CATEGORY.fullmatch(category):
        raise InvalidInputError(
            f"{category[:70]!r} is not a category name (a lowercase letter, then up to 62 of "
            "a-z 0-9 _ . : -), e.g. security or data."
        )
    return category


def entry_values(
    action: str,
    *,
    category: str = "data",
    outcome: str = "success",
    resource_type: str | None = None,
    resource_id: Any = None,
    description: str | None = None,
    error: str | None = None,
    request_data: Any = None,
    response_data: Any = None,
    changes: Any = None,
    tenant_id: uuid.UUID | None = None,
    actor_id: Any = None,
    actor_type: str | None = None,
) -> dict[str, Any]:
    """The column values of one entry, the context filling in what is not given."""
    if not action or len(action) > 200:
        raise InvalidInputError("An audit entry needs an action name of at most 200 characters.")
    if outcome not in OUTCOMES:
        raise InvalidInputError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}.")
    context = audit_context()
    if actor_id is None:
        actor_id = context.get("actor_id")
    tenant = tenant_id if tenant_id is not None else current_tenant()
    return {
        "id": uuid.uuid4(),
        "tenant_id": None if tenant is None else uuid.UUID(str(tenant)),
        "actor_id": None if actor_id is None else str(actor_id),
        "actor_type": actor_type
        or context.get("actor_type")
        or ("user" if actor_id is not None else "system"),
        "action": action,
        "category": check_category(category),
        "resource_type": resource_type,
        "resource_id": None if resource_id is None else str(resource_id),
        "description": description,
        "ip": context.get("ip"),
        "user_agent": context.get("user_agent"),
        "request_id": context.get("request_id"),
        "outcome": outcome,
        "error": error,
        "request_data": None if request_data is None else redact(request_data),
        "response_data": None if response_data is None else redact(response_data),
        "changes": None if changes is None else redact(changes),
    }


# One entry, every column a parameter: compiled once, the same statement whichever way it goes.
_ENTRY = insert(audit_log).values(
    {name: bindparam(name, type_=audit_log.c[name].type) for name in entry_values("audit")}
)


def _fault(
    row: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    anchor: Any,
    types: Mapping[str, str],
) -> str | None:
    """Why `row` breaks the chain after `previous` (None: it is the first left), or None."""
    if row["hash"] != entry_hash(row, types):
        return "its hash does not match its contents (the entry was altered)"
    if previous is not None:
        if row["seq"] != previous["seq"] + 1:
            return "entries before it are missing (removed)"
        if row["prev_hash"] != previous["hash"]:
            return "it does not link to the entry before it"
        return None
    if anchor is None:
        if row["seq"] != 1:
            return (
                f"entries before it are missing: the chain starts at #{row['seq']} and no "
                "archive anchor records the entries before it"
            )
        if row["prev_hash"] != GENESIS:
            return "the first entry does not start the chain"
        return None
    if row["seq"] != anchor.seq + 1:
        return (
            f"entries before it are missing: the last archived entry is #{anchor.seq} "
            f"(in {anchor.archived_from})"
        )
    if row["prev_hash"] != anchor.hash:
        return (
            f"it does not link to the last archived entry (#{anchor.seq}, {anchor.archived_from})"
        )
    return None


# -- partitions ---------------------------------------------------------------------------


def month_start(moment: date | datetime) -> date:
    """The first day of `moment`'s month (UTC for datetimes)."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC).date() if moment.tzinfo else moment.date()
    return moment.replace(day=1)


def add_months(month: date, count: int) -> date:
    """The first day of the month `count` months after `month`."""
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


@dataclass(frozen=True)
class Partition:
    """One month's partition of the audit log."""

    name: str
    start: datetime
    end: datetime


_PARTITIONS_SQL = text(
    """
    SELECT c.relname AS name,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]
               AS start,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]
               AS end
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_log'::regclass
    ORDER BY 2
    """
)


async def partitions(conn: AsyncConnection) -> list[Partition]:
    """The attached partitions of the audit log, oldest first."""
    await conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
    rows: Sequence[Row[Any]] = (await conn.execute(_PARTITIONS_SQL)).all()
    return [
        Partition(r.name, datetime.fromisoformat(r.start), datetime.fromisoformat(r.end))
        for r in rows
    ]


async def maintain(conn: AsyncConnection, *, now: datetime, months_ahead: int = 3) -> list[str]:
    """Make the partitions of `now`'s month and the `months_ahead` after it; return those made.

    Needs the owner role (DDL): run it from `pgstack audit maintain`, or a scheduled job.
    """
    if not 0 <= months_ahead <= 36:
        raise InvalidInputError("months_ahead must be between 0 and 36.")
    first = month_start(now)
    made: list[str] = []
    for step in range(months_ahead + 1):
        month = add_months(first, step)
        name = (
            await conn.execute(text("SELECT pgstack_audit_partition(:m)"), {"m": month})
        ).scalar()
        if name:
            made.append(str(name))
    return made


# Per chain, the last entry of an archived month: where the chain's remaining entries resume.
_ANCHOR_INSERT = (
    "INSERT INTO audit_anchors (chain, seq, hash, archived_from) "
    "SELECT DISTINCT ON (1) coalesce(p.tenant_id::text, 'global'), p.seq, p.hash, :part "
    "FROM {name} p ORDER BY 1, p.seq DESC ON CONFLICT DO NOTHING"
)


def _utc_day(moment: date | datetime) -> datetime:
    """`moment` as an aware UTC datetime (a date or a naive datetime is taken as UTC)."""
    if not isinstance(moment, datetime):
        return datetime.combine(moment, datetime.min.time(), UTC)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


async def archive(
    conn: AsyncConnection, *, before: date | datetime, now: datetime | None = None
) -> list[Partition]:
    """Detach every partition that ends on or before `before` (a month's first day).

    The detached tables stay in the database, still refusing changes, and no longer show in
    the audit log; export them (`pgstack audit archive --export`) and drop them when kept
    elsewhere. For each chain, the last entry of each detached month is recorded in
    `audit_anchors` (append-only), and `verify` checks the first remaining entry against it.

    Only months that have ended can be archived: a `before` later than the first day of
    `now`'s month (UTC; default: the current time) is refused with an InvalidInputError,
    since detaching this month's partition would make every audited write fail.
    """
    this_month = month_start(_utc_day(now if now is not None else datetime.now(UTC)))
    if _utc_day(before) > datetime.combine(this_month, datetime.min.time(), UTC):
        raise InvalidInputError(
            f"Refusing to archive before {before}: it is later than {this_month}, the first "
            f"day of this month (UTC), and this month's partition takes every new entry. "
            f"Archive only months that have ended: --before {this_month} or earlier."
        )
    cutoff = datetime.combine(month_start(before), datetime.min.time(), UTC)
    detached: list[Partition] = []
    for part in await partitions(conn):
        if part.end <= cutoff:
            name = '"' + part.name.replace('"', '""') + '"'
            await conn.execute(text(f"ALTER TABLE audit_log DETACH PARTITION {name}"))
            # Detached, the month is the owner's own table: row-level security is lifted to
            # read every chain's last entry in it, and forced again at once.
            await conn.execute(text(f"ALTER TABLE {name} NO FORCE ROW LEVEL SECURITY"))
            await conn.execute(text(_ANCHOR_INSERT.format(name=name)), {"part": part.name})
            await conn.execute(text(f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY"))
            detached.append(part)
    return detached


__all__ = [
    "OUTCOMES",
    "SECURITY",
    "AuditLog",
    "ChainReport",
    "Cursor",
    "EntryPage",
    "Partition",
    "archive",
    "entry_hash",
    "entry_values",
    "maintain",
    "partitions",
    "redact",
]
