"""What every command-line test shares: a clean environment and the one-line check."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")) and name != "PGSTACK_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env, no pyproject.toml


def one_line(output: str) -> None:
    """A failure is one line, never a traceback."""
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
