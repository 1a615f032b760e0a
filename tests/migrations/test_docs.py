"""docs/migrations.md runs as written: its files make a project, its commands run against it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrations.md"
BIN = Path(sys.executable).parent

READY = """
import asyncio

import httpx

from myapp.main import app


async def main() -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = (await client.get("/ready")).json()
    print("migrations:", body["checks"]["migrations"][0]["status"])


asyncio.run(main())
"""


def blocks() -> list[tuple[str, str]]:
    """(first-line label, body) of every fenced block that starts with `# label`."""
    found = []
    for body in re.findall(r"```\w+\n(.*?)```", DOC.read_text(), flags=re.S):
        first = body.splitlines()[0]
        if first.startswith("# "):
            found.append((first[2:].strip(), body))
    return found


@pytest.mark.slow
def test_the_walkthrough_runs(pgstack_empty_url: URL, tmp_path: Path) -> None:
    # proves: G2, G3, G4, G5, G6, C5
    project = tmp_path / "myapp-project"
    (project / "myapp").mkdir(parents=True)
    (project / "myapp" / "__init__.py").write_text("")
    files = {label: body for label, body in blocks()}
    for name in ("pyproject.toml", "myapp/models.py", "myapp/seeds.py", "myapp/main.py"):
        (project / name).write_text(files[name])
    (project / "status.py").write_text(files["status.py"])
    (project / "test_myapp.py").write_text(files["test_myapp.py"])
    (project / "test_pytest_alembic.py").write_text(files["test_pytest_alembic.py"])
    (project / "conftest.py").write_text(files["conftest.py"])

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    env["DATABASE_URL"] = pgstack_empty_url.render_as_string(hide_password=False)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"

    def sh(script: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=project,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )

    walk = sh(files["walkthrough"])
    assert walk.returncode == 0, walk.stdout + walk.stderr
    assert "models, migrations and database agree" in walk.stdout
    assert "notes: 1000 row(s) added" in walk.stdout
    assert "notes: 0 row(s) added" in walk.stdout
    assert "database validation: pass" in walk.stdout
    revisions = list((project / "migrations" / "versions").glob("*_create_notes.py"))
    assert len(revisions) == 1
    assert "branch_labels: str | Sequence[str] | None = ('myapp',)" in revisions[0].read_text()

    status = sh(f"{sys.executable} status.py")
    assert status.returncode == 0, status.stderr
    assert "at head: True" in status.stdout

    ready = sh(f"{sys.executable} -c {_quote(READY)}")
    assert ready.returncode == 0, ready.stderr
    assert "migrations: pass" in ready.stdout

    # The testing section's assertions, run as a user's suite would run them.
    data_dir = os.environ.get("PGSTACK_TEST_DATA_DIR", ".pgstack/test-pgdata")
    extra = {"PGSTACK_TEST_DATA_DIR": str(Path(data_dir).resolve())}
    if os.environ.get("PGSTACK_TEST_DATABASE_URL"):
        extra["PGSTACK_TEST_DATABASE_URL"] = os.environ["PGSTACK_TEST_DATABASE_URL"]
    suite = sh(
        f"{sys.executable} -m pytest -q -p no:cacheprovider -p no:pytest_alembic "
        "test_myapp.py test_pytest_alembic.py",
        **extra,
    )
    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert "7 passed" in suite.stdout


def _quote(script: str) -> str:
    return "'" + textwrap.dedent(script).replace("'", "'\\''") + "'"
