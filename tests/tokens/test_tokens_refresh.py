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
import pytest
from sqlalchemy.engine import URL
from tokens_fake_provider import FakeProvider

from pgstack.crypto import KeyRing
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import TokenRefreshError
from pgstack.tokens import TokenVault

WORKER = Path(__file__).resolve().parent / "tokens_worker.py"
PROCESSES = 5


async def test_fifty_callers_in_five_processes_cause_one_refresh(
    vault: TokenVault,
    provider: FakeProvider,
    pgstack_migrated_url: URL,
    token_key_text: str,
    tmp_path: Path,
) -> None:
    # proves: T3
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
