"""pgstack conversations and analytics: one-statement appends, a search configuration per entry

Revision ID: pgstack_0010_append_search
Revises: pgstack_0009_audit_speed
Create Date: 2026-12-01

`pgstack_conversation_append(...)` sets the tenant (and the audit context) for the rest of
its transaction, bumps the session's totals and inserts the message numbered by the new
total, returning the message. Called by itself, it is one round trip with no BEGIN, no
`set_config` and no COMMIT of its own around it. It runs as its caller (SECURITY INVOKER):
row-level security holds its statements as it holds the caller's, and a caller inside a
transaction already scoped to another tenant is refused rather than moved to this one.

`query_logs.text_search_config` (a `regconfig`: the one the writer names, per row or in the
transaction's `pgstack.text_search_config` setting, else `english`)
records the text search configuration of each entry; `search_vector` is generated with it,
so a log in French stems French words. Changing the generated column rewrites `query_logs`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "pgstack_0010_append_search"
down_revision: str | Sequence[str] | None = "pgstack_0009_audit_speed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PL/pgSQL rather than SQL: it keeps each statement's plan for the life of the connection
# (a multi-statement SQL function is planned again on every call before PostgreSQL 18).
_APPEND = """
CREATE FUNCTION pgstack_conversation_append(
    p_session uuid,
    p_user uuid,
    p_tenant uuid,
    p_role text,
    p_content text,
    p_tokens integer,
    p_tool_calls jsonb,
    p_idle interval,
    p_audit text
) RETURNS TABLE (
    session_id uuid,
    seq integer,
    role text,
    content text,
    tokens integer,
    tool_calls jsonb,
    created_at timestamptz
)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $fn$
#variable_conflict use_column
DECLARE
    scoped text := NULLIF(current_setting('pgstack.tenant_id', true), '');
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'pgstack_conversation_append needs a tenant'
            USING ERRCODE = '22004';
    END IF;
    IF scoped IS NOT NULL AND scoped <> p_tenant::text THEN
        -- Worded as row-level security's own refusal, which pgstack reports as such.
        RAISE EXCEPTION 'new row violates row-level security: this transaction is scoped '
            'to another tenant than the one pgstack_conversation_append was given'
            USING ERRCODE = '42501';
    END IF;
    PERFORM set_config('pgstack.tenant_id', p_tenant::text, true);
    IF p_audit IS NOT NULL THEN
        PERFORM set_config('pgstack.audit_context', p_audit, true);
    END IF;
    -- The session row's lock orders concurrent appends: its new message_count is this
    -- message's seq, so numbers run 1, 2, 3 ... with no gap and no duplicate.
    RETURN QUERY
    WITH bumped AS (
        UPDATE conversation_sessions AS s
        SET message_count = s.message_count + 1,
            token_count = s.token_count + p_tokens,
            last_activity_at = now(),
            expires_at = now() + p_idle
        WHERE s.id = p_session AND s.user_id = p_user AND s.tenant_id = p_tenant
          AND s.status = 'active' AND (s.expires_at IS NULL OR s.expires_at > now())
        RETURNING s.id, s.tenant_id, s.message_count
    )
    INSERT INTO conversation_messages AS m
        (session_id, tenant_id, seq, role, content, tokens, tool_calls)
    SELECT b.id, b.tenant_id, b.message_count, p_role, p_content, p_tokens, p_tool_calls
    FROM bumped AS b
    RETURNING m.session_id, m.seq, m.role, m.content, m.tokens, m.tool_calls, m.created_at;
END
$fn$
"""

_SIGNATURE = (
    "pgstack_conversation_append(uuid, uuid, uuid, text, text, integer, jsonb, interval, text)"
)


_VECTOR_INDEX = "ix_query_logs_search_vector"


def _search_vector(expression: str) -> None:
    op.add_column(
        "query_logs",
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed(expression, persisted=True),
            nullable=True,
        ),
    )
    op.create_index(_VECTOR_INDEX, "query_logs", ["search_vector"], postgresql_using="gin")


def upgrade() -> None:
    op.execute(_APPEND)
    op.add_column(
        "query_logs",
        sa.Column(
            "text_search_config",
            postgresql.REGCONFIG(),
            # The configuration a transaction names (QueryAnalytics.log_many), else english.
            server_default=sa.text(
                "(COALESCE(NULLIF(current_setting('pgstack.text_search_config', true), ''), "
                "'english'))::regconfig"
            ),
            nullable=False,
        ),
    )
    op.drop_index(_VECTOR_INDEX, table_name="query_logs")
    op.drop_column("query_logs", "search_vector")
    _search_vector("to_tsvector(text_search_config, query_text)")


def downgrade() -> None:
    op.drop_index(_VECTOR_INDEX, table_name="query_logs")
    op.drop_column("query_logs", "search_vector")
    op.drop_column("query_logs", "text_search_config")
    _search_vector("to_tsvector('english'::regconfig, query_text)")
    op.execute(f"DROP FUNCTION {_SIGNATURE}")
