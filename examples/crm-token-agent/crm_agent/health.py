"""The health check cron runs: database, and every stored token, as one exit code.

Exit codes follow the monitoring-plugin convention: 0 OK, 1 WARNING, 2 CRITICAL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgstack import Database, PgStackError
from pgstack.migrations import MigrationProject, migrations_check
from pgstack.tokens import TokenVault

PROJECT = Path(__file__).resolve().parents[1]

OK, WARNING, CRITICAL = 0, 1, 2
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}


@dataclass
class HealthResult:
    findings: list[tuple[int, str]] = field(default_factory=list)

    @property
    def code(self) -> int:
        return max((level for level, _ in self.findings), default=OK)

    def add(self, level: int, message: str) -> None:
        self.findings.append((level, message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": NAMES[self.code],
            "findings": [{"level": NAMES[lv], "message": msg} for lv, msg in self.findings],
        }


async def check(db: Database) -> HealthResult:
    """Connect, check the database and its migrations, then every token (no secret is read)."""
    result = HealthResult()
    db.health_checks.append(migrations_check(MigrationProject.from_pyproject(PROJECT)))
    try:
        if not db.is_connected:
            await db.connect()
        report = await db.health_check()
        for name, probe in report.checks.items():
            level = {"pass": OK, "warn": WARNING}.get(probe.status, CRITICAL)
            result.add(level, f"database {name}: {probe.status} {probe.output or ''}".rstrip())
        if result.code == CRITICAL:
            return result
        tokens = await TokenVault(db).list_tokens()
    except PgStackError as exc:
        result.add(CRITICAL, f"database: {exc}")
        return result
    if not tokens:
        result.add(WARNING, "no tokens stored: run import-legacy or connect a portal")
    for token in tokens:
        name = f"token {token.provider}/{token.account}"
        status = token.status()
        if status == "expired":
            result.add(
                CRITICAL, f"{name}: expired; is refresh-due running? {token.last_error or ''}"
            )
        elif token.refresh_failures:
            result.add(
                WARNING,
                f"{name}: {token.refresh_failures} failed refresh(es), last: {token.last_error}",
            )
        elif status == "expiring":
            result.add(WARNING, f"{name}: expires in {token.expires_in()} s")
        else:
            result.add(OK, f"{name}: {status}")
    return result
