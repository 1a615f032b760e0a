"""pgstack audit log: row-level entry triggers, a cheaper hash, archive anchors

Revision ID: pgstack_0009_audit_speed
Revises: pgstack_0008_conversations
Create Date: 2026-12-01

Audited tables get row-level triggers (`pgstack_audit_row`) instead of statement triggers
with transition tables: a single-row write no longer pays for two tuplestores and an
INSERT ... SELECT planned per statement; `pgstack_audit_diff` is PL/pgSQL, so its plan is
kept. `pgstack_audit_hash` gives the same digests as
before, built by string concatenation instead of a jsonb set-returning aggregate (about five
times cheaper); every existing hash stays valid. `audit_anchors` keeps, per chain, the last
entry of each archived month, so that what remains after `pgstack audit archive` is still
checked from its first entry. Tables audited before this revision keep their statement
triggers until `enable_audit` is run for them again.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "pgstack_0009_audit_speed"
down_revision: str | Sequence[str] | None = "pgstack_0008_conversations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The canonical form is the jsonb text of the entry without its hashes and NULL fields
# (keys ordered as jsonb orders them: by length, then bytes), the time as UTC microseconds.
# Written out column by column; a column added later must be added here, in jsonb's key
# order, and to nothing else: `AuditLog.verify` builds the same text in Python.
_HASH_FN = """
CREATE OR REPLACE FUNCTION pgstack_audit_hash(e audit_log) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT encode(sha256(convert_to(e.prev_hash || '|{' || concat_ws(', ',
    '"id": ' || to_json(e.id::text)::text,
    '"ip": ' || to_json(e.ip)::text,
    '"seq": ' || e.seq::text,
    '"error": ' || to_json(e.error)::text,
    '"action": ' || to_json(e.action)::text,
    '"changes": ' || nullif(e.changes, 'null'::jsonb)::text,
    '"outcome": ' || to_json(e.outcome)::text,
    '"actor_id": ' || to_json(e.actor_id)::text,
    '"category": ' || to_json(e.category)::text,
    '"tenant_id": ' || to_json(e.tenant_id::text)::text,
    '"actor_type": ' || to_json(e.actor_type)::text,
    '"request_id": ' || to_json(e.request_id)::text,
    '"user_agent": ' || to_json(e.user_agent)::text,
    '"description": ' || to_json(e.description)::text,
    '"occurred_at": "'
        || to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"',
    '"resource_id": ' || to_json(e.resource_id)::text,
    '"request_data": ' || nullif(e.request_data, 'null'::jsonb)::text,
    '"resource_type": ' || to_json(e.resource_type)::text,
    '"response_data": ' || nullif(e.response_data, 'null'::jsonb)::text
) || '}', 'UTF8')), 'hex')
$$
"""

# The previous definition, for downgrade.
_OLD_HASH_FN = """
CREATE OR REPLACE FUNCTION pgstack_audit_hash(e audit_log) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT encode(sha256(convert_to(e.prev_hash || '|' || ((
    SELECT coalesce(jsonb_object_agg(j.key, j.value), '{}'::jsonb)
    FROM jsonb_each(to_jsonb(e)) AS j
    WHERE j.value <> 'null'::jsonb AND j.key NOT IN ('hash', 'prev_hash', 'occurred_at')
) || jsonb_build_object(
    'occurred_at', to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
))::text, 'UTF8')), 'hex')
$$
"""

# One entry per row written, from OLD and NEW. Arguments: key columns, secret columns,
# ignored columns (comma-separated). Names are schema-qualified, not found through the
# caller's search_path: a temporary table called audit_log must not swallow the entries.
_ROW_FN = """
CREATE FUNCTION pgstack_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before jsonb;
    after jsonb;
    subject jsonb;
    diff jsonb;
    ctx jsonb;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        before := to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        after := to_jsonb(NEW);
    END IF;
    diff := {schema}.pgstack_audit_diff(before, after,
        coalesce(string_to_array(TG_ARGV[1], ','), '{{}}'),
        coalesce(string_to_array(TG_ARGV[2], ','), '{{}}'));
    IF diff IS NULL AND TG_OP = 'UPDATE' THEN
        RETURN NULL;
    END IF;
    subject := coalesce(after, before);
    ctx := coalesce(NULLIF(current_setting('pgstack.audit_context', true), '')::jsonb,
                    '{{}}'::jsonb);
    INSERT INTO {schema}.audit_log (tenant_id, actor_id, actor_type, action, category,
        resource_type, resource_id, ip, user_agent, request_id, changes)
    VALUES (
        coalesce((subject ->> 'tenant_id')::uuid,
                 NULLIF(current_setting('pgstack.tenant_id', true), '')::uuid),
        ctx ->> 'actor_id', coalesce(ctx ->> 'actor_type', 'system'),
        TG_TABLE_NAME || '.' || lower(TG_OP), 'data', TG_TABLE_NAME,
        CASE WHEN strpos(TG_ARGV[0], ',') = 0 THEN subject ->> TG_ARGV[0]
             ELSE {schema}.pgstack_audit_key(subject, string_to_array(TG_ARGV[0], ',')) END,
        ctx ->> 'ip', ctx ->> 'user_agent', ctx ->> 'request_id', diff);
    RETURN NULL;
