"""R-F1: the replica is killed (SIGKILL) under a read load served over HTTP.

Run with `pytest -m faults tests/db/test_replicas_faults.py -s` to see the figures.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from pydantic import SecretStr
from sqlalchemy import MetaData, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Repository
from pgstack.db.database import Database
from pgstack.db.replicas import read_your_writes_scope
from pgstack.orm import NAMING_CONVENTION, TYPE_ANNOTATION_MAP, ModelMixin, UUIDPrimaryKey
from pgstack.testing.plugin import settings_for
from pgstack.web import create_app
from pgstack.web.deps import SessionDep

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cluster import Cluster

pytestmark = pytest.mark.faults

READERS = 16
LOAD_S = 4.0
KILL_AT_S = 1.5


class FaultBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Item(UUIDPrimaryKey, FaultBase):
    __tablename__ = "fault_items"
    name: Mapped[str] = mapped_column(String(100))


class Items(Repository[Item]):
    model = Item


router = APIRouter()


@router.get("/items/{item_id}")
async def read_item(item_id: uuid.UUID, session: SessionDep) -> dict[str, object]:
    # A repository read (the fast path) and an ORM read in the same request.
    item = await Items(session).get(item_id)
    port = await session.scalar(select(func.inet_server_port()))
    return {"name": item.name, "port": port}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster.start(replicas=1) as started:
        yield started


async def test_a_replica_killed_under_read_load(cluster: Cluster) -> None:
    # proves: R-F1, C6
    primary, replica = cluster.primary, cluster.replicas[0]
    settings = settings_for(primary.url).model_copy(
        update={
            "database_replica_urls": [SecretStr(replica.url.render_as_string(hide_password=False))],
            "database_replica_check_interval_s": 0.2,
            "database_pool_size": READERS,
        }
    )
    item_id = uuid.uuid4()
    async with Database(settings) as db:
        with read_your_writes_scope():  # the setup's writes open no window for the readers
            async with db.transaction() as session:
                await session.run_sync(lambda s: FaultBase.metadata.create_all(s.connection()))
                session.add(Item(id=item_id, name="anvil"))
        await asyncio.sleep(0.5)  # let the replica replay the table
        app = create_app(database=db, monitor_interval=None, routers=[router])
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        started: dict[int, float] = {}
        failed: list[tuple[int, float, str]] = []
        served: list[tuple[float, int]] = []  # (finished at, port)
        killed_at = float("inf")
        in_flight_at_kill: set[int] = set()
        counter = iter(range(10**9))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
            app.router.lifespan_context(app),
        ):
            # Each request runs in a task of its own, as a server serves it: no request
            # inherits another's read-your-writes window.
            async def one() -> None:
                n = next(counter)
                started[n] = time.monotonic()
                try:
                    response = await client.get(f"/items/{item_id}")
                    if response.status_code != 200:
                        failed.append((n, started[n], f"{response.status_code} {response.text}"))
                    else:
                        served.append((time.monotonic(), response.json()["port"]))
                except Exception as exc:
                    failed.append((n, started[n], repr(exc)))
                finally:
                    del started[n]

            async def reader(until: float) -> None:
                while time.monotonic() < until:
                    await asyncio.create_task(one())

            begin = time.monotonic()
            readers = [asyncio.create_task(reader(begin + LOAD_S)) for _ in range(READERS)]
            await asyncio.sleep(KILL_AT_S)
            in_flight_at_kill = set(started)
            killed_at = time.monotonic()
            await asyncio.to_thread(replica.kill)
            await asyncio.gather(*readers)

    before = [port for at, port in served if at < killed_at]
    after = [(at, port) for at, port in served if at >= killed_at]
    on_primary = [at for at, port in after if port == primary.port]
    beyond = [f for f in failed if f[0] not in in_flight_at_kill]
    print(
        f"\nR-F1: {len(served) + len(failed)} requests by {READERS} readers over {LOAD_S:.0f} s; "
        f"before the kill {len(before)} served ({before.count(replica.port)} by the replica); "
        f"{len(in_flight_at_kill)} in flight at the kill; after it {len(after)} served "
        f"({len(on_primary)} by the primary, the first "
        f"{(min(on_primary) - killed_at) * 1000 if on_primary else float('nan'):.0f} ms "
        f"after the kill); failed: {len(failed)} ({len(failed) - len(beyond)} of them in "
        f"flight at the kill, {len(beyond)} beyond)"
    )
    for failure in failed[:5]:
        print("  failed:", failure[2][:200])
    assert before.count(replica.port) > 0, "the replica served nothing before the kill"
    assert len(on_primary) > 0, "the primary served nothing after the kill"
    assert beyond == [], f"requests failed that started after the kill: {beyond[:3]}"


async def test_a_stalled_replica_is_taken_out_and_put_back(cluster: Cluster) -> None:
    # proves: C6
    primary, replica = cluster.primary, cluster.replicas[0]
    settings = settings_for(primary.url).model_copy(
        update={
            "database_replica_urls": [SecretStr(replica.url.render_as_string(hide_password=False))],
            "database_replica_check_interval_s": 0.2,
        }
    )
    async with Database(settings) as db:
        assert db.replicas is not None
        node = db.replicas.nodes[0]
        port = select(func.inet_server_port())
        with read_your_writes_scope():
            assert await db.run(port) == [(replica.port,)]
        replica.pause()
        try:
            paused_at = time.monotonic()
            while node.healthy:
                assert time.monotonic() - paused_at < 10, "the stalled replica stayed in"
                await asyncio.sleep(0.05)
            taken_out = time.monotonic() - paused_at
            assert node.reason is not None and "probe failed (TimeoutError" in node.reason
            with read_your_writes_scope():
                # New reads do not wait for the stalled server: the primary answers at once.
                async with asyncio.timeout(5):
                    assert await db.run(port) == [(primary.port,)]
                    async with db.session(readonly=True) as session:
                        assert await session.scalar(port) == primary.port
        finally:
            replica.resume()
        while not node.healthy:
            assert time.monotonic() - paused_at < 30, "the resumed replica never came back"
            await asyncio.sleep(0.05)
        print(f"\nstalled replica out of rotation after {taken_out * 1000:.0f} ms")
        with read_your_writes_scope():
            assert await db.run(port) == [(replica.port,)]
