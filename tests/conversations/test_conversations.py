"""Sessions and messages as their users and their rivals meet them, against PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from pgstack.config import Settings
from pgstack.conversations import Conversations
from pgstack.db.database import Database
from pgstack.db.replicas import read_your_writes_scope, wrote_within
from pgstack.errors import ConflictError, InvalidInputError, NotFoundError, TenantScopeError
from pgstack.orm import tenant_context
from pgstack.orm.context import request_context, set_actor
from pgstack.testing import assert_max_queries, record_statements

from .conftest import People


async def test_sixteen_tasks_appending_fifty_each_number_one_to_eight_hundred(
    people: People, conversations: Conversations
) -> None:
    # proves: V1
    with tenant_context(people.a.id):
        chat = await conversations.start(people.ada.id, "bot")

        async def writer(n: int) -> list[int]:
            seqs = []
            for i in range(50):
                message = await conversations.append(
                    chat.id, people.ada.id, "user", f"{n}-{i}", tokens=n + 1
                )
                seqs.append(message.seq)
            return seqs

        results = await asyncio.gather(*(writer(n) for n in range(16)))
        seqs = sorted(s for r in results for s in r)
        assert seqs == list(range(1, 801))
        for r in results:
            assert r == sorted(r)  # one writer's messages keep their order
        session = await conversations.get(chat.id, people.ada.id)
        assert session.message_count == 800
        assert session.token_count == sum(50 * (n + 1) for n in range(16))
        stored = []
        before = None
        while True:
            page = await conversations.history(chat.id, people.ada.id, before_seq=before, limit=500)
            stored = page.messages + stored
            if page.next_before is None:
                break
            before = page.next_before
        assert [m.seq for m in stored] == list(range(1, 801))
        assert sum(m.tokens for m in stored) == session.token_count
        # each writer's 50 messages are all there, in its order
        for n in range(16):
            mine = [m.content for m in stored if m.content.startswith(f"{n}-")]
            assert mine == [f"{n}-{i}" for i in range(50)]


async def test_message_ten_thousand_sends_the_statements_of_message_ten(
    people: People, conversations: Conversations, pgstack_migrated_db: Database
) -> None:
    # proves: V1
    db = pgstack_migrated_db
    with tenant_context(people.a.id):
        chat = await conversations.start(people.ada.id, "bot")
        for _ in range(9):
            await conversations.append(chat.id, people.ada.id, "user", "x", tokens=1)
        with record_statements(db) as tenth, read_your_writes_scope():
            await conversations.append(chat.id, people.ada.id, "assistant", "ten", tokens=1)
            assert wrote_within(60)  # the reads that follow go to the primary, not a replica
        # one statement: the function that sets the tenant, bumps the totals and inserts;
        # nothing around it sets the tenant a second time
        assert len(tenth) == 1 and "pgstack_conversation_append" in tenth[0]
        assert "set_config" not in tenth[0]
        # 9,989 more rows in one statement, then the totals they stand for
        await db.run(
            text(
                "INSERT INTO conversation_messages (session_id, tenant_id, seq, role, content) "
                "SELECT :id, :tenant, g, 'user', 'filler' FROM generate_series(11, 9999) g"
            ),
            {"id": chat.id, "tenant": people.a.id},
        )
        await db.run(
            text("UPDATE conversation_sessions SET message_count = 9999 WHERE id = :id"),
            {"id": chat.id},
        )
        with assert_max_queries(db, len(tenth)) as ten_thousandth:
            message = await conversations.append(chat.id, people.ada.id, "assistant", "10k")
        assert message.seq == 10_000
        assert [" ".join(s.split()) for s in ten_thousandth] == [" ".join(s.split()) for s in tenth]
        page = await conversations.history(chat.id, people.ada.id, limit=3)
        assert [m.seq for m in page.messages] == [9998, 9999, 10_000]
        assert page.next_before == 9998
        with assert_max_queries(db, 1):  # a page deep in the history is one read as well
            older = await conversations.history(chat.id, people.ada.id, before_seq=11, limit=5)
        assert [m.content for m in older.messages] == ["x"] * 4 + ["ten"]


async def test_keyset_pages_walk_back_and_forward(
    people: People, conversations: Conversations
) -> None:
    # proves: V1
    with tenant_context(people.a.id):
        chat = await conversations.start(people.ada.id, "bot")
        for i in range(1, 8):
            await conversations.append(chat.id, people.ada.id, "user", f"m{i}")
        first = await conversations.history(chat.id, people.ada.id, limit=3)
        assert [m.seq for m in first.messages] == [5, 6, 7]
        second = await conversations.history(
            chat.id, people.ada.id, before_seq=first.next_before, limit=3
        )
        assert [m.seq for m in second.messages] == [2, 3, 4]
        last = await conversations.history(
            chat.id, people.ada.id, before_seq=second.next_before, limit=3
        )
        assert [m.content for m in last.messages] == ["m1"]
        assert last.next_before is None
        forward = await conversations.history(chat.id, people.ada.id, after_seq=5, limit=10)
        assert [m.seq for m in forward.messages] == [6, 7]
        assert (await conversations.history(chat.id, people.ada.id, before_seq=1)).messages == []


@pytest.mark.parametrize("closing", ["complete", "fail", "cancel"])
async def test_a_closed_session_refuses_messages_and_further_moves(
    people: People, conversations: Conversations, closing: str
) -> None:
    # proves: V1
    with tenant_context(people.a.id):
        chat = await conversations.start(people.ada.id, "bot")
        await conversations.append(chat.id, people.ada.id, "user", "hi", tokens=2)
        closed = await getattr(conversations, closing)(chat.id, people.ada.id)
        assert closed.status == {"complete": "completed", "fail": "failed"}.get(
            closing, "cancelled"
        )
        assert closed.ended_at is not None
        with pytest.raises(ConflictError, match="takes no new messages"):
            await conversations.append(chat.id, people.ada.id, "user", "again", tokens=5)
        for to in ("completed", "failed", "cancelled"):
            with pytest.raises(ConflictError, match="only an active session"):
                await conversations.set_status(chat.id, people.ada.id, to)
        for to in ("active", "expired", "paused"):
            with pytest.raises(InvalidInputError):
                await conversations.set_status(chat.id, people.ada.id, to)
        after = await conversations.get(chat.id, people.ada.id)
        assert (after.status, after.message_count, after.token_count) == (closed.status, 1, 2)


async def test_closing_races_appends_and_totals_stay_exact(
    people: People, conversations: Conversations
) -> None:
    # proves: V1
    with tenant_context(people.a.id):
        chat = await conversations.start(people.ada.id, "bot")

        async def append(i: int) -> int | None:
            try:
                return (await conversations.append(chat.id, people.ada.id, "user", str(i))).seq
            except ConflictError:
                return None

        async def close() -> None:
            await asyncio.sleep(0.01)
            await conversations.complete(chat.id, people.ada.id)

        results = await asyncio.gather(*(append(i) for i in range(40)), close())
        seqs = sorted(s for s in results[:-1] if s is not None)
        assert seqs == list(range(1, len(seqs) + 1))
        final = await conversations.get(chat.id, people.ada.id)
        assert final.status == "completed"
        assert final.message_count == len(seqs)
        page = await conversations.history(chat.id, people.ada.id, limit=500)
        assert [m.seq for m in page.messages] == seqs


async def test_context_and_metadata_merge_in_the_database_under_concurrency(
    people: People, conversations: Conversations
) -> None:
    # proves: V1
    with tenant_context(people.a.id):
        chat = await conversations.start(
            people.ada.id, "bot", context={"keep": 1, "drop": 2}, metadata={"m": 0}
        )
        await asyncio.gather(
            *(
                conversations.update(chat.id, people.ada.id, context={f"k{i}": i})
                for i in range(20)
            ),
            conversations.update(chat.id, people.ada.id, metadata={"source": "slack"}),
            conversations.update(chat.id, people.ada.id, remove_context=["drop"]),
        )
        merged = await conversations.get(chat.id, people.ada.id)
        assert merged.context == {"keep": 1, **{f"k{i}": i for i in range(20)}}
        assert merged.metadata == {"m": 0, "source": "slack"}
        titled = await conversations.update(chat.id, people.ada.id, title="Refund")
        assert titled.title == "Refund" and titled.context == merged.context
        cleared = await conversations.update(chat.id, people.ada.id, set_title=True)
        assert cleared.title is None
        with pytest.raises(InvalidInputError, match="JSON object"):
            await conversations.update(chat.id, people.ada.id, context=[1, 2])  # type: ignore[arg-type]


async def test_sessions_are_the_owners_only_and_the_tenants_only(
    people: People, conversations: Conversations
) -> None:
    # proves: V1, N3
    with tenant_context(people.a.id):
        chat = await conversations.start(people.ada.id, "bot", title="private")
        await conversations.append(chat.id, people.ada.id, "user", "secret")
        # bob is in the same tenant, but the session is not his
        for attempt in (
            conversations.get(chat.id, people.bob.id),
            conversations.append(chat.id, people.bob.id, "user", "hijack"),
            conversations.history(chat.id, people.bob.id),
            conversations.update(chat.id, people.bob.id, title="mine"),
            conversations.complete(chat.id, people.bob.id),
            conversations.delete(chat.id, people.bob.id),
        ):
            with pytest.raises(NotFoundError):
                await attempt
        assert await conversations.list(people.bob.id) == []
    # ada herself, from another tenant's context, does not see it either
    with tenant_context(people.b.id):
        with pytest.raises(NotFoundError):
            await conversations.append(chat.id, people.ada.id, "user", "cross")
        assert await conversations.list(people.ada.id) == []
    with pytest.raises(TenantScopeError):
        await conversations.get(chat.id, people.ada.id)
    with tenant_context(people.a.id):
        again = await conversations.get(chat.id, people.ada.id)
        assert (again.message_count, again.title) == (1, "private")


async def test_start_is_idempotent_with_an_id_and_refuses_a_taken_one(
    people: People, conversations: Conversations
) -> None:
    # proves: V1
    chosen = uuid.uuid4()
    with tenant_context(people.a.id):
        first, second = await asyncio.gather(
            conversations.start(people.ada.id, "bot", session_id=chosen, title="one"),
            conversations.start(people.ada.id, "bot", session_id=chosen, title="two"),
        )
        assert first.id == second.id == chosen
        assert first.title == second.title
        assert len(await conversations.list(people.ada.id)) == 1
        with pytest.raises(ConflictError, match="taken"):
            await conversations.start(people.bob.id, "bot", session_id=chosen)
        with pytest.raises(InvalidInputError):
            await conversations.start(people.ada.id, "  ")


async def test_list_newest_activity_first_and_by_status(
    people: People, conversations: Conversations
) -> None:
    # proves: V1
    with tenant_context(people.a.id):
        old = await conversations.start(people.ada.id, "bot", title="old")
        new = await conversations.start(people.ada.id, "bot", title="new")
        await conversations.append(old.id, people.ada.id, "user", "bump")
        assert [s.title for s in await conversations.list(people.ada.id)] == ["old", "new"]
        await conversations.cancel(new.id, people.ada.id)
        assert [s.id for s in await conversations.list(people.ada.id, status="active")] == [old.id]
        assert [s.id for s in await conversations.list(people.ada.id, status="cancelled")] == [
            new.id
        ]
        with pytest.raises(InvalidInputError):
            await conversations.list(people.ada.id, status="nope")
        with pytest.raises(InvalidInputError):
            await conversations.list(people.ada.id, limit=0)


async def test_bad_messages_are_refused_before_the_database(
    people: People, conversations: Conversations
) -> None:
    # proves: V1
    with tenant_context(people.a.id):
        chat = await conversations.start(people.ada.id, "bot")
        with pytest.raises(InvalidInputError, match="role"):
            await conversations.append(chat.id, people.ada.id, "robot", "x")
        with pytest.raises(InvalidInputError, match="tokens"):
            await conversations.append(chat.id, people.ada.id, "user", "x", tokens=-1)
        with pytest.raises(NotFoundError):
            await conversations.append(uuid.uuid4(), people.ada.id, "user", "x")
        # content of any size and shape is stored as given
        odd = "\x01 ' ; DROP TABLE conversation_messages; -- ünïcode " * 50
        message = await conversations.append(
            chat.id, people.ada.id, "tool", odd, tool_calls={"name": "search", "args": [1, None]}
        )
        page = await conversations.history(chat.id, people.ada.id)
        assert page.messages[-1].content == odd
        assert page.messages[-1].tool_calls == {"name": "search", "args": [1, None]}
        assert message.seq == 1


async def test_deleting_a_user_or_a_session_takes_its_messages(
    people: People, conversations: Conversations, pgstack_migrated_db: Database
) -> None:
    # proves: V1
    db = pgstack_migrated_db
    with tenant_context(people.a.id):
        chat = await conversations.start(people.bob.id, "bot")
        other = await conversations.start(people.ada.id, "bot")
        for c, u in ((chat, people.bob), (other, people.ada)):
            await conversations.append(c.id, u.id, "user", "x")
        await conversations.delete(other.id, people.ada.id)
    count = text("SELECT count(*) FROM conversation_messages WHERE session_id = :id")
    assert (await db.run(count, {"id": other.id}))[0][0] == 0
    await db.run(text("DELETE FROM users WHERE id = :id"), {"id": people.bob.id})
    assert (await db.run(count, {"id": chat.id}))[0][0] == 0


async def test_two_sweepers_expire_each_idle_session_once(
    people: People, pgstack_migrated_db: Database
) -> None:
    # proves: V1
    db = pgstack_migrated_db
    quick = Conversations(db, idle_timeout=timedelta(minutes=5))
    with tenant_context(people.a.id):
        live = await quick.start(people.ada.id, "bot")
        idle = [(await quick.start(people.ada.id, "bot")).id for _ in range(60)]
    with tenant_context(people.b.id):
        idle += [(await quick.start(people.cy.id, "bot")).id for _ in range(40)]
    await db.run(
        text(
            "UPDATE conversation_sessions SET expires_at = now() - interval '1 minute' "
            "WHERE id = ANY(:ids)"
        ),
        {"ids": idle},
    )
    first, second = await asyncio.gather(quick.expire(batch_size=7), quick.expire(batch_size=7))
    assert first + second == 100
    assert await quick.expire() == 0
    rows = await db.run(
        text("SELECT status, count(*) FROM conversation_sessions GROUP BY status ORDER BY 1")
    )
    assert rows == [("active", 1), ("expired", 100)]
    with tenant_context(people.a.id):
        assert (await quick.get(live.id, people.ada.id)).status == "active"
        with pytest.raises(ConflictError, match="expired"):
            await quick.append(idle[0], people.ada.id, "user", "late")


async def test_a_session_past_its_expiry_refuses_messages_before_the_sweep(
    people: People, pgstack_migrated_db: Database
) -> None:
    # proves: V1
    db = pgstack_migrated_db
    quick = Conversations(db, idle_timeout=timedelta(minutes=5))
    forever = Conversations(db, idle_timeout=None)
    with tenant_context(people.a.id):
        chat = await quick.start(people.ada.id, "bot")
        kept = await forever.start(people.ada.id, "bot")
        assert kept.expires_at is None and chat.expires_at is not None
        await forever.append(kept.id, people.ada.id, "user", "x")
        await db.run(
            text("UPDATE conversation_sessions SET expires_at = now() WHERE id = :id"),
            {"id": chat.id},
        )
        with pytest.raises(ConflictError, match="is expired"):
            await quick.append(chat.id, people.ada.id, "user", "late")
        assert await forever.expire() == 1
        assert (await forever.get(kept.id, people.ada.id)).status == "active"
    with pytest.raises(InvalidInputError):
        Conversations(db, idle_timeout=timedelta(0))


async def test_an_append_carries_the_tenant_and_who_acts_into_the_database(
    people: People, conversations: Conversations, pgstack_migrated_db: Database
) -> None:
    # proves: V1, N3
    db = pgstack_migrated_db
    # What an audit trigger on the messages would read while the append's INSERT runs.
    for ddl in (
        "CREATE TABLE seen (tenant text, context text)",
        "CREATE FUNCTION note_context() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO seen VALUES (current_setting('pgstack.tenant_id', true), "
        "current_setting('pgstack.audit_context', true)); RETURN NEW; END $$",
        "CREATE TRIGGER note AFTER INSERT ON conversation_messages "
        "FOR EACH ROW EXECUTE FUNCTION note_context()",
    ):
        await db.run(text(ddl))

    async def as_ada_in_a_request() -> None:
        with tenant_context(people.a.id), request_context(request_id="req-15"):
            set_actor(people.ada.id)
            chat = await conversations.start(people.ada.id, "bot")
            await conversations.append(chat.id, people.ada.id, "user", "hello")

    await asyncio.create_task(as_ada_in_a_request())
    with tenant_context(people.b.id):
        other = await conversations.start(people.cy.id, "bot")
        await conversations.append(other.id, people.cy.id, "user", "no request")
    rows = await db.run(text("SELECT tenant, context FROM seen"))
    assert rows[0][0] == str(people.a.id)
    assert json.loads(rows[0][1]) == {
        "request_id": "req-15",
        "actor_id": str(people.ada.id),
        "actor_type": "user",
    }
    assert rows[1][0] == str(people.b.id)
    assert rows[1][1] in (None, "")


async def test_the_append_function_refuses_a_transaction_scoped_to_another_tenant(
    people: People, conversations: Conversations, pgstack_migrated_db: Database
) -> None:
    # proves: V1, N3
    db = pgstack_migrated_db
    with tenant_context(people.a.id):
        chat = await conversations.start(people.ada.id, "bot")
    call = text(
        "SELECT seq FROM pgstack_conversation_append(:id, :user, :tenant, 'user', 'x', 1, "
        "NULL, NULL, NULL)"
    )
    # A transaction of tenant B that names tenant A in the call: refused, not moved to A.
    with tenant_context(people.b.id), pytest.raises(TenantScopeError):
        async with db.transaction() as session:
            await session.execute(
                call, {"id": chat.id, "user": people.ada.id, "tenant": people.a.id}
            )
    # Naming tenant B for tenant A's session: nothing matches, nothing is written.
    rows = await db.run(call, {"id": chat.id, "user": people.ada.id, "tenant": people.b.id})
    assert rows == []
    with tenant_context(people.a.id):
        after = await conversations.get(chat.id, people.ada.id)
        assert (after.message_count, after.token_count) == (0, 0)


async def test_appends_without_the_read_lane_take_the_same_statement_in_a_transaction(
    people: People, pgstack_migrated_settings: Settings
) -> None:
    # proves: V1
    settings = pgstack_migrated_settings.model_copy(update={"database_read_pool_size": 0})
    db = Database(settings)
    await db.connect()
    try:
        assert db.read_lane is None
        conversations = Conversations(db)
        with tenant_context(people.a.id):
            chat = await conversations.start(people.ada.id, "bot")

            async def writer(n: int) -> list[int]:
                return [
                    (
                        await conversations.append(chat.id, people.ada.id, "user", f"{n}", tokens=2)
                    ).seq
                    for _ in range(10)
                ]

            results = await asyncio.gather(*(writer(n) for n in range(8)))
            assert sorted(s for r in results for s in r) == list(range(1, 81))
            after = await conversations.get(chat.id, people.ada.id)
            assert (after.message_count, after.token_count) == (80, 160)
            await conversations.cancel(chat.id, people.ada.id)
            with pytest.raises(ConflictError, match="cancelled and takes no new messages"):
                await conversations.append(chat.id, people.ada.id, "user", "late")
    finally:
        await db.disconnect()


async def test_the_sweep_reads_the_tenant_expiry_index_and_closes_only_the_due(
    people: People, conversations: Conversations, pgstack_migrated_db: Database
) -> None:
    # proves: V1
    from pgstack.conversations import service as conversations_service

    db = pgstack_migrated_db
    for tenant, user in ((people.a.id, people.ada.id), (people.b.id, people.cy.id)):
        await db.run(
            text(
                "INSERT INTO conversation_sessions (id, user_id, tenant_id, agent_id, expires_at) "
                "SELECT gen_random_uuid(), :user, :tenant, 'bot', now() + CASE WHEN g <= 30 "
                "THEN interval '-1 hour' ELSE interval '1 day' END FROM generate_series(1, 3000) g"
            ),
            {"user": user, "tenant": tenant},
        )
    await db.run(text("ANALYZE conversation_sessions"))
    sweep = "EXPLAIN (FORMAT JSON) " + conversations_service._SWEEP.element.text
    with tenant_context(people.a.id):
        async with db.transaction() as session:
            plan = (
                await session.execute(text(sweep), {"tenant_id": people.a.id, "batch": 500})
            ).scalar_one()

    def subplan(node: object, name: str) -> object:
        if isinstance(node, dict):
            if node.get("Subplan Name") == name:
                return node
            node = list(node.values())
        if isinstance(node, list):
            for child in node:
                found = subplan(child, name)
                if found is not None:
                    return found
        return None

    # The search for due sessions (the part that grows with the table) is an index range
    # read; the UPDATE then joins its few ids back by whatever the planner finds cheapest.
    due = json.dumps(subplan(plan, "CTE due"))
    assert "ix_conversation_sessions_tenant_id_expires_at" in due
    assert '"Seq Scan"' not in due
    assert await conversations.expire(batch_size=7) == 60
    rows = await db.run(
        text("SELECT status, count(*) FROM conversation_sessions GROUP BY status ORDER BY 1")
    )
    assert rows == [("active", 5940), ("expired", 60)]


async def test_start_refuses_an_agent_id_that_is_not_a_printable_name(
    people: People, conversations: Conversations
) -> None:
    # proves: V1, I8
    with tenant_context(people.a.id):
        for agent_id in ("", " bot", "bot\x85", "bot\u202e", "bot\ud800", "x" * 201, 42, None):
            with pytest.raises(InvalidInputError, match="agent_id"):
                await conversations.start(people.ada.id, agent_id)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="agent_id"):
            await conversations.start(people.ada.id, "x" * 10_000_000)
        assert await conversations.list(people.ada.id) == []
        chat = await conversations.start(people.ada.id, "é" * 200)
        assert chat.agent_id == "é" * 200
