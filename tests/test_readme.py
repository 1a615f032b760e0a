"""The README's examples do what the README says (tests/docs runs every block as written)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def raw(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def test_fastapi_example_serves_requests(
    pgstack_database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: W1
    monkeypatch.setenv("DATABASE_URL", raw(pgstack_database_url))
    namespace: dict[str, object] = {}
    exec(compile(python_blocks()[0], "README.md", "exec"), namespace)
    app = namespace["app"]
    async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            now = await client.get("/now")
            assert now.status_code == 200 and now.json()["now"]
            saved = await client.post("/notes", params={"body": "hello"})
            assert saved.json() == {"saved": "hello"}
            assert (await client.get("/ready")).json()["status"] == "pass"


def test_repository_example_runs(pgstack_database_url: URL) -> None:
    # proves: R1, R3
    # A subprocess: the example's model joins pgstack.orm.Base, which must stay clean here.
    driver = """
import asyncio
from pgstack import Database, Settings

async def main() -> None:
    async with Database(Settings()) as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(Project.metadata.create_all, tables=[Project.__table__])
        await example(db)
        async with db.session() as session:
            projects = Projects(session)
            assert await projects.count() == 0
            assert await projects.count(include_deleted=True) == 1
            print("renamed:", (await projects.list(include_deleted=True))[0].name)
        async with db.engine.begin() as conn:
            await conn.run_sync(Project.metadata.drop_all, tables=[Project.__table__])

asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env["DATABASE_URL"] = raw(pgstack_database_url)
    result = subprocess.run(
        [sys.executable, "-c", python_blocks()[2] + driver],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "renamed: Apollo 11" in result.stdout
