"""The contenders: one class each, one method per workload (an op the harness times).

A method returns how many units (lookups, rows, pages) one call did. A contender that has no
way to express a workload leaves the method out; the table then says "not offered".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from benchmarks.models import (
    BULK,
    COUNTERS,
    INSERTS,
    ITEM_COLUMNS,
    ITEMS,
    TENANT_ITEMS,
    UPSERTS,
    PgBulk,
    PgCounter,
    PgInsert,
    PgItem,
    PgTenantItem,
    PgUpsert,
    PlainBulk,
    PlainCounter,
    PlainInsert,
    PlainItem,
    PlainUpsert,
)
from pgstack import Database, Repository, Settings
from pgstack.db.admin import asyncpg_dsn
from pgstack.orm import tenant_context

POOL = 10
PAGE, OFFSET = 50, 1_000


@dataclass
class DataSet:
    """What the workloads draw on: ids that exist, keyset boundaries, row factories."""

    ids: list[uuid.UUID]
    upsert_ids: list[uuid.UUID]
    bulk_rows: int
    upsert_rows: int
    keyset_ids: list[uuid.UUID] = field(default_factory=list)
    keyset_cursors: list[str] = field(default_factory=list)
    counter_keys: list[str] = field(default_factory=lambda: [f"k{i}" for i in range(100)])
    token_id: uuid.UUID | None = None
    #: W12: (tenant, id) of rows in the tenant-scoped table, and the URL of a role under RLS.
    tenant_rows: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)
    rls_url: Any = None

    def some_tenant_row(self) -> tuple[uuid.UUID, uuid.UUID]:
        return random.choice(self.tenant_rows)  # noqa: S311

    #: W9-W11: a live session token, an API key, and users to sign in (one task each at a
    #: time: concurrent attempts on one account would trip its lockout).
    session_token: str | None = None
    api_key: str | None = None
    login_emails: asyncio.Queue[str] | None = None

    def some_id(self) -> uuid.UUID:
        return random.choice(self.ids)  # noqa: S311

    def new_rows(self, n: int) -> list[dict[str, Any]]:
        return [{"id": uuid.uuid4(), "name": f"item {i}", "qty": i, "note": None} for i in range(n)]

    def upsert_batch(self) -> list[dict[str, Any]]:
        # Half the keys exist already, half are new: the W5 shape.
        half = self.upsert_rows // 2
        old = random.sample(self.upsert_ids, half)
        keys = old + [uuid.uuid4() for _ in range(self.upsert_rows - half)]
        return [{"id": k, "name": f"u{i}", "qty": i, "note": "x"} for i, k in enumerate(keys)]


class RawAsyncpg:
    """The baseline: an asyncpg pool and the driver's own calls, no mapping to objects."""

    name = "raw asyncpg"

    def __init__(self, url: Any, data: DataSet) -> None:
        self.url, self.data = url, data

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(asyncpg_dsn(self.url), min_size=POOL, max_size=POOL)

    async def stop(self) -> None:
        await self.pool.close()

    async def w1_get(self) -> int:
        await self.pool.fetchrow(
            f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE id = $1", self.data.some_id()
        )
        return 1

    async def w2_insert(self) -> int:
        await self.pool.fetchrow(
            f"INSERT INTO {INSERTS} (id, name, qty, note, version) VALUES ($1, $2, $3, $4, 1) "
            f"RETURNING {ITEM_COLUMNS}",
            uuid.uuid4(),
            "new",
            1,
            None,
        )
        return 1

    async def w3_bulk(self, rows: list[dict[str, Any]]) -> int:
        # A generator, not a list: 100,000 tuples built up front cost a full garbage
        # collection over the benchmark's heap, which would slow the baseline down.
        records = ((r["id"], r["name"], r["qty"], r["note"], 1) for r in rows)
        async with self.pool.acquire() as conn:
            await conn.copy_records_to_table(
                BULK, records=records, columns=["id", "name", "qty", "note", "version"]
            )
        return len(rows)

    async def w4_page(self) -> int:
        rows = await self.pool.fetch(
            # The fastest single statement measured for a page plus its total: the count as a
            # scalar subquery (a window count(*) OVER () is about five times slower).
            f"SELECT {ITEM_COLUMNS}, (SELECT count(*) FROM {ITEMS} WHERE deleted_at IS NULL) "
            f"FROM {ITEMS} WHERE deleted_at IS NULL ORDER BY id LIMIT $1 OFFSET $2",
            PAGE,
            OFFSET,
        )
        assert len(rows) == PAGE
        return 1

    async def w4p_page_plain(self) -> int:
        # W4 returns plain records already: pgstack's plain page is measured against it.
        return await self.w4_page()

    async def w4e_page_estimated(self) -> int:
        # The same page without count(*): the planner's row estimate of the query (EXPLAIN),
        # then one row more than the page to know whether rows follow.
        plan = await self.pool.fetchval(
            f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {ITEMS} WHERE deleted_at IS NULL"
        )
        rows = await self.pool.fetch(
            f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE deleted_at IS NULL "
            "ORDER BY id LIMIT $1 OFFSET $2",
            PAGE + 1,
            OFFSET,
        )
        plans = json.loads(plan) if isinstance(plan, str) else plan
        assert len(rows) == PAGE + 1 and plans[0]["Plan"]["Plan Rows"] > 0
        return 1

    async def w5_upsert(self, rows: list[dict[str, Any]]) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                f"INSERT INTO {UPSERTS} (id, name, qty, note, version) VALUES ($1, $2, $3, $4, 1) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, qty = excluded.qty, "
                f"note = excluded.note, updated_at = now(), version = {UPSERTS}.version + 1, "
                "deleted_at = NULL",
                [(r["id"], r["name"], r["qty"], r["note"]) for r in rows],
            )
        return len(rows)

    async def w6_counter(self) -> int:
        await self.pool.fetchval(
            f"INSERT INTO {COUNTERS} (key, n) VALUES ($1, 1) ON CONFLICT (key) "
            f"DO UPDATE SET n = {COUNTERS}.n + 1 RETURNING n",
            random.choice(self.data.counter_keys),  # noqa: S311
        )
        return 1

    async def w7_keyset(self) -> int:
        after = random.choice(self.data.keyset_ids)  # noqa: S311
        rows = await self.pool.fetch(
            f"SELECT {ITEM_COLUMNS} FROM {ITEMS} WHERE deleted_at IS NULL AND id > $1 "
            "ORDER BY id LIMIT $2",
            after,
            PAGE + 1,
        )
        assert len(rows) == PAGE + 1
        return 1

    async def w7p_keyset_plain(self) -> int:
        return await self.w7_keyset()  # plain records already, as W7

    async def w8_token(self) -> int:
        # The limit for W8: a primary-key read of the same token row.
        await self.pool.fetchrow("SELECT * FROM oauth_tokens WHERE id = $1", self.data.token_id)
        return 1

    async def w12_tenant_read(self) -> int:
        # The limit for W12: the same table read by primary key, unprotected (this role is the
        # benchmark's own, which row-level security does not apply to).
        _, id_ = self.data.some_tenant_row()
        await self.pool.fetchrow(
            f"SELECT id, tenant_id, name, qty FROM {TENANT_ITEMS} WHERE id = $1", id_
        )
        return 1

    async def w13_ratelimit(self) -> int:
        # The very statement RateLimiter.hit sends, on a plain asyncpg pool.
        from pgstack.tenancy.ratelimit import HIT_SQL

        key = random.choice(self.data.counter_keys)  # noqa: S311
        rows = await self.pool.fetch(HIT_SQL, key, [60], [1_000_000_000], 1, "2000ms")
        assert rows[0]["allowed"]
        return 1

    async def w9_session(self) -> int:
        # The same check by hand: the token's digest, then the joined read of session and user.
        assert self.data.session_token is not None
        token_hash = hashlib.sha256(self.data.session_token.encode()).hexdigest()
        row = await self.pool.fetchrow(SESSION_SQL, token_hash)
        assert row is not None
        return 1

    async def w10_api_key(self) -> int:
        # The same check by hand: the prefix, the joined read, the digest compared.
        key = self.data.api_key
        assert key is not None
        row = await self.pool.fetchrow(API_KEY_SQL, key[4:12])
        assert row is not None
        assert hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), row["key_hash"])
        return 1

    async def w11_login(self) -> int:
        # The statements pgstack's login sends (see docs/benchmarks.md), with the same hasher:
        # the lockout's two UPDATEs, the audit log's security entry, the session's INSERT.
        assert self.data.login_emails is not None
        email = await self.data.login_emails.get()
        try:
            user = await self.pool.fetchrow(ADMIT_SQL, email, 5, timedelta(minutes=15))
            ok, _ = await LOGIN_HASHER.averify_and_update(LOGIN_PASSWORD, user["password_hash"])
            assert ok
            user = await self.pool.fetchrow(SETTLE_SQL, user["id"])
            # The security entry of the sign-in, one statement committed by itself (the audit
            # log's trigger chains it under its advisory lock, as for pgstack).
            await self.pool.execute(
                AUDIT_INSERT_SQL, uuid.uuid4(), str(user["id"]), "auth.login", str(user["id"])
            )
            token = "pgss_" + secrets.token_urlsafe(32)
            await self.pool.fetchrow(
                SESSION_INSERT_SQL,
                uuid.uuid4(),
                user["id"],
                hashlib.sha256(token.encode()).hexdigest(),
                datetime.now(UTC) + timedelta(days=7),
            )
        finally:
            self.data.login_emails.put_nowait(email)
        return 1