END
$$
"""

# Field-level changes, as pgstack_0007's SQL function computed them, in one jsonb pass:
# PL/pgSQL keeps the query's plan for the session, where a SQL function that cannot be
# inlined is planned again on every call (it was a third of an audited insert's cost).
_DIFF_FN = """
CREATE OR REPLACE FUNCTION pgstack_audit_diff(old jsonb, new jsonb, secret text[], ignored text[])
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF old IS NULL THEN
        RETURN (SELECT jsonb_object_agg(n.key, CASE WHEN n.key = ANY(secret)
                    THEN '"changed"'::jsonb ELSE jsonb_build_object('new', n.value) END)
                FROM jsonb_each(new) AS n
                WHERE n.value <> 'null'::jsonb AND n.key <> ALL(ignored));
    ELSIF new IS NULL THEN
        RETURN (SELECT jsonb_object_agg(o.key, CASE WHEN o.key = ANY(secret)
                    THEN '"changed"'::jsonb ELSE jsonb_build_object('old', o.value) END)
                FROM jsonb_each(old) AS o
                WHERE o.value <> 'null'::jsonb AND o.key <> ALL(ignored));
    END IF;
    RETURN (SELECT jsonb_object_agg(n.key, CASE WHEN n.key = ANY(secret)
                THEN '"changed"'::jsonb
                ELSE jsonb_build_object('old', old -> n.key, 'new', n.value) END)
            FROM jsonb_each(new) AS n
            WHERE n.key <> ALL(ignored) AND n.value IS DISTINCT FROM old -> n.key);
END
$$
"""

_OLD_DIFF_FN = """
CREATE OR REPLACE FUNCTION pgstack_audit_diff(old jsonb, new jsonb, secret text[], ignored text[])
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT jsonb_object_agg(k.key, CASE
    WHEN k.key = ANY(secret) THEN '"changed"'::jsonb
    WHEN old IS NULL THEN jsonb_build_object('new', new -> k.key)
    WHEN new IS NULL THEN jsonb_build_object('old', old -> k.key)
    ELSE jsonb_build_object('old', old -> k.key, 'new', new -> k.key) END)
FROM jsonb_object_keys(coalesce(new, old)) AS k(key)
WHERE k.key <> ALL(ignored)
  AND CASE WHEN old IS NULL THEN new -> k.key <> 'null'::jsonb
           WHEN new IS NULL THEN old -> k.key <> 'null'::jsonb
           ELSE old -> k.key IS DISTINCT FROM new -> k.key END
$$
"""

_ANCHORS = """
CREATE TABLE audit_anchors (
    chain text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    archived_from text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_audit_anchors PRIMARY KEY (chain, seq)
)
"""


def upgrade() -> None:
    schema = op.get_bind().exec_driver_sql("SELECT quote_ident(current_schema())").scalar()
    op.execute(_HASH_FN)
    op.execute(_DIFF_FN)
    op.execute(_ROW_FN.format(schema=schema))
    op.execute(_ANCHORS)
    op.execute(
        "CREATE TRIGGER audit_anchors_refuse BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON audit_anchors FOR EACH STATEMENT EXECUTE FUNCTION pgstack_audit_refuse()"
    )
    op.execute("SELECT pgstack_audit_seal('audit_anchors', 'SELECT')")
    op.execute(
        "COMMENT ON TABLE audit_anchors IS "
        "'pgstack audit: the last entry of each chain in each archived month'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_anchors")
    op.execute("DROP FUNCTION pgstack_audit_row()")
    op.execute(_OLD_HASH_FN)
    op.execute(_OLD_DIFF_FN)
