"""The testing kit's production-shaped database: `db init` roles, migrated by the owner."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy import text

from pgstack import Database
from pgstack.testing.plugin import AppRoleDatabase, asyncpg_dsn


async def test_the_service_connects_as_a_role_that_row_level_security_holds(
    pgstack_app_role_database: AppRoleDatabase, pgstack_app_role_db: Database
) -> None:
    # proves: N3, O6 (an application's tests can run as the production application role)
    roles = pgstack_app_role_database
    assert roles.app.database == roles.owner.database
    assert roles.app.username != roles.owner.username
    settings = pgstack_app_role_db.settings
    assert settings.database_migration_url is not None
    assert roles.owner.username in settings.database_migration_url.get_secret_value()
    async with pgstack_app_role_db.session() as session:
        me = (
            await session.execute(
                text(
                    "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            )
        ).one()
        owned = await session.scalar(
            text("SELECT count(*) FROM pg_tables WHERE tableowner = current_user")
        )
        tables = await session.scalar(
            text("SELECT count(*) FROM pg_tables WHERE tablename = 'oauth_tokens'")
        )
    assert tuple(me) == (roles.app.username, False, False)
    assert (owned, tables) == (0, 1)  # migrated, by someone else: the owner

    conn = await asyncpg.connect(asyncpg_dsn(roles.app))
    try:
        for statement in (
            "CREATE TABLE intruder (id int)",
            "ALTER TABLE oauth_tokens NO FORCE ROW LEVEL SECURITY",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        # A forced policy: with no tenant set, a tenant's token cannot be written.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(
                "INSERT INTO oauth_tokens (id, tenant_id, provider, account, access_token) "
                "VALUES ($1, $1, 'crm', 'x', 'x')",
                uuid.uuid4(),
            )
    finally:
        await conn.close()
