"""pgstack tenant row-level security: the token vault's rows belong to a tenant

Revision ID: pgstack_0005_tenant_rls
Revises: pgstack_0004_tenancy
Create Date: 2026-12-01

A token's `tenant_id` refers to its tenant (deleted with it) and is part of its unique key:
two workspaces may connect the same provider account. Both vault tables get row-level
security: a tenant's rows are visible and writable only with that tenant set in the
transaction, and the rows without a tenant (a service's own connections) only with none set.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgstack.tenancy.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "pgstack_0005_tenant_rls"
down_revision: str | Sequence[str] | None = "pgstack_0004_tenancy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("uq_oauth_tokens_provider_account", "oauth_tokens", type_="unique")
    op.drop_index("ix_oauth_tokens_tenant_id", table_name="oauth_tokens")
    # Leads with tenant_id: it is the tenant's index too.
    op.create_unique_constraint(
        "uq_oauth_tokens_tenant_id_provider_account",
        "oauth_tokens",
        ["tenant_id", "provider", "account"],
        postgresql_nulls_not_distinct=True,
    )
    op.create_foreign_key(
        "fk_oauth_tokens_tenant_id_tenants",
        "oauth_tokens",
        "tenants",
        ["tenant_id"],
        ["id"],
        ondelete="CASCADE",
    )

    op.add_column("token_refresh_audit", sa.Column("tenant_id", sa.Uuid(), nullable=True))
    op.execute(
        "UPDATE token_refresh_audit a SET tenant_id = t.tenant_id "
        "FROM oauth_tokens t WHERE t.id = a.token_id AND t.tenant_id IS NOT NULL"
    )
    op.drop_index("ix_token_refresh_audit_provider_account", table_name="token_refresh_audit")
    op.create_index(
        "ix_token_refresh_audit_tenant_id_provider_account",
        "token_refresh_audit",
        ["tenant_id", "provider", "account", "refreshed_at"],
    )
    op.create_foreign_key(
        "fk_token_refresh_audit_tenant_id_tenants",
        "token_refresh_audit",
        "tenants",
        ["tenant_id"],
        ["id"],
        ondelete="CASCADE",
    )

    for table in ("oauth_tokens", "token_refresh_audit"):
        enable_tenant_rls(op, table, allow_without_tenant=True)


def downgrade() -> None:
    for table in ("token_refresh_audit", "oauth_tokens"):
        disable_tenant_rls(op, table)

    op.drop_constraint(
        "fk_token_refresh_audit_tenant_id_tenants", "token_refresh_audit", type_="foreignkey"
    )
    op.drop_index(
        "ix_token_refresh_audit_tenant_id_provider_account", table_name="token_refresh_audit"
    )
    op.create_index(
        "ix_token_refresh_audit_provider_account",
        "token_refresh_audit",
        ["provider", "account", "refreshed_at"],
    )
    op.drop_column("token_refresh_audit", "tenant_id")

    op.drop_constraint("fk_oauth_tokens_tenant_id_tenants", "oauth_tokens", type_="foreignkey")
    # Fails while two tenants hold a token of the same provider and account: delete one first.
    op.drop_constraint("uq_oauth_tokens_tenant_id_provider_account", "oauth_tokens", type_="unique")
    op.create_index("ix_oauth_tokens_tenant_id", "oauth_tokens", ["tenant_id"])
    op.create_unique_constraint(
        "uq_oauth_tokens_provider_account", "oauth_tokens", ["provider", "account"]
    )
