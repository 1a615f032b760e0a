"""C9 live: a two-node Patroni cluster (one etcd) fails over under a steady write load through
`pgstack serve`, which follows the new primary without a restart.

Marked `ha` (slow: a cluster per case, and Patroni's ttl is at least 20 s). Run with
`pytest -m ha -n 0 -s tests/ha` to see the figures; CI runs it as a step of its own and
installs etcd when it is missing. Each case prints the window of 503 answers, acknowledged
writes lost, answers of 500, and the time until readiness passed again on the new primary.

The writes are sign-ups (`POST /v1/auth/register`: 202 once the account is committed); an
acknowledged one is lost when its account is missing on the new primary afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from cluster import free_port
from patroni_cluster import Node, PatroniCluster, missing

from pgstack.config import libpq_url
from pgstack.crypto import generate_key

pytestmark = pytest.mark.ha

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 4
BEFORE_S = 3.0  # steady load before the fault
SETTLED_S = 3.0  # every write succeeding this long after the fault ends the run
DEADLINE_S = 150.0
PASSWORD = "correct horse battery staple 4 failover"


@pytest.fixture(autouse=True)
def _tools() -> None:
    reason = missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Patroni test cannot run in CI: {reason}")
        pytest.skip(reason)


@contextmanager
def serve(cluster: PatroniCluster, log: Path) -> Iterator[str]:
    """`pgstack serve` on both nodes' URL (migrations applied at start); its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": libpq_url(cluster.url),
        "DATABASE_POOL_SIZE": "8",
        "DATABASE_POOL_TIMEOUT": "5",
        "DATABASE_CONNECT_TIMEOUT": "2",
        "DATABASE_STATEMENT_TIMEOUT_MS": "5000",
        "PGSTACK_ENCRYPTION_KEYS": generate_key("ha"),
        "PGSTACK_RATE_LIMIT_TIERS": '{"standard": "", "session": ""}',
    }
    env.pop("PGSTACK_ENV", None)
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from pgstack.cli import main; main()",
                "serve",
                "--port",
                f"{port}",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@dataclass
class Run:
    answers: list[tuple[float, int]] = field(default_factory=list)  # (at, status)
    acked: set[str] = field(default_factory=set)
    hung: int = 0
    ready: list[tuple[float, int, str | None]] = field(default_factory=list)  # at, status, host


async def load(base: str, cluster: PatroniCluster, fault: str) -> tuple[Run, float, Node, Node]:
    run = Run()
    stop = asyncio.Event()
    old = cluster.leader()

    async def writer(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            email = f"u{uuid.uuid4().hex[:16]}@example.com"
            try:
                answer = await client.post(
                    "/v1/auth/register", json={"email": email, "password": PASSWORD}
                )
            except httpx.TimeoutException:
                run.hung += 1
                continue
            run.answers.append((time.monotonic(), answer.status_code))
            if answer.status_code == 202:
                run.acked.add(email)
            elif answer.status_code >= 500:
                await asyncio.sleep(0.05)  # a client backing off a little

    async def prober(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                answer = await client.get("/ready")
                host = None
                if answer.status_code == 200:
                    check = answer.json()["checks"]["postgres:primary"][0]
                    host = check.get("observedValue")
                run.ready.append((time.monotonic(), answer.status_code, host))
            except httpx.HTTPError:
                run.ready.append((time.monotonic(), 0, None))
            await asyncio.sleep(0.2)

    async with httpx.AsyncClient(base_url=base, timeout=15) as client:
        tasks = [asyncio.create_task(writer(client)) for _ in range(WRITERS)]
        tasks.append(asyncio.create_task(prober(client)))
        await asyncio.sleep(BEFORE_S)
        fault_at = time.monotonic()
        await asyncio.to_thread(getattr(old, f"kill_{fault}"))
        if fault == "agent":
            # Its PostgreSQL runs on, unmanaged, and still takes writes; once the other node
            # holds the leader lock, the agent is started again (as a service manager would)
            # and demotes it to a replica of the new primary.
            other = cluster.other(old)
            await asyncio.to_thread(wait_until_leader, cluster, other)
            await asyncio.to_thread(old.start)
        while time.monotonic() - fault_at < DEADLINE_S:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            tail = [s for t, s in run.answers if t > now - SETTLED_S]
            recent_ready = [h for t, s, h in run.ready if t > now - 1.0 and s == 200]
            if (
                now - fault_at > SETTLED_S
                and tail
                and all(s == 202 for s in tail)
                and recent_ready
                and any(s != 202 for t, s in run.answers if t > fault_at)
            ):
                break
        stop.set()
        await asyncio.gather(*tasks)
    new = cluster.leader(within=30)
    return run, fault_at, old, new


def wait_until_leader(cluster: PatroniCluster, node: Node) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while cluster.leader(within=DEADLINE_S) is not node:
        assert time.monotonic() < deadline, f"{node.name} never became the leader"
        time.sleep(0.2)


async def stored(node: Node, emails: set[str]) -> set[str]:
    conn = await asyncpg.connect(libpq_url(node.url))
    try:
        rows = await conn.fetch("SELECT email::text AS email FROM users")
    finally:
        await conn.close()
    return {row["email"] for row in rows} & emails


@pytest.mark.parametrize(
    ("synchronous", "fault"),
    [(True, "postgres"), (True, "agent"), (True, "machine"), (False, "machine")],
    ids=["sync-postgres-killed", "sync-agent-killed", "sync-machine-lost", "async-machine-lost"],
)
async def test_pgstack_serve_follows_a_patroni_failover(
    synchronous: bool, fault: str, tmp_path: Path
) -> None:
    # proves: C9, R-F2
    with (
        PatroniCluster.start(synchronous=synchronous) as cluster,
        serve(cluster, tmp_path / "serve.log") as base,
    ):
        run, fault_at, old, new = await load(base, cluster, fault)
        lost = run.acked - await stored(new, run.acked)

    after = [(t, s) for t, s in run.answers if t >= fault_at]
    unavailable = [t for t, s in after if s == 503]
    window = (max(unavailable) - fault_at) if unavailable else 0.0
    statuses = [s for _, s in run.answers]
    failing = [t for t, s, _ in run.ready if t >= fault_at and s != 200]
    ready_again = next(
        (t - fault_at for t, s, h in run.ready if t >= fault_at and s == 200 and h == new.host
         and (not failing or t > max(failing))),
        None,
    )  # fmt: skip
    mode = "synchronous" if synchronous else "asynchronous"
    print(
        f"\nC9 Patroni [{mode}, {fault} killed on {old.name}]: primary {old.host} -> "
        f"{new.host}; {len(run.acked)} writes acknowledged, {len(lost)} lost; "
        f"{statuses.count(503)} answered 503 within {window:.1f} s of the fault; "
        f"{statuses.count(500)} answered 500; {run.hung} timed out (15 s); readiness passed "
        "again on the new primary "
        + (f"{ready_again:.1f} s after the fault" if ready_again is not None else "never")
    )
    assert statuses.count(500) == 0, sorted(set(statuses))
    assert set(statuses) <= {202, 503}, sorted(set(statuses))
    assert ready_again is not None, run.ready[-5:]
    assert [s for t, s in after][-3:] == [202] * 3
    if synchronous:
        assert not lost, sorted(lost)[:5]
