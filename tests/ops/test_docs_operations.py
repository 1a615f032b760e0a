"""docs/operations.md's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from pgstack.db.database import Database

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


async def test_operations_doc_example_runs(service: Database) -> None:
    # proves: O1, O3
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    namespace: dict[str, object] = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    level, lint = await namespace["health_tour"](service)  # type: ignore[operator]
    assert level in ("warn", "error")  # the test servers have no statement_timeout
    assert lint == ["index.not-concurrent"]
