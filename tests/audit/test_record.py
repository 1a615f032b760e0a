"""`AuditLog.record` without a session: one INSERT by itself, on the read lane or, with the
lane off, in a transaction of its own. Every test runs both ways."""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from pgstack import Database, Settings
from pgstack.audit import AuditLog
from pgstack.db.lane import ReadLane
from pgstack.db.replicas import wrote_within
from pgstack.orm.context import request_context, tenant_context

from .conftest import ACME, Roles


@pytest.fixture(params=["lane", "transaction"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Which way entries go; yields the lanes each audit INSERT was sent on (none: the lane off)."""
    sent: list[Any] = []
    if request.param == "transaction":
        monkeypatch.setattr(Database, "read_lane", property(lambda self: None))
        yield sent
        return
    original = ReadLane.run

    async def spy(self: ReadLane, plan: Any, *args: Any, **kwargs: Any) -> Any:
        if plan.sql.startswith("INSERT INTO audit_log"):
            sent.append(self)
        return await original(self, plan, *args, **kwargs)

    monkeypatch.setattr(ReadLane, "run", spy)
    yield sent


@pytest.mark.parametrize("tenant", [None, ACME], ids=["global", "tenant"])
async def test_twenty_concurrent_entries_make_one_unbroken_chain(
    app_db: Database, way: list[Any], tenant: uuid.UUID | None
) -> None:
    # proves: A2, N3
    # 20 writers of one chain at once, as the application role: the chain's lock orders them,
    # whether it is held for one statement (the lane) or a transaction.
    audit = AuditLog(app_db)
    before = (await audit.verify(tenant)).checked

    async def one(n: int) -> None:
        with request_context(request_id=f"req-{n}"):
            if tenant is None:
                await audit.record("load.entry", resource_id=n)
            else:
                with tenant_context(tenant):
                    await audit.record("load.entry", resource_id=n)

    await asyncio.gather(*(one(n) for n in range(20)))
    report = await audit.verify(tenant)
    assert report.ok, report
    assert report.checked == before + 20
    entries = (await audit.entries(tenant_id=tenant, action="load.entry", limit=100)).items
    assert sorted(e["resource_id"] for e in entries) == sorted(str(n) for n in range(20))
    assert {e["request_id"] for e in entries} == {f"req-{n}" for n in range(20)}
    assert {e["tenant_id"] for e in entries} == {tenant}
    assert len(way) in (0, 20)
    assert all(lane is app_db.read_lane for lane in way)
    assert way or app_db.read_lane is None  # the lane served every entry, or it was off


async def test_an_entry_is_written_on_the_primary_and_counts_as_the_tasks_write(
    roles: Roles, way: list[Any]
) -> None:
    # proves: C6, A1
    # With read replicas, an entry goes to the primary's lane (never a replica's), and like
    # any write of the task it sends the task's next reads to the primary (read-your-writes).
    settings: Settings = roles.settings()
    replica = SecretStr(roles.app.render_as_string(hide_password=False))
    settings = settings.model_copy(update={"database_replica_urls": [replica]})
    async with Database(settings) as db:
        assert db.replicas is not None
        audit = AuditLog(db)

        async def write() -> bool:
            await audit.record("replica.entry", resource_id="r1")
            return wrote_within(60)

        task = asyncio.create_task(write(), context=contextvars.Context())
        assert await task is True
        assert [lane is db.read_lane for lane in way] in ([], [True])
        assert way or db.read_lane is None
        assert (await audit.verify()).ok
