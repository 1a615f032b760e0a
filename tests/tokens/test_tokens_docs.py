"""docs/tokens.md runs as written: its example prints what the page says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import URL

from pgstack.crypto import generate_key

DOC = Path(__file__).resolve().parents[2] / "docs" / "tokens.md"


def block(label: str) -> str:
    for body in re.findall(r"```\w+\n(.*?)```", DOC.read_text(), flags=re.S):
        if body.startswith(f"# {label}\n"):
            return body
    raise AssertionError(f"docs/tokens.md has no block labelled {label!r}")


def expected_output() -> str:
    match = re.search(r"Its output:\n\n```text\n(.*?)```", DOC.read_text(), flags=re.S)
    assert match is not None
    return match.group(1)


def test_the_example_runs_and_prints_what_the_page_says(
    pgstack_migrated_url: URL, tmp_path: Path
) -> None:
    # proves: T1, T2, T3, T4
    script = tmp_path / "example.py"
    script.write_text(block("example.py"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PGSTACK_"))}
    env["DATABASE_URL"] = pgstack_migrated_url.render_as_string(hide_password=False)
    env["PGSTACK_ENCRYPTION_KEYS"] = generate_key("2026a")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_output(), result.stdout + result.stderr
