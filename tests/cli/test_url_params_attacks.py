"""Query parameters of DATABASE_URL with values that cannot work, or given twice: one line
naming the parameter when the URL is read, never the driver's exception, never the password."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.config import Settings
from pgstack.errors import ConfigurationError

from .conftest import one_line
from .test_cli_hostile_more import raw

runner = CliRunner()
SECRET = "s3cr%25t-Pw"
BASE = f"postgresql://app:{SECRET}@127.0.0.1:1/appdb"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # Given twice: libpq keeps the last, SQLAlchemy passed both on. sslmode twice was
        # dropped altogether (no TLS required); database twice an AttributeError at connect.
        ("sslmode=disable&sslmode=require", "'sslmode' 2 times; give it once"),
        ("database=appdb&database=other", "'database' 2 times; give it once"),
        ("password=x&password=y", "'password' 2 times; give it once"),
        ("port=5432&port=5433", "'port' 2 times for 1 host(s); give one port per host"),
        # Values the driver refused with its own exception, or as "cannot connect".
        ("port=abc", "'port' = 'abc', which is not a port"),
        ("port=99999", "'port' = '99999', which is not a port"),
        ("timeout=abc", "'timeout' = 'abc', which is not a number of seconds above 0"),
        ("command_timeout=-1", "'command_timeout' = '-1', which is not a number of seconds"),
        ("command_timeout=nan", "'command_timeout' = 'nan', which is not a number of seconds"),
        ("prepared_statement_cache_size=x", "'prepared_statement_cache_size' = 'x', which is"),
        # Past Python's 4300-digit limit for int(): a ValueError of its own.
        ("port=" + "9" * 5000, "'port' = '99999999999999999999', which is not a port"),
        ("prepared_statement_cache_size=" + "9" * 5000, "which is not a whole number from 0"),
        ("timeout=1e400", "'timeout' = '1e400', which is not a number of seconds above 0"),
        ("target_session_attrs=bogus", "'target_session_attrs' = 'bogus'; give one of any,"),
        ("sslmode=bogus", "'sslmode' = 'bogus'; give one of disable, allow, prefer, require"),
        ("ssl=maybe", "'ssl' = 'maybe'; give one of disable"),
        ("direct_tls=yes", "'direct_tls' = 'yes'; give one of true, false"),
        ("ssl=require&sslmode=disable", "has both 'sslmode' and 'ssl', with different values"),
        # The driver connected to ?host= while messages, backups and admin commands named
        # the authority's host.
        ("host=10.0.0.9", "names the host twice, after the '@' and as ?host=; keep one"),
        ("port=5432", "names the port twice, after the '@' and as ?port=; keep one"),
    ],
)
def test_a_parameter_value_that_cannot_work_is_one_line_naming_it(
    query: str, expected: str
) -> None:
    # proves: C1, O6
    result = runner.invoke(app, ["db", "info"], env={"DATABASE_URL": f"{BASE}?{query}"})
    assert result.exit_code == 1, result.output
    one_line(result.output)
    assert result.output.startswith(("error: DATABASE_URL has ", "error: DATABASE_URL names "))
    assert expected in result.output
    for leak in ("s3cr", "Traceback", "TypeError", "ValueError", "ArgumentError", "Cannot connect"):
        assert leak not in result.output
    with pytest.raises(ConfigurationError) as caught:
        Settings(database_replica_urls=f"{BASE}?{query}")
    assert caught.value.message.startswith(
        ("DATABASE_REPLICA_URLS has ", "DATABASE_REPLICA_URLS names ")
    )
    assert "s3cr" not in caught.value.message


def test_ssl_in_the_url_is_the_ssl_mode_and_direct_tls_false_is_off(
    pgstack_database_url: URL,
) -> None:
    # proves: C1 (?ssl=require was read and then ignored: no TLS was required)
    assert Settings(database_url=f"{BASE}?ssl=require").sslmode == "require"
    assert Settings(database_url=f"{BASE}?ssl=verify-full&sslmode=verify-full").sslmode == (
        "verify-full"
    )
    # asyncpg took the string 'false' as true and asked for direct TLS.
    url = pgstack_database_url.update_query_dict({"direct_tls": "false"})
    assert "direct_tls" not in Settings(database_url=raw(url)).url.query  # type: ignore[union-attr]
    result = runner.invoke(app, ["db", "info", "--json"], env={"DATABASE_URL": raw(url)})
    assert result.exit_code == 0, result.output
    assert "server_version" in result.output


def test_hostile_but_valid_parameters_still_connect(pgstack_database_url: URL) -> None:
    # proves: C1 (an empty value, a percent-encoded or non-ASCII ?password=, ?host= naming
    # the same server as the authority: each connects, and the password is not printed)
    for query in (
        {"password": "a%b&c=é"},
        {"password": ""},
    ):
        url = pgstack_database_url.update_query_dict(query)
        result = runner.invoke(app, ["db", "info", "--json"], env={"DATABASE_URL": raw(url)})
        assert result.exit_code == 0, (query, result.output)
        assert "a%b&c" not in result.output


def test_a_port_given_as_a_parameter_is_the_port_of_the_authoritys_host(
    pgstack_database_url: URL,
) -> None:
    # proves: C1 (messages named port 5432 while the driver used ?port=)
    assert Settings(database_url="postgresql://u@h/d?port=6543").url.port == 6543  # type: ignore[union-attr]
    if not pgstack_database_url.host or pgstack_database_url.host.startswith("/"):
        pytest.skip("the server listens on a Unix socket: its folder is ?host=")
    url = pgstack_database_url._replace(port=None).update_query_dict(
        {"port": str(pgstack_database_url.port or 5432)}
    )
    result = runner.invoke(app, ["db", "info", "--json"], env={"DATABASE_URL": raw(url)})
    assert result.exit_code == 0, result.output
    assert f":{pgstack_database_url.port or 5432}/" in result.output