TOKEN_PROVIDER, TOKEN_ACCOUNT = "bench", "account"
# W13: 100 keys, a quota that is never reached (every check writes its count).
RATE_LIMIT = "1000000000/minute"
SESSION_SQL = (
    "SELECT u.* FROM users u JOIN login_sessions s ON s.user_id = u.id "
    "WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now() "
    "AND u.deleted_at IS NULL AND u.is_active"
)
API_KEY_SQL = (
    "SELECT k.*, u.* FROM api_keys k JOIN users u ON u.id = k.user_id "
    "WHERE k.prefix = $1 AND u.deleted_at IS NULL AND u.is_active"
)
ADMIT_SQL = (
    "UPDATE users SET failed_login_count = CASE WHEN locked_until <= now() THEN 1 "
    "ELSE failed_login_count + 1 END, locked_until = CASE WHEN (CASE WHEN locked_until <= now() "
    "THEN 1 ELSE failed_login_count + 1 END) >= $2 THEN now() + $3::interval END, "
    "updated_at = now() WHERE email = $1 AND deleted_at IS NULL "
    "AND (locked_until IS NULL OR locked_until <= now()) RETURNING *"
)
SETTLE_SQL = (
    "UPDATE users SET last_login_at = now(), login_count = login_count + 1, "
    "failed_login_count = 0, locked_until = NULL, updated_at = now() "
    "WHERE id = $1 AND (locked_until IS NULL OR locked_until <= now()) RETURNING *"
)
AUDIT_INSERT_SQL = (
    "INSERT INTO audit_log (id, tenant_id, actor_id, actor_type, action, category, "
    "resource_type, resource_id, description, ip, user_agent, request_id, outcome, error, "
    "request_data, response_data, changes) VALUES ($1, NULL, $2, 'user', $3, 'security', "
    "'user', $4, NULL, NULL, NULL, NULL, 'success', NULL, NULL, NULL, NULL)"
)
SESSION_INSERT_SQL = (
    "INSERT INTO login_sessions (id, user_id, token_hash, expires_at, revoked_at) "
    "VALUES ($1, $2, $3, $4, NULL) RETURNING created_at"
)
LOGIN_PASSWORD = "violet Harbour 42 lanterns drift"  # noqa: S105 - a benchmark account


