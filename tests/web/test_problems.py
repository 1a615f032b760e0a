"""Errors as clients and attackers meet them: bad values are 422s, 5xx answers say nothing.

A PostgreSQL data error (SQLSTATE class 22: a NUL byte, a number out of range) is the
caller's input, so it answers 422; a 5xx answers with a generic detail, and what the error
said goes to the log. The log never holds a statement's bound parameters.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import bindparam, column, select, table, text

from pgstack import Database, Settings
from pgstack.crypto import KeyRing, configure_encryption, generate_key, get_key_ring
from pgstack.errors import DatabaseUnavailableError
from pgstack.web import DatabaseDep, TransactionDep, create_app

from .conftest import served

# A stand-in for a password hash: a value the log must never show.
SECRET = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0LXNhbHQ$not-for-any-log"


@pytest.fixture
async def accounts(pgstack_db: Database) -> AsyncIterator[str]:
    name = f"accounts_{uuid.uuid4().hex[:8]}"
    async with pgstack_db.transaction() as s:
        await s.execute(
            text(
                f"CREATE TABLE {name} (id serial PRIMARY KEY, name text, secret_hash text, "
                "small int, price numeric(5, 2))"
            )
        )
    yield name
    async with pgstack_db.transaction() as s:
        await s.execute(text(f"DROP TABLE {name}"))


def build_app(settings: Settings, name: str) -> FastAPI:
    app = create_app(settings, monitor_interval=None)
    accounts = table(name, column("name"), column("secret_hash"))

    @app.post("/accounts")
    async def add(session: TransactionDep, name: str, small: int = 0, price: float = 0) -> dict:
        await session.execute(
            text(
                f"INSERT INTO {accounts.name} (name, secret_hash, small, price) "
                "VALUES (:n, :h, :s, :p)"
            ),
            {"n": name, "h": SECRET, "s": small, "p": price},
        )
        return {"ok": True}

    @app.get("/accounts")
    async def find(db: DatabaseDep, name: str) -> list[str]:
        # Database.run: one statement on the read lane, which raises errors of its own.
        statement = select(accounts.c.name).where(
            accounts.c.name == bindparam("n"), accounts.c.secret_hash != bindparam("h")
        )
        return [row[0] for row in await db.run(statement, {"n": name, "h": SECRET})]

    @app.get("/down")
    async def down() -> None:
        raise DatabaseUnavailableError(
            "Cannot connect to PostgreSQL at db.internal:5432 as role app_owner; check "
            "DATABASE_URL."
        )

    @app.get("/decrypt")
    async def decrypt(value: str) -> str:
        return get_key_ring().decrypt_text(value, "accounts.secret")

    return app


@pytest.fixture
async def client(pgstack_settings: Settings, accounts: str) -> AsyncIterator[httpx.AsyncClient]:
    async with served(build_app(pgstack_settings, accounts)) as c:
        yield c


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the server logged, tracebacks included (the test client's own lines left out)."""
    formatter = logging.Formatter("%(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records if r.name != "httpx")


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict = response.json()
    assert body["status"] == status
    return body


@pytest.mark.parametrize(
    ("params", "sqlstate", "words"),
    [
        ({"name": "nul\x00byte"}, "22021", "NUL byte"),
        ({"name": "priced-name", "price": "1e9"}, "22003", "out of the range"),
        # asyncpg refuses to encode a number too big for int4 before sending it.
        ({"name": "small-name", "small": str(2**40)}, "22000", "not valid"),
    ],
)
async def test_a_value_the_database_refuses_is_a_422_and_the_log_holds_no_values(
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    params: dict[str, str],
    sqlstate: str,
    words: str,
) -> None:
    # proves: I8, W2
    caplog.set_level(logging.DEBUG)
    body = assert_problem(await client.post("/accounts", params=params), 422)
    assert sqlstate in body["detail"] and words in body["detail"]
    logged = server_log(caplog)
    assert "22" in logged  # the refusal was logged ...
    assert SECRET not in logged and "argon2" not in logged  # ... without any bound value
    assert params["name"] not in logged
    assert SECRET not in str(body)


async def test_a_nul_byte_on_the_read_lane_is_a_422_without_values_in_the_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    # proves: I8, W2
    caplog.set_level(logging.DEBUG)
    assert (await client.get("/accounts", params={"name": "someone"})).json() == []
    body = assert_problem(await client.get("/accounts", params={"name": "x\x00y"}), 422)
    assert "22021" in body["detail"]
    assert SECRET not in server_log(caplog) and "x\x00y" not in server_log(caplog)


async def test_sql_echo_and_errors_hide_bound_parameters(
    pgstack_settings: Settings, accounts: str, caplog: pytest.LogCaptureFixture
) -> None:
    # proves: C7, I8
    caplog.set_level(logging.INFO)
    db = Database(pgstack_settings.model_copy(update={"database_echo": True}))
    async with db:
        async with db.transaction() as s:
            await s.execute(
                text(f"INSERT INTO {accounts} (name, secret_hash) VALUES (:n, :h)"),
                {"n": "echoed", "h": SECRET},
            )
        with pytest.raises(Exception, match="hide_parameters") as failure:
            async with db.transaction() as s:
                await s.execute(
                    text(f"INSERT INTO {accounts} (name, secret_hash) VALUES (:n, :h)"),
                    {"n": "\x00", "h": SECRET},
                )
    assert "INSERT INTO" in caplog.text  # echo is on
    assert SECRET not in server_log(caplog)
    assert SECRET not in str(failure.value)


async def test_a_5xx_answers_with_a_generic_detail_and_logs_the_rest(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    # proves: I8, W2
    body = assert_problem(await client.get("/down"), 503)
    for hidden in ("db.internal", "app_owner", "DATABASE_URL", "Database unavailable"):
        assert hidden not in str(body)
    assert body["detail"] == "The service cannot answer this request right now. Try again later."
    assert "db.internal" in server_log(caplog)  # the operator finds it in the log


async def test_a_missing_or_dropped_encryption_key_is_a_generic_503(
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # proves: I8, W2
    stored = KeyRing.parse(generate_key("old")).encrypt("totp-seed", "accounts.secret")
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("PGSTACK_ENCRYPTION_KEYS", raising=False)
    try:
        configure_encryption(KeyRing.parse(generate_key("new")))  # "old" was dropped
        dropped = await client.get("/decrypt", params={"value": stored})
        configure_encryption(None)  # and now no keys at all
        missing = await client.get("/decrypt", params={"value": stored})
    finally:
        configure_encryption(None)
    for response in (dropped, missing):
        body = assert_problem(response, 503)
        assert "PGSTACK_ENCRYPTION_KEYS" not in response.text and "old" not in response.text
        assert "ncryption" not in response.text and body["type"] == "about:blank"
    logged = server_log(caplog)
    assert "'old'" in logged and "PGSTACK_ENCRYPTION_KEYS" in logged
