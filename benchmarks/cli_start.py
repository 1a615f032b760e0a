"""How long the `pgstack` command takes to answer `--help`, as a markdown table.

Run with `uv run python benchmarks/cli_start.py [--runs N]`. Each command runs as a new
process (what a person at a shell waits for); the table gives the median and the slowest of
the runs, and the modules a `--help` must not import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

PGSTACK = str(Path(sys.executable).with_name("pgstack"))
COMMANDS = (
    ["--help"],
    ["db", "--help"],
    ["db", "upgrade", "--help"],
    ["users", "list", "--help"],
    ["tokens", "--help"],
)
HEAVY = ("sqlalchemy", "fastapi", "alembic", "asyncpg", "uvicorn")
IMPORTED = (
    "import sys; import pgstack.cli.main; "
    f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')"
)


def _time(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)  # noqa: S603 - our own commands
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per command")
    runs = parser.parse_args().runs
    print("| command | median ms | slowest ms |")
    print("|---|---:|---:|")
    baseline = [_time([sys.executable, "-c", "pass"]) for _ in range(runs)]
    print(
        f"| python -c pass (interpreter start) | {statistics.median(baseline) * 1000:.0f} |"
        f" {max(baseline) * 1000:.0f} |"
    )
    for command in COMMANDS:
        times = [_time([PGSTACK, *command]) for _ in range(runs)]
        print(
            f"| pgstack {' '.join(command)} | {statistics.median(times) * 1000:.0f} |"
            f" {max(times) * 1000:.0f} |"
        )
    loaded = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", IMPORTED], check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"\nheavy modules imported by `import pgstack.cli.main`: {loaded}")


if __name__ == "__main__":
    main()
