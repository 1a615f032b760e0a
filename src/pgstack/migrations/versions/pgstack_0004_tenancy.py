"""pgstack tenancy: tenants, memberships and invitations, tenant-bound API keys, per-tenant
external identities; usernames, profile fields and application-named providers for users

Revision ID: pgstack_0004_tenancy
Revises: pgstack_0003_tokens
Create Date: 2026-12-01

`tenants` and `tenant_memberships` carry no tenant_id row-level security: a request reads
them to learn which tenant it may act for, before a tenant is known. The provider CHECK on
`users` becomes a shape check, so applications can register provider names of their own.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "pgstack_0004_tenancy"
down_revision: str | Sequence[str] | None = "pgstack_0003_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("trialing", "active", "past_due", "cancelled", "suspended")
OLD_PROVIDERS = ("local", "azure_ad", "aws_cognito", "google", "github", "oidc")
PROVIDER_NAME = "^[a-z][a-z0-9_]{0,39}$"


def _tstz(name: str, nullable: bool = True, **kw: object) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, **kw)  # type: ignore[arg-type]


def _stamps() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        _tstz("created_at", False, server_default=sa.text("now()")),
        _tstz("updated_at", False, server_default=sa.text("now()")),
    ]


def _fk(table: str, column: str, target: str, ondelete: str = "CASCADE") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


# Tables a tenant is resolved from carry this comment: row-level security leaves them out
# on purpose (read before any tenant is set), and the doctor's RLS check skips them by it.
DIRECTORY = (
    "pgstack tenant directory: read before a tenant is known; the verbs filter rows by the caller"
)


def upgrade() -> None:
    op.add_column("users", sa.Column("username", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("avatar_url", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("bio", sa.Text(), nullable=True))
    op.create_index(
        "uq_users_username",
        "users",
        ["username"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.drop_constraint(op.f("ck_users_provider"), "users", type_="check")
    op.create_check_constraint(op.f("ck_users_provider"), "users", f"provider ~ '{PROVIDER_NAME}'")

    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("domain", sa.Text(), nullable=True),
        sa.Column("plan", sa.Text(), server_default="free", nullable=False),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        _tstz("trial_ends_at"),
        sa.Column(
            "settings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("locale", sa.Text(), server_default="en", nullable=False),
        sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False),
        *_stamps(),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")",
            name=op.f("ck_tenants_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("external_id", name=op.f("uq_tenants_external_id")),
    )

    op.create_table(
        "tenant_memberships",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("invited_email", sa.String(length=320), nullable=True),
        sa.Column("invite_token_hash", sa.Text(), nullable=True),
        _tstz("invite_expires_at"),
        sa.Column("invited_by", sa.Uuid(), nullable=True),
        _tstz("accepted_at"),
        *_stamps(),
        sa.CheckConstraint(
            "(user_id IS NOT NULL AND accepted_at IS NOT NULL) OR "
            "(user_id IS NULL AND accepted_at IS NULL AND invited_email IS NOT NULL)",
            name=op.f("ck_tenant_memberships_member_or_invitation"),
        ),
        _fk("tenant_memberships", "tenant_id", "tenants"),
        _fk("tenant_memberships", "user_id", "users"),
        _fk("tenant_memberships", "invited_by", "users", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_memberships")),
        sa.UniqueConstraint(
            "tenant_id", "user_id", name=op.f("uq_tenant_memberships_tenant_id_user_id")
        ),
        sa.UniqueConstraint(
            "invite_token_hash", name=op.f("uq_tenant_memberships_invite_token_hash")
        ),
    )
    op.create_index(op.f("ix_tenant_memberships_user_id"), "tenant_memberships", ["user_id"])
    op.create_index(op.f("ix_tenant_memberships_invited_by"), "tenant_memberships", ["invited_by"])
    op.create_index(
        "uq_tenant_memberships_invitation",
        "tenant_memberships",
        ["tenant_id", "invited_email"],
        unique=True,
        postgresql_where=sa.text("accepted_at IS NULL"),
    )

    op.create_table(
        "tenant_api_keys",
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        _fk("tenant_api_keys", "api_key_id", "api_keys"),
        _fk("tenant_api_keys", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("api_key_id", name=op.f("pk_tenant_api_keys")),
    )
    op.create_index(op.f("ix_tenant_api_keys_tenant_id"), "tenant_api_keys", ["tenant_id"])

    op.create_table(
        "external_identities",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("provider_user_id", sa.Text(), nullable=False),
        *_stamps(),
        _fk("external_identities", "tenant_id", "tenants"),
        _fk("external_identities", "user_id", "users"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_external_identities")),
        sa.UniqueConstraint(
            "tenant_id",
            "provider",
            "provider_user_id",
            name=op.f("uq_external_identities_tenant_id_provider_provider_user_id"),
        ),
        sa.UniqueConstraint(
            "tenant_id",
            "provider",
            "user_id",
            name=op.f("uq_external_identities_tenant_id_provider_user_id"),
        ),
    )
    op.create_index(op.f("ix_external_identities_user_id"), "external_identities", ["user_id"])
    for table in ("tenant_memberships", "tenant_api_keys", "external_identities"):
        op.create_table_comment(table, DIRECTORY)


def downgrade() -> None:
    op.drop_table("external_identities")
    op.drop_table("tenant_api_keys")
    op.drop_table("tenant_memberships")
    op.drop_table("tenants")
    # Users of providers the old list does not know cannot stay: the old CHECK would refuse
    # them. The downgrade refuses instead of deleting accounts.
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM users WHERE provider NOT IN ("
        + ", ".join(f"'{p}'" for p in OLD_PROVIDERS)
        + ")) THEN RAISE EXCEPTION 'users of providers unknown before pgstack_0004_tenancy "
        "exist (slack or application-registered): move or delete them before downgrading'; "
        "END IF; END $$"
    )
    op.drop_constraint(op.f("ck_users_provider"), "users", type_="check")
    op.create_check_constraint(
        op.f("ck_users_provider"),
        "users",
        "provider IN (" + ", ".join(f"'{p}'" for p in OLD_PROVIDERS) + ")",
    )
    op.drop_index(
        "uq_users_username", table_name="users", postgresql_where=sa.text("deleted_at IS NULL")
    )
    op.drop_column("users", "bio")
    op.drop_column("users", "avatar_url")
    op.drop_column("users", "username")