def _login_config() -> Any:
    from pgstack.identity import IdentityConfig

    # W11 measures the statements, not argon2: the cheapest argon2id parameters, on both sides.
    return IdentityConfig(argon2_memory_kib=8, argon2_time_cost=1)


def _login_hasher() -> Any:
    from pgstack.identity import PasswordHasher

    return PasswordHasher(_login_config())


LOGIN_HASHER = _login_hasher()


async def _never_refresh(token: Any) -> Any:
    raise AssertionError("the benchmark token is valid for hours: W8 never refreshes")


PG_COUNTER_TICK = (
    pg_insert(PgCounter)
    .values(key=bindparam("key"), n=1)
    .on_conflict_do_update(index_elements=["key"], set_={"n": PgCounter.n + 1})
    .returning(PgCounter.n)
)


class EstimatedItems(Repository[PgItem]):
    """W4e: "auto" estimates from 1,000 rows, so `--quick`'s 5,000 rows are estimated too."""

    model = PgItem
    estimate_total_from = 1_000


class Pgstack:
    """pgstack as its guide shows it: a Database, one session per task, a Repository."""

    name = "pgstack"

    def __init__(self, url: Any, data: DataSet) -> None:
        self.url, self.data = url, data

    async def start(self) -> None:
        settings = Settings(
            database_url=self.url.render_as_string(hide_password=False),
            database_pool_size=POOL,
            database_max_overflow=0,
        )
        self.db = Database(settings)
        await self.db.connect()
        if self.data.rls_url is not None:
            # W12: the same settings, as a role row-level security applies to.
            rls_url = self.data.rls_url.render_as_string(hide_password=False)
            self.rls_db = Database(settings.with_url(rls_url))
            await self.rls_db.connect()

    async def stop(self) -> None:
        await self.db.disconnect()
        if self.data.rls_url is not None:
            await self.rls_db.disconnect()

    async def w1_get(self) -> int:
        async with self.db.session() as s:
            await Repository(s, PgItem).get(self.data.some_id())
        return 1

    async def w2_insert(self) -> int:
        async with self.db.transaction() as s:
            await Repository(s, PgInsert).create(name="new", qty=1)
        return 1

    async def w3_bulk(self, rows: list[dict[str, Any]]) -> int:
        async with self.db.transaction() as s:
            return await Repository(s, PgBulk).create_many(rows)

    async def w4_page(self) -> int:
        async with self.db.session() as s:
            page = await Repository(s, PgItem).page(sort="id", limit=PAGE, offset=OFFSET)
        assert len(page.items) == PAGE
        return 1

    async def w4p_page_plain(self) -> int:
        async with self.db.session() as s:
            page = await Repository(s, PgItem).page(
                sort="id", limit=PAGE, offset=OFFSET, plain=True
            )
        assert len(page.items) == PAGE
        return 1

    async def w4e_page_estimated(self) -> int:
        async with self.db.session() as s:
            page = await EstimatedItems(s).page(sort="id", limit=PAGE, offset=OFFSET, total="auto")
        assert len(page.items) == PAGE and page.total_is_estimate
        return 1

    async def w5_upsert(self, rows: list[dict[str, Any]]) -> int:
        async with self.db.transaction() as s:
            await Repository(s, PgUpsert).upsert_many(rows, returning=False)
        return len(rows)

    async def w6_counter(self) -> int:
        # One statement by itself: Database.run, with the statement built once.
        key = random.choice(self.data.counter_keys)  # noqa: S311
        rows = await self.db.run(PG_COUNTER_TICK, {"key": key})
        assert rows[0][0] >= 1
        return 1

    async def w7_keyset(self) -> int:
        cursor = random.choice(self.data.keyset_cursors)  # noqa: S311
        async with self.db.session() as s:
            page = await Repository(s, PgItem).page_after(cursor=cursor, sort="id", limit=PAGE)
        assert len(page.items) == PAGE
        return 1

    async def w7p_keyset_plain(self) -> int:
        cursor = random.choice(self.data.keyset_cursors)  # noqa: S311
        async with self.db.session() as s:
            page = await Repository(s, PgItem).page_after(
                cursor=cursor, sort="id", limit=PAGE, plain=True
            )
        assert len(page.items) == PAGE
        return 1

    async def w8_token(self) -> int:
        if not hasattr(self, "vault"):
            from pgstack.tokens import TokenVault

            self.vault = TokenVault(self.db)
        await self.vault.get_valid_token(TOKEN_PROVIDER, TOKEN_ACCOUNT, _never_refresh)
        return 1

    async def w12_tenant_read(self) -> int:
        # As the application role, under row-level security, in the tenant's context.
        tenant, id_ = self.data.some_tenant_row()
        with tenant_context(tenant):
            async with self.rls_db.session() as s:
                await Repository(s, PgTenantItem).get(id_)
        return 1

    async def w13_ratelimit(self) -> int:
        if not hasattr(self, "limiter"):
            from pgstack.tenancy import RateLimiter

            self.limiter = RateLimiter(self.db)
        key = random.choice(self.data.counter_keys)  # noqa: S311
        result = await self.limiter.hit(key, RATE_LIMIT)
        assert result.allowed
        return 1

    def _identity(self) -> Any:
        if not hasattr(self, "identity"):
            from pgstack.identity import Identity

            self.identity = Identity(self.db, _login_config())
        return self.identity

    async def w9_session(self) -> int:
        assert self.data.session_token is not None
        await self._identity().auth.user_for_session(self.data.session_token)
        return 1

    async def w10_api_key(self) -> int:
        assert self.data.api_key is not None
        await self._identity().api_keys.verify(self.data.api_key)
        return 1

    async def w11_login(self) -> int:
        assert self.data.login_emails is not None
        email = await self.data.login_emails.get()
        try:
            await self._identity().auth.login(email, LOGIN_PASSWORD)
        finally:
            self.data.login_emails.put_nowait(email)
        return 1


