"""Key rotation: re-encrypt every encrypted column of every model under the newest key, online.

An encrypted column is one typed `EncryptedText`, or a text column holding `pgstack.crypto`
ciphertext bound to its row, marked `info={"secret": True, "encrypted_by_row": (columns)}`
(the token vault's columns are). Rotation walks each such column in primary-key order, one
batch per transaction, taking only values under another key than the newest, and rewrites
them under a row lock that skips rows another transaction holds (they are taken on a later
pass). Readers never wait, writers wait at most for one batch, and a run that is stopped
resumes where it stopped: the values already done are no longer "under another key".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    MetaData,
    Table,
    Text,
    and_,
    bindparam,
    func,
    select,
    tuple_,
    type_coerce,
    update,
)

from pgstack.crypto import KeyRing, get_key_ring, row_context
from pgstack.db.database import Database
from pgstack.db.session import translated_errors
from pgstack.db.tenant import entered, maintenance_scopes
from pgstack.errors import ConfigurationError, EncryptionError
from pgstack.orm.types import EncryptedText

ROW_BOUND = "encrypted_by_row"
# Rows another transaction holds are retried for this long (seconds) before they are
# reported as still under an old key.
DEFAULT_LOCK_WAIT = 30.0


@dataclass(frozen=True)
class EncryptedColumn:
    """One column of encrypted values, and how to compute a row's encryption context."""

    table: Table
    column: Column[Any]
    context_columns: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """`table.column`, as reports name it."""
        return f"{self.table.fullname}.{self.column.name}"

    def context(self, row: Any) -> str:
        """The associated data the row's value was encrypted with."""
        if not self.context_columns:
            context: str = self.column.type._context()  # type: ignore[attr-defined]
            return context
        return row_context(self.name, *(row[name] for name in self.context_columns))


@dataclass(frozen=True)
class KeyUsage:
    """How many values of one column are encrypted with one key."""

    column: str
    kid: str
    values: int


