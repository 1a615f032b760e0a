"""pgstack.audit: an append-only, hash-chained audit log, partitioned by month.

Every module writes to it through `AuditLog.record` (or `record_event`); audited tables
write their own entries through database triggers (`enable_audit` in a migration).
"""

from pgstack.audit.models import audit_log
from pgstack.audit.service import (
    OUTCOMES,
    SECURITY,
    AuditLog,
    ChainReport,
    Cursor,
    EntryPage,
    Partition,
    archive,
    entry_values,
    maintain,
    partitions,
    redact,
)
from pgstack.audit.triggers import IGNORED, audit_options, audit_sql, disable_audit, enable_audit
from pgstack.orm.context import audit_context, current_request, request_context

__all__ = [
    "IGNORED",
    "OUTCOMES",
    "SECURITY",
    "AuditLog",
    "ChainReport",
    "Cursor",
    "EntryPage",
    "Partition",
    "archive",
    "audit_context",
    "audit_log",
    "audit_options",
    "audit_sql",
    "current_request",
    "disable_audit",
    "enable_audit",
    "entry_values",
    "maintain",
    "partitions",
    "redact",
    "request_context",
]
