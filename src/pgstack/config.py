"""Settings read from the environment and `.env`, validated at start."""

from __future__ import annotations

import json
import math
import re
import ssl
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pgstack.errors import ConfigurationError

Environment = Literal["development", "test", "production"]
Pooler = Literal["none", "pgbouncer-transaction"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

_POSTGRES_SCHEMES = {
    "postgres",
    "postgresql",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+pg8000",
}
# Query parameters that belong to libpq URLs but are settings of their own here.
_TLS_FILE_PARAMS = ("sslrootcert", "sslcert", "sslkey")
_LIBPQ_ONLY_PARAMS = {"sslmode", "ssl", "application_name", *_TLS_FILE_PARAMS}
# Query parameters that reach asyncpg.connect() as they are (strings): its keyword arguments
# that take a string, and SQLAlchemy's statement cache size. Any other becomes a TypeError
# at connect, so it is refused when the URL is read.
_DRIVER_PARAMS = {
    "host",
    "port",
    "user",
    "password",
    "database",
    "passfile",
    "service",
    "servicefile",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
    "direct_tls",
    "timeout",
    "command_timeout",
    "prepared_statement_cache_size",
}
_URL_PARAMS = frozenset(_LIBPQ_ONLY_PARAMS | _DRIVER_PARAMS)
# Where the setting of a well-known libpq parameter lives here instead.
_PARAM_HINTS = {
    "connect_timeout": "set DATABASE_CONNECT_TIMEOUT (seconds) instead",
    "options": "set server settings with ALTER ROLE ... SET, or DATABASE_STATEMENT_TIMEOUT_MS",
    "statement_timeout": "set DATABASE_STATEMENT_TIMEOUT_MS instead",
    "dbname": "name the database in the path: postgresql://USER@HOST/DATABASE",
}


# scheme://[userinfo@]hosts[/database][?query]: libpq's URL shape, whose hosts may be a list.
_LIBPQ_URL = re.compile(r"^(?P<scheme>[\w+.-]+)://(?:(?P<userinfo>[^/?#]*)@)?(?P<hosts>[^/?#@]*)")


def _hosts_to_query(raw: str) -> str:
    """libpq's `postgresql://u@h1:5432,h2:5433/db` as SQLAlchemy spells it: `?host=h1:5432&...`.

    Each host keeps its own port (none: 5432). A URL with one host is returned unchanged.
    """
    match = _LIBPQ_URL.match(raw)
    if match is None or "," not in match["hosts"]:
        return raw
    hosts = [h.strip() for h in match["hosts"].split(",")]
    if not all(hosts):
        raise ConfigurationError("an empty host in the host list")
    rest = raw[match.end() :]
    path, _, query = rest.partition("?")
    pairs = "&".join(f"host={quote(h, safe=':[]')}" for h in hosts)
    userinfo = f"{match['userinfo']}@" if match["userinfo"] is not None else ""
    return f"{match['scheme']}://{userinfo}{path or '/'}?{pairs}{'&' + query if query else ''}"


def _whole(value: str, digits: int) -> bool:
    """Whether `value` is a whole number of at most `digits` ASCII digits."""
    return 0 < len(value) <= digits and value.isascii() and value.isdigit()


def _port(value: str | int) -> int:
    """A port number, or ValueError if `value` is not a whole number from 1 to 65535."""
    text = str(value)
    if not (_whole(text, 5) and 0 < int(text) < 65536):
        raise ValueError(f"port {text[:20]!r} is not a number from 1 to 65535")
    return int(text)


def url_hosts(url: URL) -> list[tuple[str, int]]:
    """Every `(host, port)` a URL names, in order: one, or several (libpq's multi-host form)."""
    if url.host or "host" not in url.query:
        return [(url.host or "localhost", _port(url.port or 5432))]
    named = url.query["host"]
    ports = url.query.get("port")
    port_list = [ports] if isinstance(ports, str) else list(ports or ())
    hosts = []
    for i, entry in enumerate([named] if isinstance(named, str) else named):
        host, port = entry, port_list[i] if i < len(port_list) else None
        if entry.startswith("["):  # [::1]:5432
            host, _, tail = entry[1:].partition("]")
            port = tail.removeprefix(":") or port
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        hosts.append((host or "localhost", _port(port or url.port or 5432)))
    return hosts


def hosts_text(url: URL) -> str:
    """`host:port` of a URL, or `h1:p1,h2:p2` for a multi-host one, for messages."""
    return ",".join(host_port(host, port) for host, port in url_hosts(url))


def host_port(host: str, port: int | str) -> str:
    """`host:port`, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def libpq_url(url: URL) -> str:
    """The URL as libpq and `asyncpg.connect` read it, password included (never log it).

    Several TCP hosts go back into the host part (`h1:5432,h2:5433`): both take only the
    last of repeated `host` parameters.
    """
    plain = url.set(drivername="postgresql")
    hosts = url_hosts(url)
    if len(hosts) < 2:
        return plain.render_as_string(hide_password=False)
    query = {k: v for k, v in url.query.items() if k not in ("host", "port")}
    single = plain.set(host="placeholder", port=None, query=query)
    rendered = single.render_as_string(hide_password=False)
    # A Unix-socket folder is percent-encoded there (`%2Frun%2Fpostgresql:5432`).
    listed = ",".join(host_port(quote(host, safe=":"), port) for host, port in hosts)
    return rendered.replace("@placeholder/", f"@{listed}/", 1).replace(
        "://placeholder/", f"://{listed}/", 1
    )


def to_asyncpg_url(raw: str, variable: str = "DATABASE_URL") -> URL:
    """Parse a PostgreSQL URL (any driver spelling) into a `postgresql+asyncpg` URL.

    Several hosts (`postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write`, as
    libpq writes them) become SQLAlchemy's `?host=h1:5432&host=h2:5433`: asyncpg tries them
    in order and keeps the first that matches `target_session_attrs` (`read-write`, `primary`,
    `standby`, `prefer-standby`, `read-only`, `any`).
    """
    try:
        url = make_url(_hosts_to_query(raw.strip()))
        if url.drivername in _POSTGRES_SCHEMES:
            url_hosts(url)  # a malformed port in a host list fails here, at start
    except (ArgumentError, ValueError, ConfigurationError):
        raise ConfigurationError(
            f"{variable} is not a valid URL; expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            " (or several hosts: postgresql://USER@HOST1:PORT1,HOST2:PORT2/DATABASE)"
        ) from None
    if url.drivername in _POSTGRES_SCHEMES and any("@" in h for h, _ in url_hosts(url)):
        # "user:Top@Secret@host": the host part would hold the rest of the password, and
        # every message that names the host would show it.
        raise ConfigurationError(
            f"{variable} has an '@' after the one that ends the user and password: a user or "
            "password containing '@' must be percent-encoded as %40 "
            "(postgresql://USER:PASS%40WORD@HOST:PORT/DATABASE)"
        )
    if url.drivername not in _POSTGRES_SCHEMES:
        raise ConfigurationError(
            f"{variable} uses the scheme {url.drivername!r}; pgstack speaks only PostgreSQL: "
            "use postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    _refuse_unknown_params(url, variable)
    _check_param_values(url, variable)
    query = {k: v for k, v in url.query.items() if k not in _LIBPQ_ONLY_PARAMS}
    password = query.pop("password", None)
    if url.host and "port" in query:
        # postgresql://USER@HOST/DATABASE?port=5433: the port belongs with the host it is for.
        port = query.pop("port")
        url = url.set(port=_port(str(port)) if port else None)
    if str(query.get("direct_tls", "")).lower() == "false":
        # asyncpg takes any non-empty string as true: 'false' is its default, left out.
        del query["direct_tls"]
    url = url.set(drivername="postgresql+asyncpg", query=query)
    if password:
        # `?password=` wins over the userinfo's, as in libpq; where it is a password, URLs
        # render it as *** instead of printing it with the query.
        url = url.set(password=password if isinstance(password, str) else password[-1])
    # An empty password ("user:@host") means none; URL.set() cannot clear it.
    return url._replace(password=None) if url.password == "" else url


def _refuse_unknown_params(url: URL, variable: str) -> None:
    """A ConfigurationError naming the first query parameter pgstack cannot pass on."""
    unknown = [name for name in url.query if name not in _URL_PARAMS]
    if not unknown:
        return
    name = unknown[0]
    shown = repr(name[:60] + ("..." if len(name) > 60 else ""))
    hint = _PARAM_HINTS.get(name, "remove it")
    raise ConfigurationError(
        f"{variable} has the query parameter {shown}, which pgstack cannot pass to the "
        f"server ({hint}). Accepted: {', '.join(sorted(_URL_PARAMS))}."
    )


_SSL_MODES = typing.get_args(SslMode)
_TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
# Parameters whose value must be one of these words.
_PARAM_CHOICES = {
    "sslmode": _SSL_MODES,
    "ssl": _SSL_MODES,
    "target_session_attrs": _TARGET_SESSION_ATTRS,
    "direct_tls": ("true", "false"),
}


def _check_param_values(url: URL, variable: str) -> None:
    """A ConfigurationError naming the first query parameter whose value cannot work.

    A parameter given twice has no one meaning (libpq keeps the last, SQLAlchemy passes
    both on), so only `host` and `port`, which list several servers, may repeat; numbers
    are checked as numbers. The value of `password` is never shown.
    """
    hosts = url.query.get("host")
    host_count = 1 if hosts is None or isinstance(hosts, str) else len(hosts)
    for name, given in url.query.items():
        values = [given] if isinstance(given, str) else list(given)

        def refuse(problem: str, name: str = name) -> typing.NoReturn:
            raise ConfigurationError(f"{variable} has the query parameter {name!r} {problem}.")

        if len(values) > 1 and name not in ("host", "port"):
            refuse(f"{len(values)} times; give it once")
        if name == "port":
            if len(values) > 1 and len(values) != host_count:
                refuse(
                    f"{len(values)} times for {host_count} host(s); give one port per host "
                    "(postgresql://USER@HOST1:PORT1,HOST2:PORT2/DATABASE)"
                )
            for value in values:
                try:
                    if value:
                        _port(value)
                except ValueError:
                    refuse(f"= {value[:20]!r}, which is not a port: give a number 1-65535")
        value = values[0] if values else ""
        if name in _PARAM_CHOICES and value.lower() not in _PARAM_CHOICES[name]:
            refuse(f"= {value[:40]!r}; give one of {', '.join(_PARAM_CHOICES[name])}")
        if name in ("timeout", "command_timeout"):
            try:
                seconds = float(value)
            except ValueError:
                seconds = math.nan
            if not (0 < seconds < math.inf):
                refuse(f"= {value[:40]!r}, which is not a number of seconds above 0")
        if name == "prepared_statement_cache_size" and not _whole(value, 9):
            refuse(f"= {value[:40]!r}, which is not a whole number from 0 to 999999999")
    # libpq's ?host= and ?port= win over the authority's, which messages, backups and the
    # admin commands would name instead: one server named two ways is refused.
    for name, authority in (("host", url.host), ("port", url.port)):
        if authority and name in url.query:
            raise ConfigurationError(
                f"{variable} names the {name} twice, after the '@' and as ?{name}=; keep one."
            )
    modes = {url.query.get(n) for n in ("sslmode", "ssl") if n in url.query}
    if len({str(m).lower() for m in modes}) > 1:
        raise ConfigurationError(
            f"{variable} has both 'sslmode' and 'ssl', with different values; give sslmode once."
        )


def render_url(url: URL) -> str:
    """Render a URL for people and logs: the password, if any, shows as `***`."""
    if not url.password:
        return url.render_as_string(hide_password=False)
    return url.render_as_string(hide_password=True)


def _is_secret(annotation: Any) -> bool:
    """Whether a field's type holds a SecretStr (`SecretStr | None`, `list[SecretStr]`, ...)."""
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in typing.get_args(annotation))


