"""pgstack identity: users, API keys, single-use tokens, recovery codes, login sessions

Revision ID: pgstack_0002_identity
Revises: pgstack_0001
Create Date: 2026-11-25

Enumerations (provider, token purpose) are text with a CHECK constraint rather than
PostgreSQL ENUM types, so the downgrade has no type to clean up and adding a value later is a
constraint swap. Every table that belongs to a user goes with it (ON DELETE CASCADE).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "pgstack_0002_identity"
down_revision: str | Sequence[str] | None = "pgstack_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROVIDERS = ("local", "azure_ad", "aws_cognito", "google", "github", "oidc")
PURPOSES = ("password_reset", "email_verification")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _tstz(name: str, nullable: bool = True, **kw: object) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, **kw)  # type: ignore[arg-type]


def _text_array(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        name,
        postgresql.ARRAY(sa.Text()),
        server_default=sa.text("'{}'::text[]"),
        nullable=False,
    )


def _user_fk(table: str) -> list[object]:
    return [
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f(f"fk_{table}_user_id_users"), ondelete="CASCADE"
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("provider", sa.Text(), server_default="local", nullable=False),
        sa.Column("provider_user_id", sa.Text(), nullable=True),
        _text_array("roles"),
        _text_array("groups"),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        _tstz("email_verified_at"),
        _tstz("password_changed_at"),
        sa.Column(
            "two_factor_enabled", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("totp_secret", sa.Text(), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        _tstz("last_login_at"),
        sa.Column("login_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed_login_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _tstz("locked_until"),
        _tstz("created_at", False, server_default=sa.text("now()")),
        _tstz("updated_at", False, server_default=sa.text("now()")),
        _tstz("deleted_at"),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(_in("provider", PROVIDERS), name=op.f("ck_users_provider")),
        sa.CheckConstraint("login_count >= 0", name=op.f("ck_users_login_count")),
        sa.CheckConstraint("failed_login_count >= 0", name=op.f("ck_users_failed_login_count")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint(
            "provider", "provider_user_id", name=op.f("uq_users_provider_provider_user_id")
        ),
    )
    op.create_index(
        "uq_users_email",
        "users",
        ["email"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        *_user_fk("api_keys"),  # type: ignore[arg-type]
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        _text_array("scopes"),
        sa.Column("rate_limit_tier", sa.Text(), server_default="standard", nullable=False),
        _tstz("expires_at"),
        _tstz("last_used_at"),
        _tstz("revoked_at"),
        _tstz("created_at", False, server_default=sa.text("now()")),
        _tstz("updated_at", False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_index(op.f("ix_api_keys_user_id"), "api_keys", ["user_id"])

    op.create_table(
        "user_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        *_user_fk("user_tokens"),  # type: ignore[arg-type]
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        _tstz("expires_at", False),
        _tstz("used_at"),
        _tstz("created_at", False, server_default=sa.text("now()")),
        sa.CheckConstraint(_in("purpose", PURPOSES), name=op.f("ck_user_tokens_purpose")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_user_tokens_token_hash")),
    )
    op.create_index(op.f("ix_user_tokens_user_id"), "user_tokens", ["user_id"])

    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Uuid(), nullable=False),
        *_user_fk("recovery_codes"),  # type: ignore[arg-type]
        sa.Column("code_hash", sa.Text(), nullable=False),
        _tstz("used_at"),
        _tstz("created_at", False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_codes")),
    )
    op.create_index(op.f("ix_recovery_codes_user_id"), "recovery_codes", ["user_id"])

    op.create_table(
        "login_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        *_user_fk("login_sessions"),  # type: ignore[arg-type]
        sa.Column("token_hash", sa.Text(), nullable=False),
        _tstz("expires_at", False),
        _tstz("revoked_at"),
        _tstz("created_at", False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_login_sessions_token_hash")),
    )
    op.create_index(op.f("ix_login_sessions_user_id"), "login_sessions", ["user_id"])


def downgrade() -> None:
    for table in ("login_sessions", "recovery_codes", "user_tokens", "api_keys"):
        op.drop_index(op.f(f"ix_{table}_user_id"), table_name=table)
        op.drop_table(table)
    op.drop_index(
        "uq_users_email", table_name="users", postgresql_where=sa.text("deleted_at IS NULL")
    )
    op.drop_table("users")
