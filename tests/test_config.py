"""Settings: environment and `.env`, defaults, validation that names the variable, no secrets."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import ConfigurationError, DatabaseUnavailableError, InvalidQueryError

SECRET = "hunter2-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DATABASE_* / PGSTACK_* variable and no `.env` of the developer leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def closed_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_defaults() -> None:
    # proves: C1
    s = Settings(_env_file=None)
    assert s.database_pool_size == 20
    assert s.database_max_overflow == 10
    assert s.database_pool_timeout == 30
    assert s.database_pool_recycle == 3600
    assert s.database_pool_pre_ping is True
    assert s.database_echo is False
    assert s.database_statement_timeout_ms is None
    assert s.environment == "development"
    assert s.replica_urls == []
    # Nothing configured: the embedded server will be used.
    assert s.is_configured is False
    assert s.url is None
    assert s.summary()["database_url"] == "(embedded)"


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # proves: C1
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.internal:6543/orders")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    monkeypatch.setenv("DATABASE_ECHO", "true")
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT_MS", "2500")
    monkeypatch.setenv("PGSTACK_ENV", "production")
    s = Settings(_env_file=None)
    url = s.url
    assert url is not None
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.host, url.port, url.database) == (
        "app",
        "db.internal",
        6543,
        "orders",
    )
    assert s.database_pool_size == 7
    assert s.database_echo is True
    assert s.database_statement_timeout_ms == 2500
    assert s.environment == "production"
    assert s.is_configured is True


def test_database_url_from_dotenv_in_working_directory(tmp_path: Path) -> None:
    # proves: C1
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql://app:pw@from-dotenv:5433/fromfile\n"
        "DATABASE_MAX_OVERFLOW=3\n"
        "PGSTACK_ENV=test\n",
        encoding="utf-8",
    )
    s = Settings()  # reads ./.env (the fixture made tmp_path the working directory)
    assert s.url is not None
    assert (s.url.host, s.url.port, s.url.database) == ("from-dotenv", 5433, "fromfile")
    assert s.database_max_overflow == 3
    assert s.environment == "test"


def test_explicit_env_file_and_environment_wins_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: C1
    env_file = tmp_path / "service.env"
    env_file.write_text(
        "DATABASE_URL=postgresql://app@from-file/appdb\nDATABASE_POOL_SIZE=4\n", encoding="utf-8"
    )
    s = Settings(_env_file=env_file)
    assert s.url is not None and s.url.host == "from-file"
    assert s.database_pool_size == 4

    monkeypatch.setenv("DATABASE_POOL_SIZE", "9")
    assert Settings(_env_file=env_file).database_pool_size == 9


def test_url_composed_from_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    # proves: C1
    monkeypatch.setenv("DATABASE_HOST", "pg.example.com")
    monkeypatch.setenv("DATABASE_PORT", "6432")
    monkeypatch.setenv("DATABASE_NAME", "billing")
    monkeypatch.setenv("DATABASE_USER", "svc")
    monkeypatch.setenv("DATABASE_PASSWORD", SECRET)
    s = Settings(_env_file=None)
    url = s.url
    assert url is not None
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "svc",
        SECRET,
        "pg.example.com",
        6432,
        "billing",
    )
    assert s.summary()["database_url"] == "postgresql+asyncpg://svc:***@pg.example.com:6432/billing"


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u:p@h:5432/d",
        "postgres://u:p@h:5432/d",
        "postgresql+psycopg://u:p@h:5432/d",
        "postgresql+asyncpg://u:p@h:5432/d",
    ],
)
def test_any_postgres_scheme_becomes_asyncpg(raw: str) -> None:
    # proves: C1
    url = Settings(database_url=raw, _env_file=None).url
    assert url is not None
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port, url.database, url.password) == ("h", 5432, "d", "p")


def test_sslmode_in_url_is_a_setting_not_a_driver_argument() -> None:
    # proves: C1
    s = Settings(database_url="postgresql://u@h/d?sslmode=require", _env_file=None)
    assert s.sslmode == "require"
    assert s.url is not None and "sslmode" not in s.url.query
    # An explicit DATABASE_SSLMODE wins over the URL's.
    s = Settings(
        database_url="postgresql://u@h/d?sslmode=require",
        database_sslmode="verify-full",
        _env_file=None,
    )
    assert s.sslmode == "verify-full"


def test_replica_urls_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    # proves: C1
    monkeypatch.setenv(
        "DATABASE_REPLICA_URLS",
        f"postgresql://ro:{SECRET}@replica-1:5432/app , postgres://ro@replica-2/app,",
    )
    s = Settings(database_url="postgresql://app@primary/app", _env_file=None)
    hosts = [(u.drivername, u.host, u.database) for u in s.replica_urls]
    assert hosts == [
        ("postgresql+asyncpg", "replica-1", "app"),
        ("postgresql+asyncpg", "replica-2", "app"),
    ]
    assert s.summary()["replicas"] == [
        "postgresql+asyncpg://ro:***@replica-1:5432/app",
        "postgresql+asyncpg://ro@replica-2/app",
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_POOL_SIZE", "abc"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_MAX_OVERFLOW", "-1"),
        ("DATABASE_POOL_TIMEOUT", "soon"),
        ("DATABASE_POOL_PRE_PING", "sometimes"),
        ("DATABASE_PORT", "99999"),
        ("DATABASE_SSLMODE", "maybe"),
        ("PGSTACK_ENV", "prod"),
        ("PGSTACK_HEALTH_POOL_WARN_RATIO", "2"),
        ("DATABASE_URL", "not a url at all"),
        ("DATABASE_URL", f"postgresql://u:{SECRET}@h:notaport/d"),
        ("DATABASE_URL", f"mysql://u:{SECRET}@h/d"),
        ("DATABASE_REPLICA_URLS", f"postgresql://ro@r1/app,mysql://u:{SECRET}@r2/app"),
        ("DATABASE_REPLICA_URLS", f"postgresql://ro@r1/app,postgresql://u:{SECRET}@r2:x/app"),
    ],
)
def test_bad_value_fails_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # proves: C1
    monkeypatch.setenv("DATABASE_PASSWORD", SECRET)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        Settings(_env_file=None)
    message = str(info.value)
    assert variable in message
    assert SECRET not in message
    assert SECRET not in repr(info.value)


def test_bad_value_in_dotenv_names_the_variable(tmp_path: Path) -> None:
    # proves: C1
    (tmp_path / ".env").write_text("DATABASE_POOL_SIZE=twenty\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="DATABASE_POOL_SIZE"):
        Settings()


def test_password_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # proves: C1
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{SECRET}@db.internal:5432/app")
    monkeypatch.setenv("DATABASE_PASSWORD", SECRET)
    monkeypatch.setenv("DATABASE_REPLICA_URLS", f"postgresql://ro:{SECRET}@replica/app")
    s = Settings(_env_file=None)
    db = Database(s)
    shown = [repr(s), str(s), str(s.summary()), repr(db), db.safe_url, str(s.replica_urls)]
    for text in shown:
        assert SECRET not in text
    assert "db.internal" in repr(db)
    # The password is still there for the driver.
    assert s.url is not None and s.url.password == SECRET


def test_password_from_parts_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # proves: C1
    monkeypatch.setenv("DATABASE_HOST", "db.internal")
    monkeypatch.setenv("DATABASE_PASSWORD", SECRET)
    s = Settings(_env_file=None)
    for text in (repr(s), str(s), str(s.summary()), repr(Database(s))):
        assert SECRET not in text


async def test_password_not_in_logs_or_error_of_failed_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # proves: C1
    port = closed_port()
    s = Settings(
        database_url=f"postgresql://app:{SECRET}@127.0.0.1:{port}/appdb",
        database_connect_attempts=2,
        database_connect_backoff=0.01,
        database_connect_backoff_max=0.05,
        _env_file=None,
    )
    db = Database(s)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.connect()
    assert any("cannot connect" in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text
    assert SECRET not in str(info.value)
    assert not db.is_connected


# -- secrets: .env and NAME_FILE alike -------------------------------------------------------

KEYS = "k1:" + "A" * 43 + "="  # 32 zero-ish bytes, base64


def test_pgstack_secrets_in_dotenv_are_read(tmp_path: Path) -> None:
    # proves: C1
    (tmp_path / ".env").write_text(
        f"PGSTACK_CURSOR_SECRET={SECRET}\nPGSTACK_ENCRYPTION_KEYS={KEYS}\n", encoding="utf-8"
    )
    s = Settings()
    assert s.cursor_secret is not None and s.cursor_secret.get_secret_value() == SECRET
    assert s.encryption_keys is not None and s.encryption_keys.get_secret_value() == KEYS
    assert SECRET not in repr(s) and SECRET not in str(s.summary())


def test_cursor_secret_from_dotenv_signs_the_cursors(tmp_path: Path) -> None:
    # proves: C1
    from pgstack.repository import configure_cursor_secret
    from pgstack.repository.pagination import decode_cursor, encode_cursor

    (tmp_path / ".env").write_text(f"PGSTACK_CURSOR_SECRET={SECRET}\n", encoding="utf-8")
    try:
        configure_cursor_secret(None)  # read the setting afresh, as a new process does
        cursor = encode_cursor("q", [1])
        configure_cursor_secret(SECRET)  # another replica with the same secret reads it
        assert decode_cursor(cursor, "q", 1) == [1]
        configure_cursor_secret("another secret")
        with pytest.raises(InvalidQueryError):
            decode_cursor(cursor, "q", 1)
    finally:
        configure_cursor_secret(None)


def _secret_fields() -> list[tuple[str, str]]:
    """(field, variable) for every secret setting, whoever added it."""
    from pgstack.config import _env_names, _is_secret

    return [
        (name, _env_names(name, field)[0].upper())
        for name, field in Settings.model_fields.items()
        if _is_secret(field.annotation)
    ]


def _value_for(variable: str) -> str:
    if variable == "PGSTACK_ENCRYPTION_KEYS":
        return KEYS
    if "URL" in variable:
        return f"postgresql://app:{SECRET}@db.internal/app"
    if variable == "PGSTACK_API_KEY_PEPPERS":
        return SECRET * 3  # a pepper needs 32 characters or more
    return SECRET


def test_every_secret_setting_reads_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # proves: O5
    fields = _secret_fields()
    assert {"database_url", "database_password", "encryption_keys", "cursor_secret"} <= {
        f for f, _ in fields
    }
    for field, variable in fields:
        secret_file = tmp_path / f"{variable.lower()}.txt"
        # Container secrets usually end with a newline; it is not part of the secret.
        secret_file.write_text(_value_for(variable) + "\n", encoding="utf-8")
        monkeypatch.setenv(f"{variable}_FILE", str(secret_file))
        s = Settings(_env_file=None)
        value = getattr(s, field)
        got = (
            [v.get_secret_value() for v in value]
            if isinstance(value, list)
            else [value.get_secret_value()]
        )
        assert got == [_value_for(variable)], variable
        assert SECRET not in repr(s)
        monkeypatch.delenv(f"{variable}_FILE")


def test_secret_file_named_in_dotenv(tmp_path: Path) -> None:
    # proves: O5, C1
    (tmp_path / "pw").write_text(SECRET, encoding="utf-8")
    (tmp_path / ".env").write_text(
        f"DATABASE_HOST=db.internal\nDATABASE_PASSWORD_FILE={tmp_path / 'pw'}\n", encoding="utf-8"
    )
    s = Settings()
    assert s.url is not None and s.url.password == SECRET


def test_secret_and_its_file_together_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: O5
    (tmp_path / "secret").write_text(SECRET, encoding="utf-8")
    monkeypatch.setenv("PGSTACK_CURSOR_SECRET", "inline")
    monkeypatch.setenv("PGSTACK_CURSOR_SECRET_FILE", str(tmp_path / "secret"))
    with pytest.raises(ConfigurationError, match="PGSTACK_CURSOR_SECRET_FILE") as info:
        Settings(_env_file=None)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("problem", ["missing", "folder", "binary"])
def test_unreadable_secret_file_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    # proves: O5
    path = tmp_path / "secret"
    if problem == "folder":
        path.mkdir()
    elif problem == "binary":
        path.write_bytes(b"\xff\xfe\x00" + SECRET.encode())
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigurationError, match="DATABASE_PASSWORD_FILE") as info:
        Settings(_env_file=None)
    assert SECRET not in str(info.value)


# -- production ---------------------------------------------------------------------------


def test_production_refuses_the_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # proves: O6, C4
    monkeypatch.setenv("PGSTACK_ENV", "production")
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        Settings(_env_file=None)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal/app")
    assert Settings(_env_file=None).is_configured


def test_production_refuses_to_run_without_the_secrets_its_modules_need(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # proves: O6
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal/app")
    dev = Settings(_env_file=None)
    dev.require_production_secrets()  # development: warnings elsewhere, no refusal
    assert dev.missing_secrets() == ["PGSTACK_ENCRYPTION_KEYS", "PGSTACK_CURSOR_SECRET"]

    monkeypatch.setenv("PGSTACK_ENV", "production")
    with pytest.raises(ConfigurationError) as info:
        Settings(_env_file=None).require_production_secrets()
    assert "PGSTACK_ENCRYPTION_KEYS and PGSTACK_CURSOR_SECRET" in str(info.value)
    # A service without encrypted columns needs only the cursor secret.
    with pytest.raises(ConfigurationError, match="PGSTACK_CURSOR_SECRET"):
        Settings(_env_file=None).require_production_secrets(encryption=False)

    (tmp_path / "keys").write_text(KEYS, encoding="utf-8")
    monkeypatch.setenv("PGSTACK_ENCRYPTION_KEYS_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("PGSTACK_CURSOR_SECRET", SECRET)
    Settings(_env_file=None).require_production_secrets()


# -- TLS settings -------------------------------------------------------------------------


def test_tls_files_in_the_url_are_settings_not_driver_arguments(tmp_path: Path) -> None:
    # proves: O5, C1
    raw = f"postgresql://u@h/d?sslmode=verify-ca&sslrootcert={tmp_path / 'ca.pem'}"
    s = Settings(database_url=raw, _env_file=None)
    assert s.url is not None and dict(s.url.query) == {}
    assert s.tls_files["sslrootcert"] == tmp_path / "ca.pem"
    # A CA file that is not there is a configuration error, not a driver TypeError.
    with pytest.raises(ConfigurationError, match="sslrootcert"):
        _ = s.ssl_option
    with pytest.raises(ConfigurationError, match="disable"):
        _ = Settings(database_url=raw, database_sslmode="disable", _env_file=None).ssl_option
    assert Settings(database_url="postgresql://u@h/d?sslmode=require").ssl_option == "require"


def test_readme_lists_every_setting_and_marks_every_secret() -> None:
    # proves: C1, O5
    from pgstack.config import _env_names, _is_secret

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for name, field in Settings.model_fields.items():
        variable = _env_names(name, field)[0].upper()
        # `DATABASE_HOST` / `PORT` / ... rows name the parts after the first.
        part = variable.removeprefix("DATABASE_")
        row = next(
            (r for r in rows if f"`{variable}`" in r or (f"`{part}`" in r and "DATABASE_" in r)),
            None,
        )
        assert row is not None, f"README's configuration table lacks {variable}"
        if _is_secret(field.annotation):
            assert "🔑" in row, f"README does not mark {variable} as a secret (NAME_FILE)"
