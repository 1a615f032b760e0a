"""16 concurrent tasks on two tenants never see each other's rows: sessions, read lane, vault.

The service runs as the application role on a small pool, so connections pass from one
tenant's task to the other's all the time: a tenant left behind on a connection would show.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy import MetaData, Text, Uuid, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from tenancy_rls_setup import ACME, GLOBEX, RlsApp

from pgstack import Repository
from pgstack.crypto import KeyRing, generate_key
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import NotFoundError
from pgstack.orm import NAMING_CONVENTION, ModelMixin, TenantScoped, tenant_context
from pgstack.testing.queries import record_statements
from pgstack.tokens import TokenVault

ROUNDS = 6


class RlsBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Meeting(TenantScoped, RlsBase):
    """The application's `meetings` table (its migration is in tenancy_rls_setup.py)."""

    __tablename__ = "meetings"
    id: Mapped[uuid.UUID] = mapped_column(Uuid(as_uuid=True), primary_key=True)
    title: Mapped[str] = mapped_column(Text)


async def _seed(db: Database) -> dict[uuid.UUID, set[uuid.UUID]]:
    made: dict[uuid.UUID, set[uuid.UUID]] = {}
    for tenant in (ACME, GLOBEX):
        with tenant_context(tenant):
            async with db.transaction() as session:
                repo = Repository(session, Meeting)
                rows = [{"id": uuid.uuid4(), "title": f"{tenant}-{i}"} for i in range(5)]
                await repo.create_many(rows)
                made[tenant] = {r["id"] for r in rows}
    return made


async def test_sixteen_tasks_on_two_tenants_through_sessions_and_the_read_lane(
    rls_app: RlsApp,
) -> None:
    # proves: N2, N3, R7
    db = Database(rls_app.settings(database_pool_size=3, read_pool_size=3))
    async with db:
        made = await _seed(db)
        everything = made[ACME] | made[GLOBEX]
        seen: list[tuple[uuid.UUID, str, set[uuid.UUID]]] = []

        async def worker(n: int) -> None:
            tenant = (ACME, GLOBEX)[n % 2]
            other = (GLOBEX, ACME)[n % 2]
            with tenant_context(tenant):
                for _ in range(ROUNDS):
                    # Raw SQL in a transaction (the database alone filters: no tenant condition).
                    async with db.transaction() as session:
                        ids = set(
                            (await session.execute(text("SELECT id FROM meetings"))).scalars()
                        )
                        seen.append((tenant, "transaction", ids))
                    # Database.run: a statement of its own.
                    ids = {r[0] for r in await db.run(text("SELECT id FROM meetings"))}
                    seen.append((tenant, "run", ids))
                    # The read lane: a fresh session's repository reads.
                    async with db.session() as session:
                        repo = Repository(session, Meeting)
                        ids = {m.id for m in await repo.list()}
                        seen.append((tenant, "lane", ids))
                    async with db.session() as session:
                        repo = Repository(session, Meeting)
                        for theirs in made[other]:
                            assert await repo.get_or_none(theirs) is None
                    await asyncio.sleep(0)

        with record_statements(db) as statements:
            await asyncio.gather(*(worker(n) for n in range(16)))
        assert len(seen) == 16 * ROUNDS * 3
        for tenant, path, ids in seen:
            assert ids == made[tenant], (tenant, path, ids & (everything - made[tenant]))
        # The lane's reads set the tenant in the statement itself: no extra round trip.
        lane_reads = [s for s in statements if "pgstack_read" in s]
        assert lane_reads and all("set_config('pgstack.tenant_id'" in s for s in lane_reads)
        # With no tenant, neither the lane nor a session sees any of it.
        async with db.session() as session:
            assert (await session.execute(select(Meeting.id))).all() == []
        assert await db.run(text("SELECT count(*) FROM meetings")) == [(0,)]


async def test_sixteen_tasks_on_two_tenants_through_the_vault(rls_app: RlsApp) -> None:
    # proves: N3, T3
    keys = KeyRing.parse(generate_key("rls"))
    db = Database(rls_app.settings(database_pool_size=3, read_pool_size=3))
    async with db:
        vault = TokenVault(db, keys=keys, refresh_timeout=5.0)
        # The same provider account connected by both workspaces, and once by the service.
        for tenant in (ACME, GLOBEX):
            with tenant_context(tenant):
                await vault.save("crm", "shared", f"at-{tenant}", f"rt-{tenant}", expires_in=60)
        await vault.save("crm", "shared", "at-global", "rt-global", expires_in=3600)
        calls: dict[str, int] = {}

        async def refresher(refresh_token: str) -> dict[str, Any]:
            calls[refresh_token] = calls.get(refresh_token, 0) + 1
            await asyncio.sleep(0.05)  # every caller of the tenant arrives meanwhile
            owner = refresh_token.removeprefix("rt-")
            return {"access_token": f"at2-{owner}", "expires_in": 3600}

        async def worker(n: int) -> tuple[uuid.UUID, list[str]]:
            tenant = (ACME, GLOBEX)[n % 2]
            got = []
            with tenant_context(tenant):
                # Inside the buffer: refreshed once per tenant, however many ask.
                got.append((await vault.get_valid_token("crm", "shared", refresher)).access_token)
                for _ in range(ROUNDS):
                    got.append((await vault.get("crm", "shared")).access_token)  # the lane
                    infos = await vault.list_tokens()
                    got.extend(str(i.tenant_id) for i in infos)
                    got.extend(str(h.tenant_id) for h in await vault.history("crm", "shared"))
            return tenant, got

        results = await asyncio.gather(*(worker(n) for n in range(16)))
        for tenant, got in results:
            assert set(got) == {f"at2-{tenant}", str(tenant)}, got
        assert calls == {f"rt-{ACME}": 1, f"rt-{GLOBEX}": 1}
        # Without a tenant, the service's own token, its history only, untouched.
        assert (await vault.get("crm", "shared")).access_token == "at-global"
        assert await vault.history("crm", "shared") == []
        assert [i.tenant_id for i in await vault.list_tokens()] == [None]
        # A tenant cannot reach the other's token by deleting or re-saving "its" account.
        with tenant_context(ACME):
            assert await vault.delete("crm", "shared")
            try:
                await vault.get("crm", "shared")
                raise AssertionError("deleted token still found")
            except NotFoundError:
                pass
        with tenant_context(GLOBEX):
            assert (await vault.get("crm", "shared")).access_token == f"at2-{GLOBEX}"
        # needing_refresh without a tenant sees only the tenantless token.
        due = await vault.needing_refresh(timedelta(hours=2))
        assert [t.tenant_id for t in due] == [None]

    # Raw SQL as the application role: the vault's rows obey the same policy.
    conn = await asyncpg.connect(asyncpg_dsn(rls_app.app))
    try:
        assert await conn.fetchval("SELECT count(*) FROM oauth_tokens") == 1  # the global one
        assert await conn.fetchval("SELECT count(*) FROM token_refresh_audit") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('pgstack.tenant_id', $1, true)", str(GLOBEX))
            rows = await conn.fetch("SELECT tenant_id FROM oauth_tokens")
            assert [r[0] for r in rows] == [GLOBEX]
            audit = await conn.fetch("SELECT tenant_id FROM token_refresh_audit")
            assert [r[0] for r in audit] == [GLOBEX]
    finally:
        await conn.close()
