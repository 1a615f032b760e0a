"""High-availability tests: real servers of their own (tests/cluster.py), the fault app.

test_promotion.py runs in the default suite (two plain servers, one promoted);
test_patroni.py is marked `ha` (a Patroni cluster with etcd): `pytest -m ha -n 0 -s`.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS, TESTS / "faults", TESTS / "ha"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