class SqlalchemyOrm:
    """SQLAlchemy 2 ORM as a typical application writes it: sessionmaker, get, add, commit."""

    name = "SQLAlchemy ORM"

    def __init__(self, url: Any, data: DataSet) -> None:
        self.url, self.data = url, data

    async def start(self) -> None:
        self.engine: AsyncEngine = create_async_engine(self.url, pool_size=POOL, max_overflow=0)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def stop(self) -> None:
        await self.engine.dispose()

    async def w1_get(self) -> int:
        async with self.sessions() as s:
            await s.get(PlainItem, self.data.some_id())
        return 1

    async def w2_insert(self) -> int:
        async with self.sessions() as s:
            s.add(PlainInsert(name="new", qty=1))
            await s.commit()
        return 1

    async def w3_bulk(self, rows: list[dict[str, Any]]) -> int:
        async with self.sessions() as s:
            s.add_all([PlainBulk(**r) for r in rows])
            await s.commit()
        return len(rows)

    async def w4_page(self) -> int:
        async with self.sessions() as s:
            where = PlainItem.deleted_at.is_(None)
            items = (
                await s.scalars(
                    select(PlainItem).where(where).order_by(PlainItem.id).limit(PAGE).offset(OFFSET)
                )
            ).all()
            await s.scalar(select(func.count()).select_from(PlainItem).where(where))
        assert len(items) == PAGE
        return 1

    async def w5_upsert(self, rows: list[dict[str, Any]]) -> int:
        statement = pg_insert(PlainUpsert)
        statement = statement.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "name": statement.excluded.name,
                "qty": statement.excluded.qty,
                "note": statement.excluded.note,
                "updated_at": func.now(),
                "version": PlainUpsert.version + 1,
                "deleted_at": None,
            },
        )
        async with self.sessions() as s:
            await s.execute(statement, rows)
            await s.commit()
        return len(rows)

    async def w6_counter(self) -> int:
        key = random.choice(self.data.counter_keys)  # noqa: S311
        statement = (
            pg_insert(PlainCounter)
            .values(key=key, n=1)
            .on_conflict_do_update(index_elements=["key"], set_={"n": PlainCounter.n + 1})
            .returning(PlainCounter.n)
        )
        async with self.sessions() as s:
            (await s.execute(statement)).scalar_one()
            await s.commit()
        return 1

    async def w7_keyset(self) -> int:
        after = random.choice(self.data.keyset_ids)  # noqa: S311
        async with self.sessions() as s:
            items = (
                await s.scalars(
                    select(PlainItem)
                    .where(PlainItem.deleted_at.is_(None), PlainItem.id > after)
                    .order_by(PlainItem.id)
                    .limit(PAGE + 1)
                )
            ).all()
        assert len(items) == PAGE + 1
        return 1