@dataclass
class RotationReport:
    """What a rotation did: values re-encrypted, values it could not, what still uses old keys."""

    primary_kid: str
    reencrypted: int = 0
    failures: list[str] = field(default_factory=list)
    remaining: list[KeyUsage] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether every value is now under the newest key (the old keys can go)."""
        return not self.failures and not self.remaining


def encrypted_columns(sources: Iterable[MetaData | Table]) -> list[EncryptedColumn]:
    """Every encrypted column of these tables (or of the tables of these metadata), by name."""
    found: dict[str, EncryptedColumn] = {}
    for source in sources:
        tables = source.tables.values() if isinstance(source, MetaData) else [source]
        for table in tables:
            for column in table.columns:
                bound = column.info.get(ROW_BOUND)
                if isinstance(column.type, EncryptedText):
                    candidate = EncryptedColumn(table, column)
                elif bound:
                    candidate = EncryptedColumn(table, column, tuple(bound))
                else:
                    continue
                if not table.primary_key.columns:
                    raise ConfigurationError(
                        f"{candidate.name} is encrypted but {table.fullname} has no primary "
                        "key: key rotation walks rows by primary key; give the table one."
                    )
                found.setdefault(candidate.name, candidate)
    return [found[name] for name in sorted(found)]


async def key_usage(db: Database, columns: Sequence[EncryptedColumn]) -> list[KeyUsage]:
    """How many values of each column each key encrypts (NULLs not counted)."""
    counts: dict[tuple[int, str], int] = {}
    with translated_errors():
        for scope in await maintenance_scopes(db):
            with entered(scope):
                async with db.engine.connect() as conn:
                    for at, enc in enumerate(columns):
                        if not _in_scope(enc, scope):
                            continue
                        kid = _kid(enc.column)
                        stmt = (
                            select(kid, func.count())
                            .select_from(enc.table)
                            .where(enc.column.is_not(None))
                            .group_by(kid)
                        )
                        for row in (await conn.execute(stmt)).all():
                            key = (at, str(row[0]))
                            counts[key] = counts.get(key, 0) + int(row[1])
    return [KeyUsage(columns[at].name, kid, n) for (at, kid), n in sorted(counts.items())]


def _in_scope(enc: EncryptedColumn, scope: Any) -> bool:
    # A tenant's pass covers the tenant-scoped tables only: the others were done without one.
    return scope is None or "tenant_id" in enc.table.c


async def rotate_keys(
    db: Database,
    columns: Sequence[EncryptedColumn],
    *,
    keys: KeyRing | None = None,
    batch_size: int = 200,
    lock_wait: float = DEFAULT_LOCK_WAIT,
    progress: Callable[[EncryptedColumn, int], None] | None = None,
) -> RotationReport:
    """Re-encrypt every value of `columns` that is under an older key, in batches, online.

    `progress(column, n)` is called after each batch with the number of values it handled.
    A value that cannot be decrypted is left as it is and named in the report's failures
    (by table, column and primary key, never its content).
    """
    if batch_size < 1:
        raise ConfigurationError("batch_size must be at least 1.")
    ring = keys if keys is not None else get_key_ring()
    report = RotationReport(primary_kid=ring.primary_kid)
    loop = asyncio.get_running_loop()
    # Under row-level security, the rows of each tenant are reached inside that tenant.
    for scope in await maintenance_scopes(db):
        with entered(scope):
            for enc in columns:
                if not _in_scope(enc, scope):
                    continue
                failed: set[tuple[Any, ...]] = set()
                changed, left = await _pass(db, enc, ring, batch_size, failed, report, progress)
                # Values left over were in rows others held while the pass ran: more passes,
                # for `lock_wait` seconds at most.
                deadline = loop.time() + lock_wait
                while left and loop.time() < deadline:
                    if not changed:
                        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
                    changed, left = await _pass(db, enc, ring, batch_size, failed, report, progress)
    report.remaining = [
        u for u in await key_usage(db, columns) if u.kid != report.primary_kid and u.values
    ]
    return report


async def _pass(
    db: Database,
    enc: EncryptedColumn,
    ring: KeyRing,
    batch_size: int,
    failed: set[tuple[Any, ...]],
    report: RotationReport,
    progress: Callable[[EncryptedColumn, int], None] | None,
) -> tuple[int, int]:
    """One walk over the column; how many values it changed and how many are still to do."""
    table, column = enc.table, enc.column
    pk = list(table.primary_key.columns)
    raw = type_coerce(column, Text()).label("pgstack_value")
    context_columns = [table.c[name] for name in enc.context_columns]
    stale = and_(column.is_not(None), _kid(column) != ring.primary_kid)
    rewrite = (
        update(table)
        .where(and_(*(c == bindparam(f"pgstack_pk_{i}") for i, c in enumerate(pk))))
        .values({column.name: type_coerce(bindparam("pgstack_value"), Text())})
    )
    changed = 0
    last: tuple[Any, ...] | None = None
    while True:
        stmt = (
            select(*pk, raw, *context_columns)
            .where(stale)
            .order_by(*pk)
            .limit(batch_size)
            .with_for_update(skip_locked=True, of=table)
        )
        if last is not None:
            stmt = stmt.where(tuple_(*pk) > tuple_(*last))
        with translated_errors():
            async with db.engine.begin() as conn:
                rows = (await conn.execute(stmt)).all()
                if not rows:
                    break
                last = tuple(rows[-1][: len(pk)])
                params: list[dict[str, Any]] = []
                for row in rows:
                    key = tuple(row[: len(pk)])
                    if key in failed:
                        continue
                    mapping = row._mapping
                    try:
                        value = ring.reencrypt(mapping["pgstack_value"], enc.context(mapping))
                    except EncryptionError as exc:
                        failed.add(key)
                        report.failures.append(f"{enc.name} {_describe(pk, key)}: {exc.message}")
                        continue
                    params.append(
                        {"pgstack_value": value} | {f"pgstack_pk_{i}": v for i, v in enumerate(key)}
                    )
                if params:
                    await conn.execute(rewrite, params)
        changed += len(params)
        report.reencrypted += len(params)
        if progress is not None:
            progress(enc, len(rows))
    with translated_errors():
        async with db.engine.connect() as conn:
            count = select(func.count()).select_from(table).where(stale)
            left = (await conn.execute(count)).scalar_one()
    return changed, int(left) - len(failed)


def _kid(column: Column[Any]) -> Any:
    # Stored form `v1:<kid>:<data>`: the key id is the second field.
    return func.split_part(type_coerce(column, Text()), ":", 2)


def _describe(pk: Sequence[Column[Any]], key: tuple[Any, ...]) -> str:
    return ", ".join(f"{c.name}={v}" for c, v in zip(pk, key, strict=True))
