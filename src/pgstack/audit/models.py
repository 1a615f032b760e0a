"""The audit log's table as pgstack reads and writes it (created by `pgstack_0007_audit`).

The table is partitioned by month and guarded by triggers that the migration makes, so it
lives on a MetaData of its own: model comparison (`pgstack db check`) does not try to
re-create what only SQL can express. `seq`, `prev_hash` and `hash` are set by the database.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, Table, Text, Uuid, func
from sqlalchemy.dialects.postgresql import JSONB

from pgstack.orm.types import UTCDateTime

metadata = MetaData()

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Uuid(as_uuid=True), primary_key=True),
    Column("occurred_at", UTCDateTime(), primary_key=True, server_default=func.now()),
    Column("seq", BigInteger),
    Column("tenant_id", Uuid(as_uuid=True)),
    Column("actor_id", Text),
    Column("actor_type", Text),
    Column("action", Text),
    Column("category", Text),
    Column("resource_type", Text),
    Column("resource_id", Text),
    Column("description", Text),
    Column("ip", Text),
    Column("user_agent", Text),
    Column("request_id", Text),
    Column("outcome", Text),
    Column("error", Text),
    Column("request_data", JSONB),
    Column("response_data", JSONB),
    Column("changes", JSONB),
    Column("prev_hash", Text),
    Column("hash", Text),
)

#: The columns an entry shows, in order.
COLUMNS = tuple(c.name for c in audit_log.columns)

#: What the application role may do on the audit tables (their migrations grant it, and
#: `pgstack db init` keeps it so when re-run); on the monthly partitions, nothing.
APP_RIGHTS = {
    "audit_log": "SELECT, INSERT",
    "audit_chain_heads": "SELECT",
    "audit_anchors": "SELECT",
}
#: The names of the monthly partitions, attached or detached.
PARTITION_PATTERN = "^audit_log_y[0-9]{4}m[0-9]{2}$"