class AdvancedAlchemy:
    """advanced-alchemy's SQLAlchemyAsyncRepository with its defaults, on plain models."""

    name = "advanced-alchemy"

    def __init__(self, url: Any, data: DataSet) -> None:
        self.url, self.data = url, data

    async def start(self) -> None:
        from advanced_alchemy.repository import SQLAlchemyAsyncRepository

        def repo(model: type[Any]) -> Callable[..., Any]:
            return type(
                f"{model.__name__}Repository",
                (SQLAlchemyAsyncRepository,),
                {"model_type": model},
            )

        self.items, self.inserts = repo(PlainItem), repo(PlainInsert)
        self.bulk, self.upserts = repo(PlainBulk), repo(PlainUpsert)
        self.engine: AsyncEngine = create_async_engine(self.url, pool_size=POOL, max_overflow=0)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def stop(self) -> None:
        await self.engine.dispose()

    async def w1_get(self) -> int:
        async with self.sessions() as s:
            await self.items(session=s).get(self.data.some_id())
        return 1

    async def w2_insert(self) -> int:
        async with self.sessions() as s:
            await self.inserts(session=s).add(PlainInsert(name="new", qty=1), auto_commit=True)
        return 1

    async def w3_bulk(self, rows: list[dict[str, Any]]) -> int:
        async with self.sessions() as s:
            await self.bulk(session=s).add_many([PlainBulk(**r) for r in rows], auto_commit=True)
        return len(rows)

    async def w4_page(self) -> int:
        from advanced_alchemy.filters import LimitOffset, OrderBy

        async with self.sessions() as s:
            items, _total = await self.items(session=s).list_and_count(
                LimitOffset(limit=PAGE, offset=OFFSET), OrderBy("id", "asc")
            )
        assert len(items) == PAGE
        return 1

    async def w5_upsert(self, rows: list[dict[str, Any]]) -> int:
        async with self.sessions() as s:
            await self.upserts(session=s).upsert_many(
                [PlainUpsert(**r) for r in rows], auto_commit=True
            )
        return len(rows)


CONTENDERS = (RawAsyncpg, Pgstack, SqlalchemyOrm, AdvancedAlchemy)
