"""One error hierarchy for everything pgstack raises.

Every error carries a message that tells the user what to do, and an HTTP status the web
layer answers with.
"""

from __future__ import annotations


class PgStackError(Exception):
    """Base class of every error pgstack raises."""

    status_code: int = 500
    title: str = "Internal error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(PgStackError):
    """A setting is missing or malformed."""

    title = "Configuration error"


class DatabaseUnavailableError(PgStackError):
    """The database server cannot be reached or refused the connection."""

    status_code = 503
    title = "Database unavailable"


class PoolExhaustedError(PgStackError):
    """No connection became free within the pool timeout."""

    status_code = 503
    title = "Connection pool exhausted"


class StatementTimeoutError(PgStackError):
    """The server cancelled a statement (statement timeout, or a cancel request)."""

    status_code = 503
    title = "Statement cancelled"


class TransactionRetryError(PgStackError):
    """A transaction kept failing with a retryable error until the retries ran out."""

    status_code = 503
    title = "Transaction retries exhausted"


class ConcurrentSessionUseError(PgStackError):
    """One session was used by two tasks at the same time."""

    title = "Session used concurrently"


class EmbeddedServerError(PgStackError):
    """The embedded PostgreSQL server could not be started or stopped."""

    status_code = 503
    title = "Embedded PostgreSQL error"


class NotFoundError(PgStackError):
    """The requested row does not exist."""

    status_code = 404
    title = "Not found"


class ConflictError(PgStackError):
    """The write conflicts with the current state of the data.

    `constraint` names the unique or foreign key constraint that refused it, when one did,
    so a service can put the refusal in its own words.
    """

    status_code = 409
    title = "Conflict"

    def __init__(self, message: str, *, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class InvalidQueryError(PgStackError):
    """A filter, sort or page request names something that cannot be queried."""

    status_code = 422
    title = "Invalid query"


class MigrationError(PgStackError):
    """Migrations could not run, or the schema is not where it should be."""

    title = "Migration error"


class BackupError(PgStackError):
    """A backup or restore could not be made or trusted (tool missing, checksum, dump)."""

    title = "Backup error"


class ProductionSafetyError(PgStackError):
    """A destructive operation was refused because PGSTACK_ENV is production."""

    status_code = 403
    title = "Refused in production"


class EncryptionError(PgStackError):
    """A value could not be encrypted or decrypted (missing key, tampering, moved ciphertext).

    An operator fixes it (keys in PGSTACK_ENCRYPTION_KEYS), not the caller: a 503.
    """

    status_code = 503
    title = "Encryption error"


class LazyLoadError(PgStackError):
    """An attribute that is not loaded was read where an async session cannot load it."""

    title = "Attribute not loaded"


class TenantScopeError(PgStackError):
    """Tenant-scoped data was touched with no tenant in context, or across tenants."""

    status_code = 403
    title = "Tenant scope required"


class AuthenticationError(PgStackError):
    """The credentials (password, token, key or code) are missing, wrong or no longer valid."""

    status_code = 401
    title = "Authentication failed"


class PermissionDeniedError(PgStackError):
    """The caller is known but lacks a role or scope the operation needs."""

    status_code = 403
    title = "Permission denied"


class InvalidInputError(PgStackError):
    """Input was understood but refused (a weak password, a code of the wrong shape)."""

    status_code = 422
    title = "Invalid input"


class TokenRefreshError(PgStackError):
    """A provider token could not be refreshed, or its refresh is backing off after failures."""

    status_code = 502
    title = "Token refresh failed"


class RateLimitedError(PgStackError):
    """A rate limit refused the request; it may be sent again after `retry_after` seconds.

    `headers` go out with the 429 (`Retry-After` always), `violated_policies` names the
    limits that refused it in the problem-details body.
    """

    status_code = 429
    title = "Too many requests"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        headers: dict[str, str] | None = None,
        violated_policies: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.headers = {"Retry-After": str(self.retry_after), **(headers or {})}
        self.violated_policies = violated_policies or []
