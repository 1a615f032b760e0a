"""pgstack audit log: append-only, hash-chained per tenant, partitioned by month

Revision ID: pgstack_0007_audit
Revises: pgstack_0006_rate_limits
Create Date: 2026-12-01

`audit_log` is partitioned by month on `occurred_at`. The database refuses UPDATE, DELETE
and TRUNCATE on it and on every partition (row and statement triggers), and only the owner
keeps more than INSERT and SELECT. A BEFORE INSERT trigger chains each entry to the previous
entry of its chain (its tenant, or the global chain): under a transaction-scoped advisory
lock it takes the chain's head from `audit_chain_heads`, numbers the entry and stores
sha256(previous hash | canonical form). `pgstack_audit_partition(month)` makes a month's
partition with the same refusals, grants and row-level security; this month and the next
are made here, later ones by `pgstack audit maintain`.
"""

from collections.abc import Sequence

from alembic import op

from pgstack.tenancy.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "pgstack_0007_audit"
down_revision: str | Sequence[str] | None = "pgstack_0006_rate_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = """
CREATE TABLE audit_log (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    seq bigint NOT NULL,
    tenant_id uuid,
    actor_id text,
    actor_type text NOT NULL DEFAULT 'system',
    action text NOT NULL,
    category text NOT NULL DEFAULT 'data',
    resource_type text,
    resource_id text,
    description text,
    ip text,
    user_agent text,
    request_id text,
    outcome text NOT NULL DEFAULT 'success',
    error text,
    request_data jsonb,
    response_data jsonb,
    changes jsonb,
    prev_hash text NOT NULL,
    hash text NOT NULL,
    CONSTRAINT pk_audit_log PRIMARY KEY (occurred_at, id),
    CONSTRAINT ck_audit_log_outcome CHECK (outcome IN ('success', 'failure', 'partial')),
    CONSTRAINT ck_audit_log_category CHECK (category ~ '^[a-z][a-z0-9_.:-]{0,62}$')
) PARTITION BY RANGE (occurred_at)
"""

_INDEXES = [
    "CREATE INDEX ix_audit_log_chain ON audit_log (tenant_id, seq)",
    "CREATE INDEX ix_audit_log_recent ON audit_log (tenant_id, occurred_at DESC, id DESC)",
    "CREATE INDEX ix_audit_log_resource ON audit_log "
    "(tenant_id, resource_type, resource_id, occurred_at DESC)",
    "CREATE INDEX ix_audit_log_actor ON audit_log (tenant_id, actor_id, occurred_at DESC)",
    "CREATE INDEX ix_audit_log_category ON audit_log (tenant_id, category, occurred_at DESC)",
    "CREATE INDEX ix_audit_log_failures ON audit_log (tenant_id, occurred_at DESC) "
    "WHERE outcome <> 'success'",
]

_HEADS = """
CREATE TABLE audit_chain_heads (
    chain text NOT NULL CONSTRAINT pk_audit_chain_heads PRIMARY KEY,
    seq bigint NOT NULL,
    hash text NOT NULL
)
"""

# The canonical form: the entry as a JSON object without its hashes and without NULL fields
# (so a column added later leaves old hashes valid), the time as UTC microseconds text (so
# the session's TimeZone does not change it). jsonb's text form is deterministic.
_HASH_FN = """
CREATE FUNCTION pgstack_audit_hash(e audit_log) RETURNS text
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

# SECURITY DEFINER: the application role may not write the heads; search_path is pinned.
_CHAIN_FN = """
CREATE FUNCTION pgstack_audit_chain() RETURNS trigger
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

_REFUSE_FN = """
CREATE FUNCTION pgstack_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit entries are never changed; old months are detached by '
                     '`pgstack audit archive`.';
