"""docs/database.md's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from pgstack import Database

DOC = Path(__file__).parent.parent.parent / "docs" / "database.md"


async def test_database_doc_example_runs(pgstack_db: Database) -> None:
    # proves: C3
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    namespace: dict[str, object] = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    metadata = namespace["metadata"]
    async with pgstack_db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)  # type: ignore[attr-defined]
    count_visit, visits = namespace["count_visit"], namespace["visits"]
    assert await visits(pgstack_db, "/") is None  # type: ignore[operator]
    assert [await count_visit(pgstack_db, "/") for _ in range(3)] == [1, 2, 3]  # type: ignore[operator]
    assert await visits(pgstack_db, "/") == 3  # type: ignore[operator]
