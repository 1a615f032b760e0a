"""pgstack's pytest plugin: a real PostgreSQL for every test run.

Enable it with `pytest_plugins = ["pgstack.testing.plugin"]` in your `conftest.py`.
Fixtures: `pgstack_server_url`, `pgstack_database_url`, `pgstack_settings`, `pgstack_db`,
and per test a migrated database cloned from a template: `pgstack_migrated_url`,
`pgstack_migrated_settings`, `pgstack_migrated_db`, `pgstack_session`.
"""

from pgstack.testing.assertions import (
    assert_migrations_roundtrip,
    assert_no_drift,
    schema_snapshot,
)
from pgstack.testing.queries import assert_max_queries, record_statements

__all__ = [
    "assert_max_queries",
    "assert_migrations_roundtrip",
    "assert_no_drift",
    "record_statements",
    "schema_snapshot",
]
