"""Fault fixtures: a primary of the test's own, and a PgBouncer before it (fault_harness.py).

Every test module here is marked `faults` (slow: servers are created, restarted, killed,
paused); run them with `pytest -m faults tests/faults`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_harness import PgBouncer, Primary


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root, the servers run as another account, which must
    # reach the folder (and a Unix socket path must stay short).
    path = Path(tempfile.mkdtemp(prefix="pgstack-faults-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def primary(base: Path) -> Iterator[Primary]:
    server = Primary(base)
    server.create()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pgbouncer(base: Path, primary: Primary) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(base, primary.port, user=primary.system_user)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture(params=["direct", "pgbouncer"])
def route(request: pytest.FixtureRequest, primary: Primary) -> tuple[str, URL, dict[str, Any]]:
    """How the app reaches the primary: directly, or through PgBouncer in transaction mode."""
    if request.param == "direct":
        return "direct", primary.url, {}
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    return "pgbouncer", bouncer.url, {"database_pooler": "pgbouncer-transaction"}
