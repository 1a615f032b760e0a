"""R-F2: the primary restarted (fast, immediate, and killed with SIGKILL) under a write load:
every acknowledged write survives, only 503 answers while it is away (never 500), and the
service is ready again by itself, without a restart of its own."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, Literal

import httpx
import pytest
from fault_app import create_rows_table, served, settings, stored_ids
from fault_harness import Primary
from sqlalchemy.engine import URL

pytestmark = pytest.mark.faults

WRITERS = 6
RECOVERY_DEADLINE_S = 20.0
HEALTHY_TAIL_S = 1.0


@pytest.mark.parametrize("mode", ["fast", "immediate", "kill"])
async def test_writes_survive_a_primary_restart_and_only_503_answer_meanwhile(
    primary: Primary,
    route: tuple[str, URL, dict[str, Any]],
    mode: Literal["fast", "immediate", "kill"],
) -> None:
    # proves: R-F2, C2, C8
    name, url, extra = route
    await create_rows_table(primary.url)
    ids = itertools.count(1)
    answers: list[tuple[float, int]] = []
    acked: set[int] = set()
    stop = asyncio.Event()

    async def writer(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            row = next(ids)
            answer = await client.post(f"/rows/{row}")
            answers.append((time.monotonic(), answer.status_code))
            if answer.status_code == 201:
                acked.add(row)
            elif answer.status_code == 503:
                await asyncio.sleep(0.02)  # a client backing off a little

    async with served(settings(url, **extra)) as client:
        writers = [asyncio.create_task(writer(client)) for _ in range(WRITERS)]
        await asyncio.sleep(1.0)
        restart_began = time.monotonic()
        await asyncio.to_thread(primary.restart, mode)
        restarted = time.monotonic()
        # Run on until the writes have succeeded for a while, or give up.
        while time.monotonic() - restarted < RECOVERY_DEADLINE_S:
            await asyncio.sleep(0.2)
            tail = [s for t, s in answers if t > time.monotonic() - HEALTHY_TAIL_S]
            if tail and all(s == 201 for s in tail) and time.monotonic() - restarted > 1:
                break
        stop.set()
        await asyncio.gather(*writers)
        ready = await client.get("/ready")

    statuses = [s for _, s in answers]
    failed = [(t, s) for t, s in answers if s != 201]
    stored = await stored_ids(primary.url)
    lost = acked - stored
    first_ok_after = min((t for t, s in answers if s == 201 and t > restarted), default=None)
    window = (failed[-1][0] - failed[0][0]) * 1000 if failed else 0.0
    print(
        f"\nR-F2 [{name}, {mode}]: {len(acked)} writes acknowledged, {len(lost)} lost; "
        f"{statuses.count(503)} answered 503, {statuses.count(500)} answered 500; errors "
        f"within {window:.0f} ms; restart took {(restarted - restart_began) * 1000:.0f} ms, "
        "first write after it succeeded "
        + (f"{(first_ok_after - restarted) * 1000:.0f} ms later" if first_ok_after else "never")
    )
    assert set(statuses) <= {201, 503}, sorted(set(statuses))
    assert not lost, f"acknowledged writes missing after the restart: {sorted(lost)[:10]}"
    assert first_ok_after is not None, "the service did not take writes again by itself"
    tail = [s for t, s in answers if t > answers[-1][0] - HEALTHY_TAIL_S]
    assert all(s == 201 for s in tail), tail
    assert ready.status_code == 200, ready.text
