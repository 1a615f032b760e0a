"""Log records carry the request id, actor and tenant; the JSON switch writes them as JSON."""

from __future__ import annotations

import json
import logging
import uuid

from pgstack.audit.context import ContextFilter, JsonFormatter
from pgstack.orm.context import acting_as, request_context, tenant_context


def test_records_carry_the_context_as_json() -> None:
    # proves: C7
    tenant = uuid.uuid4()
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "saved %s", ("it",), None)
    context = request_context(request_id="req-9", ip="198.51.100.7")
    with context, acting_as("u-1"), tenant_context(tenant):
        assert ContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "saved it" and line["request_id"] == "req-9"
    assert line["actor_id"] == "u-1" and line["tenant_id"] == str(tenant)
    assert line["ip"] == "198.51.100.7" and line["level"] == "INFO"
    outside = logging.LogRecord("app", logging.INFO, __file__, 1, "idle", (), None)
    ContextFilter().filter(outside)
    assert "request_id" not in json.loads(JsonFormatter().format(outside))
