"""Where work comes from, for audit entries and log records: one place, filled per request.

`request_context(...)` (the web middleware's) holds the request id, IP and user agent;
`acting_as` / the auth dependencies hold the actor; `tenant_context` the tenant. Log records
get the same fields through `ContextFilter`, and `JsonFormatter` writes them as JSON lines
(`LOG_JSON=true`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from pgstack.orm.context import audit_context, current_tenant

_FIELDS = ("request_id", "actor_id", "actor_type", "tenant_id", "ip", "user_agent")


class ContextFilter(logging.Filter):
    """Put the request id, actor, tenant and IP of the current work on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = audit_context()
        tenant = current_tenant()
        if tenant is not None:
            values["tenant_id"] = str(tenant)
        for field in _FIELDS:
            setattr(record, field, values.get(field))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(*, level: int = logging.INFO, as_json: bool = False) -> None:
    """Log to stderr with the context fields on each record; as JSON lines with `as_json`."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(levelname)s:     %(message)s [request %(request_id)s]")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
