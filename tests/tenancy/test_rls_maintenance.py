"""Work over every row and the vault's tenant, as the application role under row-level security."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from tenancy_rls_setup import ACME, GLOBEX, RlsApp

from pgstack.crypto import KeyRing, generate_key
from pgstack.db.database import Database
from pgstack.db.tenant import each_tenant
from pgstack.errors import NotFoundError, TenantScopeError
from pgstack.orm import current_tenant, tenant_context
from pgstack.orm.rotation import encrypted_columns, key_usage
from pgstack.tokens import OAuthToken, TokenVault


async def test_key_rotation_reaches_every_tenants_tokens_under_rls(rls_app: RlsApp) -> None:
    # proves: N3, T5
    old, new = generate_key("k1"), generate_key("k2")
    columns = encrypted_columns([OAuthToken.__table__])  # type: ignore[list-item]
    db = Database(rls_app.settings())
    async with db:
        before = TokenVault(db, keys=KeyRing.parse(old))
        for tenant in (ACME, GLOBEX):
            with tenant_context(tenant):
                await before.save("crm", "shared", f"at-{tenant}", f"rt-{tenant}")
        await before.save("crm", "shared", "at-global", "rt-global")

        # Without a tenant the application role sees one token, yet the counts and the
        # rotation cover all three: each tenant is visited in turn.
        usage = {(u.column, u.kid): u.values for u in await key_usage(db, columns)}
        assert usage == {
            ("oauth_tokens.access_token", "k1"): 3,
            ("oauth_tokens.refresh_token", "k1"): 3,
        }
        rotated = TokenVault(db, keys=KeyRing.parse(f"{new},{old}"))
        assert await rotated.rotate_keys() == 6
        usage = {(u.column, u.kid): u.values for u in await key_usage(db, columns)}
        assert usage == {
            ("oauth_tokens.access_token", "k2"): 3,
            ("oauth_tokens.refresh_token", "k2"): 3,
        }

        # The old key can go: every tenant's token still reads.
        after = TokenVault(db, keys=KeyRing.parse(new))
        for tenant in (ACME, GLOBEX):
            with tenant_context(tenant):
                assert (await after.get("crm", "shared")).refresh_token == f"rt-{tenant}"
        assert (await after.get("crm", "shared")).access_token == "at-global"
        # Inside a tenant, only that tenant's values are counted.
        with tenant_context(ACME):
            assert sum(u.values for u in await key_usage(db, columns)) == 2


async def test_refresh_due_outside_a_tenant_refreshes_every_tenants_tokens(
    rls_app: RlsApp,
) -> None:
    # proves: N3, T3, T4
    db = Database(rls_app.settings())
    async with db:
        vault = TokenVault(db, keys=KeyRing.parse(generate_key("k1")))
        for tenant in (ACME, GLOBEX):
            with tenant_context(tenant):
                await vault.save("crm", "shared", f"at-{tenant}", f"rt-{tenant}", expires_in=60)
        await vault.save("crm", "shared", "at-global", "rt-global", expires_in=60)
        asked: list[str] = []

        async def refresher(refresh_token: str) -> dict[str, object]:
            asked.append(refresh_token)
            return {"access_token": "new-" + refresh_token, "expires_in": 3600}

        summary = await vault.refresh_due({"crm": refresher})
        assert (summary.refreshed, summary.failed) == (3, 0)
        assert sorted(asked) == sorted(["rt-global", f"rt-{ACME}", f"rt-{GLOBEX}"])
        for tenant in (ACME, GLOBEX):
            with tenant_context(tenant):
                assert (await vault.get("crm", "shared")).access_token == f"new-rt-{tenant}"
                history = await vault.history("crm", "shared")
                assert [(h.tenant_id, h.success) for h in history] == [(tenant, True)]
        # Inside a tenant, only that tenant's tokens are due (none now).
        with tenant_context(ACME):
            assert (await vault.refresh_due({"crm": refresher})).refreshed == 0


async def test_a_tenant_given_as_text_is_the_same_tenant_in_the_vault(rls_app: RlsApp) -> None:
    # proves: N2, T1
    db = Database(rls_app.settings())
    async with db:
        vault = TokenVault(db, keys=KeyRing.parse(generate_key("k1")))
        with tenant_context(str(ACME)):
            saved = await vault.save("crm", "a", "at", "rt", tenant_id=ACME)
        assert saved.tenant_id == ACME
        with tenant_context(ACME):
            assert (await vault.get("crm", "a")).id == saved.id
            with pytest.raises(TenantScopeError, match="another tenant"):
                await vault.save("crm", "a", "at", tenant_id=GLOBEX)
        with tenant_context(str(GLOBEX)), pytest.raises(NotFoundError):
            await vault.get("crm", "a")


async def test_each_tenant_runs_the_work_in_every_tenant_in_turn_or_in_the_current_one(
    rls_app: RlsApp,
) -> None:
    # proves: N3
    seen = text("SELECT current_setting('pgstack.tenant_id', true)")
    db = Database(rls_app.settings())
    async with db:

        async def work(tenant_id: uuid.UUID) -> tuple[uuid.UUID, object, str]:
            # The work's statements run in that tenant, as row-level security reads it.
            return tenant_id, current_tenant(), (await db.run(seen))[0][0]

        assert await each_tenant(db, work) == [
            (ACME, ACME, str(ACME)),
            (GLOBEX, GLOBEX, str(GLOBEX)),
        ]
        assert current_tenant() is None
        with tenant_context(str(GLOBEX)):  # as text, as a header gives it
            assert await each_tenant(db, work) == [(GLOBEX, str(GLOBEX), str(GLOBEX))]

        async def fails(tenant_id: uuid.UUID) -> None:
            raise RuntimeError(str(tenant_id))

        with pytest.raises(RuntimeError, match=str(ACME)):
            await each_tenant(db, fails)
        assert current_tenant() is None  # no tenant left behind by a failure
