"""Settings read from the environment and `.env`, validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pgstack.errors import ConfigurationError

Environment = Literal["development", "test", "production"]
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
_LIBPQ_ONLY_PARAMS = {"sslmode", "ssl", "application_name"}


def to_asyncpg_url(raw: str, variable: str = "DATABASE_URL") -> URL:
    """Parse a PostgreSQL URL (any driver spelling) into a `postgresql+asyncpg` URL."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigurationError(
            f"{variable} is not a valid URL; expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    if url.drivername not in _POSTGRES_SCHEMES:
        raise ConfigurationError(
            f"{variable} uses the scheme {url.drivername!r}; pgstack speaks only PostgreSQL: "
            "use postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    query = {k: v for k, v in url.query.items() if k not in _LIBPQ_ONLY_PARAMS}
    url = url.set(drivername="postgresql+asyncpg", query=query)
    # An empty password ("user:@host") means none; URL.set() cannot clear it.
    return url._replace(password=None) if url.password == "" else url


def render_url(url: URL) -> str:
    """Render a URL for people and logs: the password, if any, shows as `***`."""
    if not url.password:
        return url.render_as_string(hide_password=False)
    return url.render_as_string(hide_password=True)


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
    database_statement_timeout_ms: int | None = Field(default=None, ge=0)
    database_sslmode: SslMode | None = None
    database_replica_urls: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    database_connect_attempts: int = Field(default=5, ge=1)
    database_connect_backoff: float = Field(default=0.5, ge=0)
    database_connect_backoff_max: float = Field(default=8.0, ge=0)
    database_connect_timeout: float = Field(default=10.0, gt=0)

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
    # Comma-separated `kid:base64key` AES-256 keys, newest first (see pgstack.crypto).
    encryption_keys: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PGSTACK_ENCRYPTION_KEYS", "encryption_keys"),
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        # Parse the URLs now so a malformed one fails at start, not at first query.
        _ = self.url
        _ = self.replica_urls

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

    @field_validator("database_replica_urls", mode="before")
    @classmethod
    def _split_replicas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
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
        if self.database_url is not None:
            mode = make_url(self.database_url.get_secret_value()).query.get("sslmode")
            if isinstance(mode, str):
                return mode
        return None

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
            "pool_size": self.database_pool_size,
            "max_overflow": self.database_max_overflow,
            "pool_timeout_s": self.database_pool_timeout,
            "pool_recycle_s": self.database_pool_recycle,
            "pool_pre_ping": self.database_pool_pre_ping,
            "read_pool_size": self.read_pool_size,
            "echo": self.database_echo,
            "statement_timeout_ms": self.database_statement_timeout_ms,
            "sslmode": self.sslmode,
            "environment": self.environment,
            "data_dir": str(self.data_dir),
        }


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        if not name.startswith(("DATABASE_", "PGSTACK_")):
            name = f"PGSTACK_{name}"
        problems.append(f"{name}: {error['msg']}")
    return "Invalid configuration — " + "; ".join(problems) + ". Fix the environment or .env."