def _env_names(name: str, field: FieldInfo) -> list[str]:
    """The (lower-case) variables a field is read from: its aliases, else its name."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [choice.lower() for choice in alias.choices if isinstance(choice, str)]
    return [(alias if isinstance(alias, str) else name).lower()]


class SecretFilesSource(PydanticBaseSettingsSource):
    """Every secret setting `NAME` also reads the file named by `NAME_FILE` (container secrets).

    `NAME_FILE` comes from the environment or `.env`, like `NAME`; naming both is an error,
    so a value cannot silently win over the file meant to replace it.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], *named: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._named = named

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Nothing per field: __call__ reads every field's NAME_FILE at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        variables: dict[str, str | None] = {}
        for source in reversed(self._named):  # the environment wins over .env, as for values
            variables.update(getattr(source, "env_vars", {}))
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if not _is_secret(field.annotation):
                continue
            for env_name in _env_names(name, field):
                path = variables.get(f"{env_name}_file")
                if not path:
                    continue
                variable = f"{env_name.upper()}_FILE"
                if variables.get(env_name) is not None:
                    raise ConfigurationError(
                        f"Both {env_name.upper()} and {variable} are set; keep one of them."
                    )
                try:
                    values[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
                except (OSError, UnicodeDecodeError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                    raise ConfigurationError(
                        f"{variable} names {path!r}, which cannot be read ({reason}); "
                        "point it at a readable file holding the secret."
                    ) from None
        return values


# A browser's Origin header: scheme, host, optional port; nothing after.
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


class Settings(BaseSettings):
    """pgstack's settings; every field is read from the environment variable of its name."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    database_url: SecretStr | None = None
    database_host: str | None = None
    database_port: int = Field(default=5432, ge=1, le=65535)
    database_name: str = "postgres"
    database_user: str = "postgres"
    database_password: SecretStr | None = None
    #: URL of the schema owner, which runs migrations (see `pgstack db init`); None: DATABASE_URL.
    database_migration_url: SecretStr | None = None

    database_pool_size: int = Field(default=20, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)
    database_pool_timeout: float = Field(default=30.0, gt=0)
    database_pool_recycle: int = Field(default=3600, ge=-1)
    database_pool_pre_ping: bool = True
    #: pgstack's read lane (single-statement reads outside a transaction, on its own asyncpg
    #: pool, opened on demand): at most this many connections; None = DATABASE_POOL_SIZE, 0 off.
    database_read_pool_size: int | None = Field(default=None, ge=0)
    database_echo: bool = False
    #: Proxies whose X-Forwarded-For is believed (comma-separated addresses or networks).
    trusted_proxies: str = ""
    #: Log records as JSON lines, with the request id, actor, tenant and IP of each.
    log_json: bool = False
    database_statement_timeout_ms: int | None = Field(default=None, ge=0)
    database_sslmode: SslMode | None = None
    #: TLS files (PEM): the CA that signed the server's certificate, and a client certificate
    #: and key; each may also come from DATABASE_URL's `sslrootcert`, `sslcert`, `sslkey`.
    database_sslrootcert: Path | None = None
    database_sslcert: Path | None = None
    database_sslkey: Path | None = None
    database_replica_urls: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: A replica whose replay is further behind than this (seconds) is taken out of rotation.
    database_replica_max_lag_s: float = Field(default=5.0, ge=0)
    #: How often each replica is probed (reachable, in recovery, replay lag), in seconds.
    database_replica_check_interval_s: float = Field(default=1.0, gt=0)
    #: After a write, the same request or task reads from the primary for this many seconds.
    database_read_your_writes_s: float = Field(default=5.0, ge=0)

    database_connect_attempts: int = Field(default=5, ge=1)
    database_connect_backoff: float = Field(default=0.5, ge=0)
    database_connect_backoff_max: float = Field(default=8.0, ge=0)
    database_connect_timeout: float = Field(default=10.0, gt=0)
    #: What sits between pgstack and PostgreSQL: `none`, or `pgbouncer-transaction` (PgBouncer
    #: in transaction pooling mode: no named prepared statements reused, no session state;
    #: see `pgstack.db.pooler`).
    database_pooler: Pooler = "none"

    environment: Environment = Field(
        default="development", validation_alias=AliasChoices("PGSTACK_ENV", "environment")
    )
    data_dir: Path = Field(
        default=Path(".pgstack"), validation_alias=AliasChoices("PGSTACK_DATA_DIR", "data_dir")
    )
    health_latency_warn_ms: float = Field(
        default=100.0,
        ge=0,
        validation_alias=AliasChoices("PGSTACK_HEALTH_LATENCY_WARN_MS", "health_latency_warn_ms"),
    )
    health_query_warn_ms: float = Field(
        default=500.0,
        ge=0,
        validation_alias=AliasChoices("PGSTACK_HEALTH_QUERY_WARN_MS", "health_query_warn_ms"),
    )
    migration_lock_wait_s: float = Field(
        default=60.0,
        gt=0,
        validation_alias=AliasChoices("PGSTACK_MIGRATION_LOCK_WAIT_S", "migration_lock_wait_s"),
    )
    migration_lock_timeout_ms: int = Field(
        default=5000,
        ge=1,
        validation_alias=AliasChoices(
            "PGSTACK_MIGRATION_LOCK_TIMEOUT_MS", "migration_lock_timeout_ms"
        ),
    )
    health_pool_warn_ratio: float = Field(
        default=0.8,
        gt=0,
        le=1,
        validation_alias=AliasChoices("PGSTACK_HEALTH_POOL_WARN_RATIO", "health_pool_warn_ratio"),
    )
    #: Serve the API docs (`/docs`) and the OpenAPI schema (`/openapi.json`); off in production
    #: when the API should not describe itself to whoever asks.
    docs: bool = Field(default=True, validation_alias=AliasChoices("PGSTACK_DOCS", "docs"))
    #: Let anyone sign up through `POST /auth/register` in `pgstack serve`; off where an
    #: administrator creates the accounts.
    registration: bool = Field(
        default=True, validation_alias=AliasChoices("PGSTACK_REGISTRATION", "registration")
    )
    #: Origins whose browser scripts may call the API (CORS), comma-separated, each as
    #: `scheme://host[:port]`, or `*` for any; empty: no CORS headers (same origin only).
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("PGSTACK_CORS_ORIGINS", "cors_origins"),
    )
    #: How long (seconds) a browser may keep a preflight's answer.
    cors_max_age: int = Field(
        default=600,
        ge=0,
        le=86400,
        validation_alias=AliasChoices("PGSTACK_CORS_MAX_AGE", "cors_max_age"),
    )
    # Comma-separated `kid:base64key` AES-256 keys, newest first (see pgstack.crypto).
    encryption_keys: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PGSTACK_ENCRYPTION_KEYS", "encryption_keys"),
    )

    # The key that signs page cursors; the same on every replica (see pgstack.repository).
    cursor_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PGSTACK_CURSOR_SECRET", "cursor_secret"),
    )

    # Comma-separated server secrets for API-key hashes (HMAC-SHA-256), newest first.
    api_key_peppers: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PGSTACK_API_KEY_PEPPERS", "api_key_peppers"),
    )

    #: Requests an API key may make, per its tier (JSON: tier -> limits such as
    #: "6000/minute" or "10/second; 5000/hour"; "" for none). Sessions count as "session",
    #: an unknown tier as "standard". Checked at start by pgstack.web.ratelimit.
    rate_limit_tiers: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {
            "standard": "6000/minute",
            "session": "6000/minute",
            "premium": "60000/minute",
            "unlimited": "",
        },
        validation_alias=AliasChoices("PGSTACK_RATE_LIMIT_TIERS", "rate_limit_tiers"),
    )
    #: Requests a tenant may make, per its plan tier (same form; an unknown plan is "default").
    rate_limit_plans: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {
            "default": "60000/minute",
            "free": "6000/minute",
            "enterprise": "",
        },
        validation_alias=AliasChoices("PGSTACK_RATE_LIMIT_PLANS", "rate_limit_plans"),
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        # Parse the URLs now so a malformed one fails at start, not at first query.
        _ = self.url
        _ = self.replica_urls
        if self.environment == "production" and not self.is_configured:
            raise ConfigurationError(
                "PGSTACK_ENV=production needs a database server: set DATABASE_URL (or "
                "DATABASE_HOST and friends); the embedded PostgreSQL is for development only."
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = SecretFilesSource(settings_cls, env_settings, dotenv_settings)
        return init_settings, env_settings, dotenv_settings, files, file_secret_settings

    def missing_secrets(self, *, encryption: bool = True, cursors: bool = True) -> list[str]:
        """The secret settings a service needs and lacks (encrypted columns, page cursors)."""
        missing = []
        if encryption and self.encryption_keys is None:
            missing.append("PGSTACK_ENCRYPTION_KEYS")
        if cursors and self.cursor_secret is None:
            missing.append("PGSTACK_CURSOR_SECRET")
        return missing

    def require_production_secrets(self, *, encryption: bool = True, cursors: bool = True) -> None:
        """In production, refuse to go on without the secrets the service's modules need."""
        missing = self.missing_secrets(encryption=encryption, cursors=cursors)
        if self.environment == "production" and missing:
            raise ConfigurationError(
                f"PGSTACK_ENV=production needs {' and '.join(missing)}: set them (or "
                "NAME_FILE pointing at a file with the value); see docs/production.md."
            )

    @field_validator("encryption_keys")
    @classmethod
    def _check_encryption_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from pgstack.crypto import KeyRing
            from pgstack.errors import EncryptionError

            try:
                KeyRing.parse(value.get_secret_value())
            except EncryptionError as exc:
                # The message names key ids and positions, never key material.
                raise ValueError(exc.message) from None
        return value

    @field_validator("api_key_peppers")
    @classmethod
    def _check_api_key_peppers(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            peppers = [p.strip() for p in value.get_secret_value().split(",")]
            if any(len(p) < 32 for p in peppers):
                raise ValueError(
                    "each comma-separated pepper needs at least 32 characters "
                    "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
        return value

    @field_validator("rate_limit_tiers", "rate_limit_plans", mode="before")
    @classmethod
    def _decode_limit_table(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError(
                    'must be a JSON object of tier names and limits, such as {"standard": '
                    '"6000/minute", "premium": "10/second; 50000/hour"}'
                ) from None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for origin in value:
                if origin != "*" and not (isinstance(origin, str) and _ORIGIN.fullmatch(origin)):
                    raise ValueError(
                        f"{str(origin)[:80]!r} is not an origin: give scheme://host[:port] "
                        "(no path, no trailing slash), such as https://app.example.com, or *"
                    )
        return value

    @field_validator("database_replica_urls", mode="before")
    @classmethod
    def _split_replicas(cls, value: Any) -> Any:
        if isinstance(value, str):
            # A comma starts the next URL only before a scheme: a URL's own host list
            # (`postgresql://u@r1:5432,r2:5432/db?target_session_attrs=prefer-standby`) stays.
            parts = re.split(r",(?=\s*[A-Za-z][\w+.-]*://)", value)
            urls = [part.strip().rstrip(",").strip() for part in parts]  # "a, b," is fine
            return [url for url in urls if url]
        return value

    @property
    def is_configured(self) -> bool:
        """Whether a database server was named; when not, pgstack starts an embedded one."""
        return self.database_url is not None or self.database_host is not None

    @property
    def url(self) -> URL | None:
        """The asyncpg URL of the primary, or None when no server is configured."""
        if self.database_url is not None:
            return to_asyncpg_url(self.database_url.get_secret_value())
        if self.database_host is not None:
            password = self.database_password.get_secret_value() if self.database_password else None
            return URL.create(
                "postgresql+asyncpg",
                username=self.database_user,
                password=password,
                host=self.database_host,
                port=self.database_port,
                database=self.database_name,
            )
        return None

    @property
    def sslmode(self) -> str | None:
        """SSL mode: `DATABASE_SSLMODE`, else the `sslmode` of `DATABASE_URL`."""
        if self.database_sslmode is not None:
            return self.database_sslmode
        mode = self._url_param("sslmode") or self._url_param("ssl")
        return mode.lower() if mode else None

    def _url_param(self, name: str) -> str | None:
        if self.database_url is None:
            return None
        raw = _hosts_to_query(self.database_url.get_secret_value().strip())
        value = make_url(raw).query.get(name)
        return value if isinstance(value, str) else None

    @property
    def tls_files(self) -> dict[str, Path | None]:
        """`sslrootcert`, `sslcert`, `sslkey`: from DATABASE_SSL* settings, else the URL."""
        return {
            name: getattr(self, f"database_{name}") or _path(self._url_param(name))
            for name in _TLS_FILE_PARAMS
        }

    @property
    def ssl_option(self) -> ssl.SSLContext | str | None:
        """What asyncpg's `ssl` argument gets: the SSL mode, or a context when files are given.

        With a CA file (`sslrootcert`), the server's certificate is verified: against the
        host name too unless the mode is `verify-ca` or `require`; `disable` with TLS files is
        an error, any other mode with them requires TLS.
        """
        mode = self.sslmode
        files = self.tls_files
        if not any(files.values()):
            return mode
        if mode == "disable":
            raise ConfigurationError(
                "DATABASE_SSLMODE is disable but TLS files are set (sslrootcert, sslcert or "
                "sslkey); drop them or choose require, verify-ca or verify-full."
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if files["sslrootcert"]:
                context.load_verify_locations(cafile=str(files["sslrootcert"]))
                context.check_hostname = mode not in ("require", "verify-ca")
            else:
                if mode in ("verify-ca", "verify-full"):
                    context.load_default_certs()
                else:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            if files["sslcert"]:
                key = files["sslkey"]
                context.load_cert_chain(str(files["sslcert"]), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"The TLS files of the database connection cannot be loaded ({exc}); check "
                "DATABASE_SSLROOTCERT, DATABASE_SSLCERT and DATABASE_SSLKEY (or the URL's "
                "sslrootcert, sslcert, sslkey)."
            ) from None
        return context

    @property
    def replica_urls(self) -> list[URL]:
        """The asyncpg URLs of the read replicas."""
        return [
            to_asyncpg_url(u.get_secret_value(), "DATABASE_REPLICA_URLS")
            for u in self.database_replica_urls
        ]

    @property
    def read_pool_size(self) -> int:
        """Connections the read lane may open (0: the lane is off)."""
        size = self.database_read_pool_size
        return self.database_pool_size if size is None else size

    def with_url(self, url: URL | str) -> Settings:
        """A copy of these settings pointing at another database."""
        raw = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        return self.model_copy(update={"database_url": SecretStr(raw)})

    def summary(self) -> dict[str, Any]:
        """The settings as people may see them: no password, anywhere."""
        url = self.url
        return {
            "database_url": render_url(url) if url is not None else "(embedded)",
            "replicas": [render_url(u) for u in self.replica_urls],
            "replica_max_lag_s": self.database_replica_max_lag_s,
            "read_your_writes_s": self.database_read_your_writes_s,
            "pool_size": self.database_pool_size,
            "max_overflow": self.database_max_overflow,
            "pool_timeout_s": self.database_pool_timeout,
            "pool_recycle_s": self.database_pool_recycle,
            "pool_pre_ping": self.database_pool_pre_ping,
            "read_pool_size": self.read_pool_size,
            "echo": self.database_echo,
            "statement_timeout_ms": self.database_statement_timeout_ms,
            "sslmode": self.sslmode,
            **{name: str(path) for name, path in self.tls_files.items() if path},
            "environment": self.environment,
            "data_dir": str(self.data_dir),
        }


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        if not name.startswith(("DATABASE_", "PGSTACK_")):
            name = f"PGSTACK_{name}"
        problems.append(f"{name}: {error['msg']}")
    return "Invalid configuration — " + "; ".join(problems) + ". Fix the environment or .env."
