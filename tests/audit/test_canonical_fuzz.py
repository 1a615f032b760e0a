"""The canonical form `verify` builds in Python matches what the database hashed, for any
text and any JSON an entry may hold (hypothesis). Slow: behind the `fuzz` marker."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgstack.audit.service import _COLUMNS_SQL, _select_list, entry_hash
from pgstack.db.admin import asyncpg_dsn
from pgstack.testing.templates import run_async

from .conftest import Roles

pytestmark = pytest.mark.fuzz

# What PostgreSQL text can hold: any character but NUL and lone surrogates.
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
ENTRY = st.fixed_dictionaries(
    {"action": TEXT.filter(bool), "description": st.none() | TEXT, "request_data": JSON}
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=st.lists(ENTRY, min_size=1, max_size=8))
def test_python_canonical_form_matches_the_database(
    roles: Roles, entries: list[dict[str, Any]]
) -> None:
    # proves: A2
    async def check() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(roles.app))
        try:
            ids = []
            for entry in entries:
                ids.append(
                    await conn.fetchval(
                        "INSERT INTO audit_log (action, description, request_data) "
                        "VALUES ($1, $2, $3::jsonb) RETURNING id",
                        entry["action"],
                        entry["description"],
                        json.dumps(entry["request_data"]),
                    )
                )
            types = {r["name"]: r["type"] for r in await conn.fetch(str(_COLUMNS_SQL))}
            rows = await conn.fetch(
                f"SELECT {_select_list(types)} FROM audit_log e WHERE e.id = ANY($1::uuid[])",
                ids,
            )
            assert len(rows) == len(entries)
            for row in rows:
                assert row["hash"] == entry_hash(dict(row), types), dict(row)
        finally:
            await conn.close()

    run_async(check)
