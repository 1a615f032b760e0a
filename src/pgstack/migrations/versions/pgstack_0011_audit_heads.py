"""pgstack audit log: a chain's head kept for the transaction, written once at its end

Revision ID: pgstack_0011_audit_heads
Revises: pgstack_0010_append_search
Create Date: 2026-12-01

Before this revision every entry updated its chain's row in `audit_chain_heads`. In a
transaction that writes many entries to one chain (a bulk insert into an audited table)
each update left one more version of that row, which every later lookup had to step over:
the n-th entry cost O(n), a bulk write of 2,000 rows took a second and the next 2,000 two
and a half. Now the chain trigger keeps the head of the chain it last wrote in a
transaction-local setting (`pgstack.audit_head`: transaction id, chain, seq, hash, state)
and reads and writes `audit_chain_heads` only for the first entry of a chain in a
transaction; after that, a deferred constraint trigger writes the head once, when the
transaction commits (or as soon as the transaction moves on to another chain). The
advisory lock is taken for every entry, as before, and held to the end of the transaction,
so no other writer can move the head in between. A setting rolled back with a savepoint
goes back with the entries written under it.

The row trigger of audited tables computes its diff inside its INSERT (one statement
instead of a function call and a statement), and the actor index holds only entries that
have an actor (`actor_id = ...` never matches the others).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "pgstack_0011_audit_heads"
down_revision: str | Sequence[str] | None = "pgstack_0010_append_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The head this transaction has moved a chain to: "<xid> <chain> <seq> <hash> <state>",
# state `written` when audit_chain_heads holds it, `held` when only this setting does. The
# xid keeps a value from another transaction (a session-level SET) from being taken for ours.
# A chain's first entry in a transaction writes the head at once, as a one-entry transaction
# needs; its later entries only move the setting, and the last of them writes the head when
# the transaction commits (or moves on to another chain).
_CHAIN_FN = """
CREATE OR REPLACE FUNCTION pgstack_audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, {schema} AS $$
DECLARE
    chain_key text := coalesce(NEW.tenant_id::text, 'global');
    me text := pg_current_xact_id()::text;
    held text[] := string_to_array(current_setting('pgstack.audit_head', true), ' ');
    last_seq bigint;
    last_hash text;
    state text := 'held';
BEGIN
    PERFORM pg_advisory_xact_lock(1633772899, hashtext(chain_key));
    IF held[1] = me AND held[2] = chain_key THEN
        last_seq := held[3]::bigint;
        last_hash := held[4];
    ELSE
        IF held[1] = me AND held[5] = 'held' THEN
            -- Moving to another chain: the one held is written now, so that a later
            -- entry of it in this transaction reads it back from the table.
            UPDATE audit_chain_heads SET seq = held[3]::bigint, hash = held[4]
            WHERE chain = held[2];
        END IF;
        SELECT h.seq, h.hash INTO last_seq, last_hash
        FROM audit_chain_heads h WHERE h.chain = chain_key;
        state := 'written';
    END IF;
    NEW.seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, repeat('0', 64));
    NEW.hash := pgstack_audit_hash(NEW);
    IF state = 'written' THEN
        INSERT INTO audit_chain_heads (chain, seq, hash) VALUES (chain_key, NEW.seq, NEW.hash)
        ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash;
    END IF;
    PERFORM set_config('pgstack.audit_head',
                       concat_ws(' ', me, chain_key, NEW.seq::text, NEW.hash, state), true);
    RETURN NEW;
END
$$
"""

# Deferred to the commit, queued only for entries whose head is held (the trigger's WHEN):
# the one the transaction left as its chain's head writes it.
_FLUSH_FN = """
CREATE FUNCTION pgstack_audit_head_flush() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, {schema} AS $$
DECLARE
    held text[] := string_to_array(current_setting('pgstack.audit_head', true), ' ');
BEGIN
    IF held[5] = 'held' AND held[3] = NEW.seq::text
       AND held[2] = coalesce(NEW.tenant_id::text, 'global')
       AND held[1] = pg_current_xact_id()::text THEN
        UPDATE audit_chain_heads SET seq = NEW.seq, hash = NEW.hash WHERE chain = held[2];
        PERFORM set_config('pgstack.audit_head',
                           concat_ws(' ', held[1], held[2], held[3], held[4], 'written'), true);
    END IF;
    RETURN NULL;
END
$$
"""

# The previous chain function, for downgrade.
_OLD_CHAIN_FN = """
CREATE OR REPLACE FUNCTION pgstack_audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, {schema} AS $$
DECLARE
    chain_key text := coalesce(NEW.tenant_id::text, 'global');
    head record;
BEGIN
    PERFORM pg_advisory_xact_lock(1633772899, hashtext(chain_key));
    SELECT h.seq, h.hash INTO head FROM audit_chain_heads h WHERE h.chain = chain_key;
    NEW.seq := coalesce(head.seq, 0) + 1;
    NEW.prev_hash := coalesce(head.hash, repeat('0', 64));
    NEW.hash := pgstack_audit_hash(NEW);
    INSERT INTO audit_chain_heads (chain, seq, hash) VALUES (chain_key, NEW.seq, NEW.hash)
    ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash;
    RETURN NEW;
