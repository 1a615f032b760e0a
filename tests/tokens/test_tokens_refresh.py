"""Single-flight refresh: one provider call for any number of callers in any number of processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import Depends
from sqlalchemy.engine import URL
from tokens_fake_provider import FakeProvider

from pgstack.config import Settings
from pgstack.crypto import KeyRing
from pgstack.db.admin import asyncpg_dsn
from pgstack.db.database import Database
from pgstack.errors import DatabaseUnavailableError, TokenRefreshError
from pgstack.tokens import TokenVault
from pgstack.web import create_app
from pgstack.web.tokens import tokens_router

WORKER = Path(__file__).resolve().parent / "tokens_worker.py"
PROCESSES = 5


async def test_fifty_callers_in_five_processes_with_authlib_cause_one_refresh(
    vault: TokenVault,
    provider: FakeProvider,
    pgstack_migrated_url: URL,
    token_key_text: str,
    tmp_path: Path,
) -> None:
    # proves: T3, T6
    # Each process refreshes through Authlib's AsyncOAuth2Client, whose answer carries both
    # expires_in and an epoch expires_at, against a provider that rotates refresh tokens.
    first_refresh = await provider.grant()
    await vault.save("crm", "acme", "at-old", first_refresh, expires_in=60)  # inside the buffer
    env = {**os.environ, "PGSTACK_ENCRYPTION_KEYS": token_key_text}
    url = pgstack_migrated_url.render_as_string(hide_password=False)
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, provider.dsn, str(tmp_path / f"ready{n}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{n}").exists() for n in range(PROCESSES)):
            assert all(w.poll() is None for w in workers), _output(workers)
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.05)
        go.write_text("go")
        results = [await asyncio.to_thread(w.communicate, timeout=60) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in workers), [err for _, err in results]
    tokens = [token for out, _ in results for token in json.loads(out)]
    assert len(tokens) == 50

    calls = await provider.calls()
    assert calls == [(first_refresh, True)]  # exactly one provider call
    stored = await vault.get("crm", "acme")
    assert set(tokens) == {stored.access_token} and stored.access_token != "at-old"
    assert stored.refresh_token != first_refresh  # the rotated one is kept
    assert stored.expires_in() is not None and 3500 < stored.expires_in() <= 3600
    history = await vault.history("crm", "acme")
    assert [h.success for h in history] == [True]


async def test_the_rotated_refresh_token_is_sent_next_time_never_the_old_one(
    vault: TokenVault, provider: FakeProvider, pgstack_migrated_url: URL
) -> None:
    # proves: T3
    first = await provider.grant()
    await vault.save("crm", "acme", "at-0", first, expires_in=-10)
    t1 = await vault.get_valid_token("crm", "acme", provider.refresh)
    assert t1.refresh_token not in (None, first)
    await _expire_now(pgstack_migrated_url)
    t2 = await vault.get_valid_token("crm", "acme", provider.refresh)
    assert t2.access_token != t1.access_token
    calls = await provider.calls()
    assert calls == [(first, True), (t1.refresh_token, True)]  # never `first` again


async def test_concurrent_tasks_in_one_process_share_one_refresh(
    vault: TokenVault, provider: FakeProvider
) -> None:
    # proves: T3
    await vault.save("crm", "acme", "at-0", await provider.grant(), expires_in=10)
    slow = FakeProvider(provider.dsn, delay=0.2)
    tokens = await asyncio.gather(
        *(vault.get_valid_token("crm", "acme", slow.refresh) for _ in range(8))
    )
    assert len({t.access_token for t in tokens}) == 1
    assert len(await provider.calls()) == 1


async def test_a_fresh_token_is_returned_without_any_write(
    vault: TokenVault, pgstack_migrated_url: URL
) -> None:
    # proves: T3
    await vault.save("crm", "acme", "at-fresh", "rt", expires_in=3600)

    async def refresher(old: str) -> dict[str, Any]:
        raise AssertionError("a fresh token must not be refreshed")

    server = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    row_state = "SELECT xmin::text, version, updated_at FROM oauth_tokens"
    try:
        before = tuple(await server.fetchrow(row_state))
        tokens = [await vault.get_valid_token("crm", "acme", refresher) for _ in range(3)]
        after = tuple(await server.fetchrow(row_state))
    finally:
        await server.close()
    assert [t.access_token for t in tokens] == ["at-fresh"] * 3
    assert before == after  # any UPDATE, even of nothing, would give the row a new xmin
    assert await vault.history("crm", "acme") == []


async def test_a_failing_provider_is_audited_and_backs_off_more_each_time(
    pgstack_migrated_db: Any, token_keys: KeyRing
) -> None:
    # proves: T3
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    vault = TokenVault(
        pgstack_migrated_db,
        backoff_base=timedelta(seconds=10),
        refresh_timeout=5,
        clock=lambda: now[0],
    )
    await vault.save("crm", "acme", "at-0", "rt-0", expires_at=now[0] - timedelta(seconds=1))
    sent: list[str] = []

    async def refresher(old: str) -> dict[str, Any]:
        sent.append(old)
        raise RuntimeError(f"invalid_grant for {old}")

    gaps = []
    for _ in range(3):
        with pytest.raises(TokenRefreshError, match=r"invalid_grant for \*\*\*"):
            await vault.get_valid_token("crm", "acme", refresher)
        token = await vault.get("crm", "acme")
        assert token.next_refresh_not_before is not None
        gaps.append(token.next_refresh_not_before - now[0])
        # During the backoff nobody calls the provider, and the error says when to retry.
        with pytest.raises(TokenRefreshError, match="next attempt is allowed at"):
            await vault.get_valid_token("crm", "acme", refresher)
        now[0] = token.next_refresh_not_before
    assert gaps == [timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=40)]
    assert len(sent) == 3
    token = await vault.get("crm", "acme")
    assert token.refresh_failures == 3 and token.last_error == "RuntimeError: invalid_grant for ***"
    history = await vault.history("crm", "acme")
    assert [h.success for h in history] == [False, False, False]
    assert all(h.error_message == "RuntimeError: invalid_grant for ***" for h in history)


async def test_during_backoff_a_still_valid_old_token_is_returned(
    vault: TokenVault, token_keys: KeyRing
) -> None:
    # proves: T3
    await vault.save("crm", "acme", "at-0", "rt-0", expires_in=120)  # inside the buffer
    calls = 0

    async def refresher(old: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise RuntimeError("provider down")

    first = await vault.get_valid_token("crm", "acme", refresher)
    second = await vault.get_valid_token("crm", "acme", refresher)
    assert first.access_token == second.access_token == "at-0"
    assert calls == 1
    assert second.refresh_failures == 1


async def test_a_hanging_provider_is_cut_off_and_no_caller_waits_past_the_timeout(
    pgstack_migrated_db: Any, token_keys: KeyRing
) -> None:
    # proves: T3
    timeout = 0.5
    vault = TokenVault(pgstack_migrated_db, refresh_timeout=timeout)
    await vault.save("crm", "acme", "at-0", "rt-0", expires_in=-5)

    cut_off: list[bool] = []

    async def hang(old: str) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()  # never answers
        except asyncio.CancelledError:
            cut_off.append(True)
            raise
        raise AssertionError("unreachable")

    async def call() -> BaseException | None:
        try:
            await vault.get_valid_token("crm", "acme", hang)
        except TokenRefreshError as exc:
            return exc
        return None

    # Every caller returns although the provider never answers: the one refresher call is
    # cancelled at the timeout, and the callers waiting on its lock give up with it.
    results = await asyncio.gather(*(call() for _ in range(4)))
    assert all(isinstance(exc, TokenRefreshError) for exc in results)
    assert cut_off == [True]
    history = await vault.history("crm", "acme")
    assert len(history) == 1
    assert history[0].error_message == "the refresher did not answer within 0.5 s"


async def _expire_now(url: URL) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("UPDATE oauth_tokens SET expires_at = now() - interval '1 minute'")
    finally:
        await conn.close()


def _output(workers: list[subprocess.Popen[str]]) -> str:
    return "; ".join(w.stderr.read() if w.stderr and w.poll() is not None else "" for w in workers)


async def test_a_token_shorter_lived_than_the_buffer_is_still_refreshed_once(
    vault: TokenVault, provider: FakeProvider
) -> None:
    # proves: T3
    await vault.save("crm", "acme", "at-0", await provider.grant(), expires_in=10)

    async def short_lived(old: str) -> dict[str, Any]:
        answer = await FakeProvider(provider.dsn, delay=0.2).refresh(old)
        return {**answer, "expires_in": 60}  # less than the 5-minute buffer

    tokens = await asyncio.gather(
        *(vault.get_valid_token("crm", "acme", short_lived) for _ in range(6))
    )
    assert len({t.access_token for t in tokens}) == 1
    assert len(await provider.calls()) == 1


async def test_a_token_without_a_refresh_token_serves_until_it_expires(
    vault: TokenVault, provider: FakeProvider
) -> None:
    # proves: T3
    await vault.save("crm", "solo", "at-solo", None, expires_in=120)  # inside the buffer
    token = await vault.get_valid_token("crm", "solo", provider.refresh)
    assert token.access_token == "at-solo"
    await vault.save("crm", "gone", "at-gone", None, expires_in=-10)
    with pytest.raises(TokenRefreshError, match="authorized again"):
        await vault.get_valid_token("crm", "gone", provider.refresh)
    assert await provider.calls() == []  # nothing to refresh with: the provider is not called


async def test_callers_in_two_pools_of_one_process_share_one_refresh(
    vault: TokenVault, provider: FakeProvider, pgstack_migrated_settings: Any
) -> None:
    # proves: T3
    # Two Database objects are two pools, as two processes would have: the row lock, not
    # the in-process sharing, makes them refresh once.
    await vault.save("crm", "acme", "at-0", await provider.grant(), expires_in=10)
    slow = FakeProvider(provider.dsn, delay=0.2)
    other_db = Database(pgstack_migrated_settings)
    await other_db.connect()
    try:
        other = TokenVault(other_db, refresh_timeout=5.0)
        tokens = await asyncio.gather(
            *(v.get_valid_token("crm", "acme", slow.refresh) for v in [vault, other] * 5)
        )
    finally:
        await other_db.disconnect()
    assert len({t.access_token for t in tokens}) == 1
    assert len(await provider.calls()) == 1


async def test_more_waiters_than_connections_are_all_served(
    pgstack_migrated_url: URL, provider: FakeProvider, token_keys: KeyRing
) -> None:
    # proves: T3
    settings = Settings(
        database_url=pgstack_migrated_url.render_as_string(hide_password=False),
        database_pool_size=2,
        database_max_overflow=0,
        database_pool_timeout=1.0,
        database_read_pool_size=1,
        _env_file=None,
    )
    db = Database(settings)
    await db.connect()
    try:
        vault = TokenVault(db, refresh_timeout=10)
        await vault.save("crm", "acme", "at-0", await provider.grant(), expires_in=10)
        # The refresh outlasts the pool timeout: a waiter holding a connection would starve
        # the others of the pool.
        slow = FakeProvider(provider.dsn, delay=1.5)
        tokens = await asyncio.gather(
            *(vault.get_valid_token("crm", "acme", slow.refresh) for _ in range(20))
        )
        assert len({t.access_token for t in tokens}) == 1 and len(tokens) == 20
        assert db.pool_stats()["checked_out"] == 0
    finally:
        await db.disconnect()
    assert len(await provider.calls()) == 1


async def test_a_row_locked_past_the_refresh_timeout_ends_the_wait_with_token_refresh_error(
    pgstack_migrated_db: Database, pgstack_migrated_url: URL, token_keys: KeyRing
) -> None:
    # proves: T3
    vault = TokenVault(pgstack_migrated_db, refresh_timeout=0.3)
    await vault.save("crm", "acme", "at-0", "rt-0", expires_in=-1)
    calls = 0

    async def refresher(old: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"access_token": "at-1", "expires_in": 60}

    holder = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM oauth_tokens FOR UPDATE")
            async with asyncio.timeout(10):
                with pytest.raises(TokenRefreshError, match="locked by another refresh"):
                    await vault.get_valid_token("crm", "acme", refresher)
    finally:
        await holder.close()
    assert calls == 0
    # Once the lock is gone, the next caller refreshes.
    assert (await vault.get_valid_token("crm", "acme", refresher)).access_token == "at-1"


async def test_during_a_backoff_callers_do_not_wait_for_the_row_lock(
    pgstack_migrated_db: Database, pgstack_migrated_url: URL, token_keys: KeyRing
) -> None:
    # proves: T3
    vault = TokenVault(pgstack_migrated_db, refresh_timeout=0.3)
    await vault.save("crm", "acme", "at-0", "rt-0", expires_in=120)  # inside the buffer

    async def failing(old: str) -> dict[str, Any]:
        raise RuntimeError("provider down")

    await vault.get_valid_token("crm", "acme", failing)  # fails: backoff starts
    holder = await asyncpg.connect(asyncpg_dsn(pgstack_migrated_url))
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM oauth_tokens FOR UPDATE")
            # The backoff is decided on the read: the old, still valid token, at once.
            token = await vault.get_valid_token("crm", "acme", failing)
            assert token.access_token == "at-0"
            await vault.save("crm", "gone", "at-g", "rt-g", expires_in=-5)
            await holder.execute(
                "UPDATE oauth_tokens SET next_refresh_not_before = "
                "now() + interval '1 hour' WHERE account = 'gone'"
            )
    finally:
        await holder.close()
    with pytest.raises(TokenRefreshError, match="next attempt is allowed at"):
        await vault.get_valid_token("crm", "gone", failing)
    assert len(await vault.history("crm", "acme")) == 1


class _Proxy:
    """A TCP relay to PostgreSQL that can be cut, as a network outage cuts a service off.

    It reaches the server the way `url` does: over TCP, or through the Unix socket of a
    server that listens on no TCP port (the embedded test server).
    """

    def __init__(self, url: URL) -> None:
        self.url = url
        self.links: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> URL:
        """Start relaying; the URL that reaches the server through the relay."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = int(self.server.sockets[0].getsockname()[1])
        query = {k: v for k, v in self.url.query.items() if k != "host"}
        return self.url.set(host="127.0.0.1", port=port, query=query)

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        port = self.url.port or 5432
        socket_dir = self.url.query.get("host")
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
        return await asyncio.open_connection(self.url.host or "127.0.0.1", port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._upstream()
        self.links += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for link in self.links:
            link.transport.abort()
        await self.server.wait_closed()


async def test_a_database_outage_is_database_unavailable_and_a_503(
    pgstack_migrated_url: URL, token_keys: KeyRing
) -> None:
    # proves: T3
    proxy = _Proxy(pgstack_migrated_url)
    relayed = await proxy.start()
    settings = Settings(
        database_url=relayed.render_as_string(hide_password=False),
        database_connect_attempts=1,
        database_pool_timeout=2,
        _env_file=None,
    )
    db = Database(settings)
    await db.connect()
    app = create_app(
        database=db,
        monitor_interval=None,
        routers=[tokens_router(dependencies=[Depends(lambda: None)])],
    )
    try:
        vault = TokenVault(db)
        await vault.save("crm", "acme", "at-0", "rt-0", expires_in=-1)
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            async with http:
                assert (await http.get("/admin/tokens")).status_code == 200
                await proxy.cut()
                answer = await http.get("/admin/tokens")
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/problem+json"
                for call in (
                    vault.get("crm", "acme"),
                    vault.get_valid_token("crm", "acme", _never),
                    vault.list_tokens(),
                    vault.save("crm", "acme", "at-1"),
                ):
                    with pytest.raises(DatabaseUnavailableError):
                        await call
    finally:
        await db.disconnect()


async def _never(old: str) -> dict[str, Any]:
    raise AssertionError("the provider is not called while the database is away")
