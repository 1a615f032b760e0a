"""Identity settings: password rules, lockout, token lifetimes, hashing cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class IdentityConfig:
    """How strict identity is; the defaults follow OWASP's current guidance.

    `argon2_memory_kib`, `argon2_time_cost` and `argon2_parallelism` set the cost of new
    password hashes (OWASP minimum: 19 MiB, 2 passes, 1 lane); hashes made with weaker
    parameters are upgraded at the user's next successful login.
    """

    password_min_length: int = 12
    #: The lowest strength (0-100, see `check_password_strength`) a new password may have.
    password_min_score: int = 60
    argon2_memory_kib: int = 19 * 1024
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    max_failed_logins: int = 5
    lockout: timedelta = timedelta(minutes=15)
    reset_token_ttl: timedelta = timedelta(hours=1)
    verification_token_ttl: timedelta = timedelta(days=2)
    session_ttl: timedelta = timedelta(days=7)
    #: How long after signing in a session may, without the password again, enrol or remove
    #: two-factor or create API keys.
    reauthentication_window: timedelta = timedelta(minutes=5)
    totp_issuer: str = "pgstack"
    #: Seconds since the epoch, for TOTP time steps (tests pin it; keep `time.time`).
    clock: Callable[[], float] = time.time
    recovery_code_count: int = 10
    #: How often, at most, a key's `last_used_at` is written; verifying stays a read between.
    api_key_touch_interval: timedelta = timedelta(minutes=1)
