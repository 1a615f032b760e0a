"""docs/repository.md runs as written, on a database of its own."""

from __future__ import annotations

import ast
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL

from pgstack.db.admin import asyncpg_dsn

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "repository.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


@pytest.fixture
async def guide_database(pgstack_server_url: URL) -> AsyncIterator[URL]:
    """A fresh database, so the guide's plain table names collide with nothing."""
    name = f"pgstack_guide_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(asyncpg_dsn(pgstack_server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield pgstack_server_url.set(database=name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_guide_runs_as_written(
    guide_database: URL, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # proves: R1, R2, R3, R4, R5, R7, M1, M2, M3, M4
    monkeypatch.setenv("DATABASE_URL", guide_database.render_as_string(hide_password=False))
    monkeypatch.delenv("PGSTACK_ENCRYPTION_KEYS", raising=False)
    blocks = python_blocks()
    assert len(blocks) >= 15
    namespace: dict[str, object] = {"__name__": "guide"}
    for number, block in enumerate(blocks, start=1):
        # dont_inherit: the guide runs as a reader's script would, without this module's
        # `from __future__ import annotations`.
        code = compile(
            block,
            f"{GUIDE.name} block {number}",
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        result = eval(code, namespace)  # top-level await makes a coroutine
        if result is not None:
            await result
    printed = capsys.readouterr().out
    assert "Cannot filter Project by 'id; DROP TABLE projects'" in printed
    assert "404 Project" in printed and "403" in printed
    assert "['pk_projects', 'uq_projects_name']" in printed
