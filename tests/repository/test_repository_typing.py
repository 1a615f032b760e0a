"""mypy --strict accepts code that uses Repository[M], and sees the model, not Any."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TYPED = Path(__file__).with_name("typed_usage.py")


def run_mypy(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_repository_verbs_return_the_model_type() -> None:
    # proves: R1
    result = run_mypy(TYPED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_when_a_type_is_wrong(tmp_path: Path) -> None:
    # proves: R1
    # The same check on a deliberately wrong expectation must fail, or it proves nothing.
    wrong = tmp_path / "typed_wrong.py"
    wrong.write_text(
        TYPED.read_text().replace(
            "assert_type(await repo.get(1), Invoice)", "assert_type(await repo.get(1), int)"
        )
    )
    result = run_mypy(wrong)
    assert result.returncode != 0
    assert 'Expression is of type "Invoice", not "int"' in result.stdout