END
$$
"""

# One entry per row written. The diff (pgstack_audit_diff's, written out for each event) is
# part of the INSERT, so an entry is one statement; an update that changed nothing but
# ignored columns inserts no row. Arguments: key columns, secret columns, ignored columns.
_INSERT = """
        INSERT INTO {schema}.audit_log (tenant_id, actor_id, actor_type, action, category,
            resource_type, resource_id, ip, user_agent, request_id, changes)
        SELECT coalesce((subject ->> 'tenant_id')::uuid,
                        NULLIF(current_setting('pgstack.tenant_id', true), '')::uuid),
            ctx ->> 'actor_id', coalesce(ctx ->> 'actor_type', 'system'),
            TG_TABLE_NAME || '.' || lower(TG_OP), 'data', TG_TABLE_NAME, resource,
            ctx ->> 'ip', ctx ->> 'user_agent', ctx ->> 'request_id', d.diff
        FROM (SELECT {diff} AS diff) d{where};"""

_INSERT_DIFF = (
    "(SELECT jsonb_object_agg(n.key, CASE WHEN n.key = ANY(secret) THEN '\"changed\"'::jsonb "
    "ELSE jsonb_build_object('new', n.value) END) FROM jsonb_each(after) AS n "
    "WHERE n.value <> 'null'::jsonb AND n.key <> ALL(ignored))"
)
_DELETE_DIFF = (
    "(SELECT jsonb_object_agg(o.key, CASE WHEN o.key = ANY(secret) THEN '\"changed\"'::jsonb "
    "ELSE jsonb_build_object('old', o.value) END) FROM jsonb_each(before) AS o "
    "WHERE o.value <> 'null'::jsonb AND o.key <> ALL(ignored))"
)
_UPDATE_DIFF = (
    "(SELECT jsonb_object_agg(n.key, CASE WHEN n.key = ANY(secret) THEN '\"changed\"'::jsonb "
    "ELSE jsonb_build_object('old', before -> n.key, 'new', n.value) END) "
    "FROM jsonb_each(after) AS n "
    "WHERE n.key <> ALL(ignored) AND n.value IS DISTINCT FROM before -> n.key)"
)

_ROW_FN = """
CREATE OR REPLACE FUNCTION pgstack_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before jsonb;
    after jsonb;
    subject jsonb;
    resource text;
    secret text[] := coalesce(string_to_array(TG_ARGV[1], ','), '{{}}');
    ignored text[] := coalesce(string_to_array(TG_ARGV[2], ','), '{{}}');
    ctx jsonb := coalesce(NULLIF(current_setting('pgstack.audit_context', true), '')::jsonb,
                          '{{}}'::jsonb);
BEGIN
    IF TG_OP <> 'INSERT' THEN
        before := to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        after := to_jsonb(NEW);
    END IF;
    subject := coalesce(after, before);
    IF strpos(TG_ARGV[0], ',') = 0 THEN
        resource := subject ->> TG_ARGV[0];
    ELSE
        resource := {schema}.pgstack_audit_key(subject, string_to_array(TG_ARGV[0], ','));
    END IF;
    IF TG_OP = 'INSERT' THEN{insert}
    ELSIF TG_OP = 'DELETE' THEN{delete}
    ELSE{update}
    END IF;
    RETURN NULL;
END
$$
"""

# The previous row function (pgstack_0009's), for downgrade.
_OLD_ROW_FN = """
CREATE OR REPLACE FUNCTION pgstack_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
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


def _row_fn(schema: object) -> str:
    def insert(diff: str, where: str = "") -> str:
        return _INSERT.format(schema=schema, diff=diff, where=where)

    return _ROW_FN.format(
        schema=schema,
        insert=insert(_INSERT_DIFF),
        delete=insert(_DELETE_DIFF),
        update=insert(_UPDATE_DIFF, " WHERE d.diff IS NOT NULL"),
    )


def upgrade() -> None:
    schema = op.get_bind().exec_driver_sql("SELECT quote_ident(current_schema())").scalar()
    op.execute(_CHAIN_FN.format(schema=schema))
    op.execute(_FLUSH_FN.format(schema=schema))
    op.execute(
        "CREATE CONSTRAINT TRIGGER audit_log_head AFTER INSERT ON audit_log "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        "WHEN (split_part(current_setting('pgstack.audit_head', true), ' ', 5) = 'held') "
        "EXECUTE FUNCTION pgstack_audit_head_flush()"
    )
    op.execute(_row_fn(schema))
    op.execute("DROP INDEX ix_audit_log_actor")
    op.execute(
        "CREATE INDEX ix_audit_log_actor ON audit_log (tenant_id, actor_id, occurred_at DESC) "
        "WHERE actor_id IS NOT NULL"
    )


def downgrade() -> None:
    schema = op.get_bind().exec_driver_sql("SELECT quote_ident(current_schema())").scalar()
    op.execute("DROP INDEX ix_audit_log_actor")
    op.execute(
        "CREATE INDEX ix_audit_log_actor ON audit_log (tenant_id, actor_id, occurred_at DESC)"
    )
    op.execute(_OLD_ROW_FN.format(schema=schema))
    op.execute("DROP TRIGGER audit_log_head ON audit_log")
    op.execute("DROP FUNCTION pgstack_audit_head_flush()")
    op.execute(_OLD_CHAIN_FN.format(schema=schema))
