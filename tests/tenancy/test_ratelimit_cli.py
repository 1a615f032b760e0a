"""`pgstack ratelimit usage|exceeded|cleanup` against a real database."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import text
from typer.testing import CliRunner

from pgstack.cli import app as cli
from pgstack.db.database import Database
from pgstack.tenancy import RateLimiter

from .test_ratelimit import away_from_boundary

runner = CliRunner()


async def invoke(*args: Any, **kwargs: Any) -> Any:
    # The commands run their own event loop, so they run on a thread of their own here.
    return await asyncio.to_thread(runner.invoke, *args, **kwargs)


async def test_cli_shows_usage_and_exceeded_windows_and_cleans_up(
    pgstack_migrated_db: Database, cli_env: dict[str, str]
) -> None:
    # proves: N4
    limiter = RateLimiter(pgstack_migrated_db)
    await away_from_boundary(3600, margin=10)
    for _ in range(3):
        await limiter.hit("tenant:t9:search", "2/hour")
    usage = await invoke(cli, ["ratelimit", "usage", "tenant:t9:search", "--json"], env=cli_env)
    assert usage.exit_code == 0, usage.output
    [row] = json.loads(usage.output)
    assert (row["limit"], row["hits"], row["remaining"], row["refused"]) == ("2/hour", 2, 0, 1)
    assert row["usage_percent"] == 100.0
    table = await invoke(cli, ["ratelimit", "exceeded"], env=cli_env)
    assert table.exit_code == 0 and "tenant:t9:search" in table.output
    assert "1 window(s) refused requests" in table.output

    async with pgstack_migrated_db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO pgstack_rate_limits VALUES ('gone', 60, clock_timestamp() - "
                "interval '2 minutes', clock_timestamp() - interval '1 minute', 1, 5, 0, true)"
            )
        )
    cleaned = await invoke(cli, ["ratelimit", "cleanup", "--json"], env=cli_env)
    assert cleaned.exit_code == 0, cleaned.output
    assert json.loads(cleaned.output) == {"deleted": 1}
    assert [w.key for w in await limiter.usage("tenant:t9:search")] == ["tenant:t9:search"]


async def test_cli_refuses_a_malformed_key_in_one_line(cli_env: dict[str, str]) -> None:
    # proves: N4, O6
    result = await invoke(cli, ["ratelimit", "usage", "a\x01b"], env=cli_env)
    assert result.exit_code != 0
    assert "printable" in result.output and "Traceback" not in result.output
