"""pgstack conversations and query analytics: sessions, their messages, the query log

Revision ID: pgstack_0008_conversations
Revises: pgstack_0007_audit
Create Date: 2026-12-01

Messages are rows keyed by (session_id, seq), not a growing document: appending one writes
one row and bumps the session's totals, whatever the length of the conversation. All three
tables belong to a tenant and get row-level security.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from pgstack.tenancy.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "pgstack_0008_conversations"
down_revision: str | Sequence[str] | None = "pgstack_0007_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = "status IN ('active', 'completed', 'failed', 'cancelled', 'expired')"
_ROLES = "role IN ('system', 'user', 'assistant', 'tool')"
_QUERY_STATUSES = "status IN ('success', 'error', 'timeout', 'cancelled')"
_TABLES = ("conversation_sessions", "conversation_messages", "query_logs")


def upgrade() -> None:
    now = sa.text("now()")
    empty = sa.text("'{}'::jsonb")
    op.create_table(
        "conversation_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
        sa.Column("context", postgresql.JSONB(), server_default=empty, nullable=False),
        sa.Column("metadata", postgresql.JSONB(), server_default=empty, nullable=False),
        sa.Column("message_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("token_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column(
            "last_activity_at", sa.DateTime(timezone=True), server_default=now, nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_STATUSES, name=op.f("ck_conversation_sessions_status_valid")),
        sa.CheckConstraint(
            "message_count >= 0 AND token_count >= 0",
            name=op.f("ck_conversation_sessions_totals_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_conversation_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_conversation_sessions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_sessions")),
    )
    op.create_index(
        "ix_conversation_sessions_user_id_tenant_id_last_activity_at",
        "conversation_sessions",
        ["user_id", "tenant_id", "last_activity_at"],
    )
    op.create_index(
        "ix_conversation_sessions_tenant_id_expires_at",
        "conversation_sessions",
        ["tenant_id", "expires_at"],
    )

    op.create_table(
        "conversation_messages",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tool_calls", postgresql.JSONB(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.CheckConstraint(_ROLES, name=op.f("ck_conversation_messages_role_valid")),
        sa.CheckConstraint(
            "seq > 0 AND tokens >= 0", name=op.f("ck_conversation_messages_seq_tokens_valid")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["conversation_sessions.id"],
            name=op.f("fk_conversation_messages_session_id_conversation_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "seq", name=op.f("pk_conversation_messages")),
    )

    op.create_table(
        "query_logs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("query_text", sa.Text(), nullable=False),
        sa.Column(
            "normalized_text",
            sa.Text(),
            sa.Computed(
                r"lower(btrim(regexp_replace(query_text, '\s+', ' ', 'g')))", persisted=True
            ),
            nullable=True,
        ),
        sa.Column("query_type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("response_time_ms", sa.Double(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed("to_tsvector('english'::regconfig, query_text)", persisted=True),
            nullable=True,
        ),
        sa.CheckConstraint(_QUERY_STATUSES, name=op.f("ck_query_logs_status_valid")),
        sa.CheckConstraint("response_time_ms >= 0", name=op.f("ck_query_logs_response_time_valid")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_query_logs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_query_logs_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_query_logs")),
    )
    op.create_index("ix_query_logs_tenant_id_created_at", "query_logs", ["tenant_id", "created_at"])
    op.create_index("ix_query_logs_user_id_created_at", "query_logs", ["user_id", "created_at"])
    op.create_index(
        "ix_query_logs_search_vector", "query_logs", ["search_vector"], postgresql_using="gin"
    )

    for table in _TABLES:
        enable_tenant_rls(op, table)


def downgrade() -> None:
    for table in reversed(_TABLES):
        disable_tenant_rls(op, table)
    op.drop_table("query_logs")
    op.drop_table("conversation_messages")
    op.drop_table("conversation_sessions")