END
$$
"""

# Every role but the owner keeps, of the rights it holds on `rel`, only those in `keep`
# (default privileges grant more); it is never given one it did not hold: a role that could
# only read must not come out able to INSERT entries the chain would take as genuine. On
# partitions, nothing: they are reached through audit_log only.
_SEAL_FN = """
CREATE FUNCTION pgstack_audit_seal(rel regclass, keep text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, {schema} AS $$
DECLARE
    who record;
    kept text[] := string_to_array(upper(replace(keep, ' ', '')), ',');
    back text;
BEGIN
    FOR who IN
        SELECT r.rolname, array_agg(DISTINCT a.privilege_type) AS held
        FROM pg_class c, aclexplode(c.relacl) a
        JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = rel AND a.grantee <> c.relowner
        GROUP BY r.rolname
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %I', rel, who.rolname);
        SELECT string_agg(p, ', ' ORDER BY p) INTO back
        FROM unnest(who.held) AS p WHERE p = ANY(kept);
        IF back IS NOT NULL THEN
            EXECUTE format('GRANT %s ON %s TO %I', back, rel, who.rolname);
        END IF;
    END LOOP;
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', rel);
END
$$
"""

# One month's partition: refusals per statement (row triggers are cloned from the parent),
# row-level security like the parent's, no rights for anyone but the owner.
_PARTITION_FN = """
CREATE FUNCTION pgstack_audit_partition(month date) RETURNS text
LANGUAGE plpgsql SET search_path = {schema}, pg_catalog AS $$
DECLARE
    first date := date_trunc('month', month::timestamp)::date;
    name text := format('audit_log_y%sm%s', to_char(first, 'YYYY'), to_char(first, 'MM'));
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
        name, first::timestamp AT TIME ZONE 'UTC',
        (first + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    EXECUTE format('CREATE TRIGGER audit_log_refuse_statement BEFORE UPDATE OR DELETE '
                   'OR TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION '
                   'pgstack_audit_refuse()', name);
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', name);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', name);
    EXECUTE format('CREATE POLICY pgstack_tenant_isolation ON %I USING (%s) WITH CHECK (%s)',
                   name, {check}, {check});
    PERFORM pgstack_audit_seal(name::regclass, '');
    RETURN name;
END
$$
"""

_KEY_FN = """
CREATE FUNCTION pgstack_audit_key(j jsonb, cols text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT string_agg(j ->> u.c, ',' ORDER BY u.o) FROM unnest(cols) WITH ORDINALITY AS u(c, o)
$$
"""

# Field-level changes: {"column": {"old": ..., "new": ...}}; secret columns only "changed";
# ignored columns (updated_at, ...) left out; NULL when nothing changed.
_DIFF_FN = """
CREATE FUNCTION pgstack_audit_diff(old jsonb, new jsonb, secret text[], ignored text[])
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

# The statement trigger of audited tables (pgstack.audit.enable_audit): one entry per row
# written, from the transition tables, so every path is covered (ORM, COPY, upserts, raw
# SQL). Arguments: key columns, secret columns, ignored columns (comma-separated).
_CHANGES_FN = """
CREATE FUNCTION pgstack_audit_changes() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, {schema} AS $$
DECLARE
    keys text[] := string_to_array(TG_ARGV[0], ',');
    secret text[] := coalesce(string_to_array(TG_ARGV[1], ','), '{{}}');
    ignored text[] := coalesce(string_to_array(TG_ARGV[2], ','), '{{}}');
    ctx jsonb := coalesce(NULLIF(current_setting('pgstack.audit_context', true), '')::jsonb,
                          '{{}}'::jsonb);
    tenant uuid := NULLIF(current_setting('pgstack.tenant_id', true), '')::uuid;
BEGIN
    -- Each branch names only the transition tables its event has.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audit_log (tenant_id, actor_id, actor_type, action, category,
            resource_type, resource_id, ip, user_agent, request_id, changes)
        SELECT coalesce((c.row ->> 'tenant_id')::uuid, tenant), ctx ->> 'actor_id',
               coalesce(ctx ->> 'actor_type', 'system'), TG_TABLE_NAME || '.' || lower(TG_OP),
               'data', TG_TABLE_NAME, pgstack_audit_key(c.row, keys), ctx ->> 'ip',
               ctx ->> 'user_agent', ctx ->> 'request_id', c.diff
        FROM (
            SELECT n.j AS row, pgstack_audit_diff(NULL, n.j, secret, ignored) AS diff
            FROM (SELECT to_jsonb(x) AS j FROM pgstack_new x) n
        ) c;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audit_log (tenant_id, actor_id, actor_type, action, category,
            resource_type, resource_id, ip, user_agent, request_id, changes)
        SELECT coalesce((c.row ->> 'tenant_id')::uuid, tenant), ctx ->> 'actor_id',
               coalesce(ctx ->> 'actor_type', 'system'), TG_TABLE_NAME || '.' || lower(TG_OP),
               'data', TG_TABLE_NAME, pgstack_audit_key(c.row, keys), ctx ->> 'ip',
               ctx ->> 'user_agent', ctx ->> 'request_id', c.diff
        FROM (
            SELECT o.j AS row, pgstack_audit_diff(o.j, NULL, secret, ignored) AS diff
            FROM (SELECT to_jsonb(x) AS j FROM pgstack_old x) o
        ) c;
    ELSE
        INSERT INTO audit_log (tenant_id, actor_id, actor_type, action, category,
            resource_type, resource_id, ip, user_agent, request_id, changes)
        SELECT coalesce((c.row ->> 'tenant_id')::uuid, tenant), ctx ->> 'actor_id',
               coalesce(ctx ->> 'actor_type', 'system'), TG_TABLE_NAME || '.' || lower(TG_OP),
               'data', TG_TABLE_NAME, pgstack_audit_key(c.row, keys), ctx ->> 'ip',
               ctx ->> 'user_agent', ctx ->> 'request_id', c.diff
        FROM (
            SELECT n.j AS row, pgstack_audit_diff(o.j, n.j, secret, ignored) AS diff
            FROM (SELECT to_jsonb(x) AS j FROM pgstack_old x) o
            JOIN (SELECT to_jsonb(x) AS j FROM pgstack_new x) n
              ON pgstack_audit_key(o.j, keys) = pgstack_audit_key(n.j, keys)
        ) c
        WHERE c.diff IS NOT NULL;
    END IF;
    RETURN NULL;
END
$$
"""

_CHECK = (
    "'tenant_id IS NOT DISTINCT FROM "
    "(SELECT NULLIF(current_setting(''pgstack.tenant_id'', true), '''')::uuid)'"
)


def upgrade() -> None:
    schema = op.get_bind().exec_driver_sql("SELECT quote_ident(current_schema())").scalar()
    op.execute(_TABLE)
    for index in _INDEXES:
        op.execute(index)
    op.execute(_HEADS)
    op.execute(_HASH_FN)
    op.execute(_CHAIN_FN.format(schema=schema))
    op.execute(_REFUSE_FN)
    op.execute(_SEAL_FN.format(schema=schema))
    op.execute(_KEY_FN)
    op.execute(_DIFF_FN)
    op.execute(_CHANGES_FN.format(schema=schema))
    op.execute(_PARTITION_FN.format(schema=schema, check=_CHECK))
    op.execute(
        "CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION pgstack_audit_chain()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_refuse BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION pgstack_audit_refuse()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_refuse_statement BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION pgstack_audit_refuse()"
    )
    op.execute(
        "CREATE TRIGGER audit_chain_heads_refuse BEFORE DELETE OR TRUNCATE "
        "ON audit_chain_heads FOR EACH STATEMENT EXECUTE FUNCTION pgstack_audit_refuse()"
    )
    # Rows of no tenant (sign-ins, the service's own events) are the global chain.
    enable_tenant_rls(op, "audit_log", allow_without_tenant=True)
    op.execute("SELECT pgstack_audit_seal('audit_log', 'SELECT, INSERT')")
    op.execute("SELECT pgstack_audit_seal('audit_chain_heads', 'SELECT')")
    op.execute(
        "COMMENT ON TABLE audit_chain_heads IS 'pgstack audit: the last entry of each chain'"
    )
    op.execute("SELECT pgstack_audit_partition(current_date)")
    op.execute("SELECT pgstack_audit_partition((current_date + interval '1 month')::date)")


def downgrade() -> None:
    disable_tenant_rls(op, "audit_log")
    op.execute("DROP TABLE audit_log CASCADE")
    op.execute("DROP TABLE audit_chain_heads")
    for fn in (
        "pgstack_audit_partition(date)",
        "pgstack_audit_seal(regclass, text)",
        "pgstack_audit_refuse()",
        "pgstack_audit_chain()",
        "pgstack_audit_changes() CASCADE",
        "pgstack_audit_diff(jsonb, jsonb, text[], text[])",
        "pgstack_audit_key(jsonb, text[])",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {fn}")
