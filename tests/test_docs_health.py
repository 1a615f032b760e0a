"""docs/health.md's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from pgstack import Database

DOC = Path(__file__).parent.parent / "docs" / "health.md"


async def test_health_doc_example_runs(pgstack_db: Database, capsys: object) -> None:
    # proves: C5
    block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    namespace: dict[str, object] = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    await namespace["probe"](pgstack_db)  # type: ignore[operator]
    report = await pgstack_db.health_check()
    assert report.checks["replication_ok"].status == "pass"
