"""Password hashing (argon2id, legacy bcrypt), strength checks and generation."""

from __future__ import annotations

import asyncio
import functools
import secrets
import string
import unicodedata
from dataclasses import dataclass, field

from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher
from zxcvbn import zxcvbn  # type: ignore[import-untyped]

from pgstack.errors import InvalidInputError
from pgstack.identity.config import IdentityConfig
from pgstack.identity.text import has_control_characters

# guesses_log10 at which the 0-100 score reaches 100: 10^13 guesses is out of reach of an
# offline attack on an argon2id hash, and zxcvbn's "strong" (score 3) lands at about 60.
_FULL_SCORE_LOG10 = 13.0
_MAX_PASSWORD_LENGTH = 1024  # longer input only makes hashing an easy denial of service
_SCORED_LENGTH = 72  # zxcvbn refuses longer input; a longer password scores as its first 72


def _normalised(password: str) -> str:
    # NFKC, so the same passphrase typed on another keyboard or OS (composed or decomposed
    # accents, full-width forms) is the same password.
    return unicodedata.normalize("NFKC", password)


class PasswordHasher:
    """Hash new passwords with argon2id; verify argon2 and legacy bcrypt hashes.

    `verify_and_update` says whether a password matches and, when the stored hash is bcrypt
    or argon2 with weaker parameters than the current ones, returns a new hash to store.
    Every method has an `a`-prefixed async twin that runs on a worker thread, since one hash
    costs tens of milliseconds of CPU that must not stall the event loop.
    """

    def __init__(self, config: IdentityConfig | None = None) -> None:
        config = config or IdentityConfig()
        self._params = (
            config.argon2_time_cost,
            config.argon2_memory_kib,
            config.argon2_parallelism,
        )
        self._hash = _password_hash(*self._params)

    def __repr__(self) -> str:
        return "PasswordHasher(argon2id)"

    @property
    def dummy_hash(self) -> str:
        """A hash of a random password, verified when there is no user, so timing is the same."""
        return _dummy_hash(*self._params)

    def hash(self, password: str) -> str:
        """An argon2id hash of the password with the current parameters."""
        _check_length(password)
        if has_control_characters(password):
            raise InvalidInputError("The password contains control characters; remove them.")
        return self._hash.hash(_normalised(password))

    def verify_and_update(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        """Whether `password` matches `stored`, and a new hash to store if it is outdated.

        With no stored hash (an external user) a dummy hash is verified instead, so the
        answer takes as long as for a real one, and is always False.
        """
        if len(password) > _MAX_PASSWORD_LENGTH or has_control_characters(password):
            password = password[:_MAX_PASSWORD_LENGTH].encode("utf-8", "replace").decode()
            stored = None  # never matches, still costs one hash
        normalised = _normalised(password)
        if stored is None:
            self._hash.verify(normalised, self.dummy_hash)
            return False, None
        try:
            ok, new_hash = self._hash.verify_and_update(normalised, stored)
            if not ok and normalised != password:
                # Hashed before passwords were normalised: accept the raw form once, and
                # store the normalised form's hash from now on.
                ok, _ = self._hash.verify_and_update(password, stored)
                new_hash = self._hash.hash(normalised) if ok else None
            return ok, new_hash
        except UnknownHashError:
            self._hash.verify(normalised, self.dummy_hash)
            return False, None

    async def ahash(self, password: str) -> str:
        """`hash` on a worker thread."""
        return await asyncio.to_thread(self.hash, password)

    async def averify_and_update(
        self, password: str, stored: str | None
    ) -> tuple[bool, str | None]:
        """`verify_and_update` on a worker thread."""
        return await asyncio.to_thread(self.verify_and_update, password, stored)


@functools.lru_cache(maxsize=8)
def _password_hash(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHash:
    return PasswordHash(
        (
            Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism),
            BcryptHasher(),
        )
    )


@functools.lru_cache(maxsize=8)
def _dummy_hash(time_cost: int, memory_kib: int, parallelism: int) -> str:
    # Made once per parameter set and process, so the first unknown e-mail does not pay a
    # second hash (which would make it measurably slower than a wrong password).
    return _password_hash(time_cost, memory_kib, parallelism).hash(secrets.token_urlsafe(16))


def _check_length(password: str) -> None:
    if len(password) > _MAX_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"The password is longer than {_MAX_PASSWORD_LENGTH} characters; use a shorter one."
        )


@dataclass(frozen=True)
class PasswordStrength:
    """How strong a password is: a 0-100 score, whether it is acceptable, and what to fix."""

    score: int
    acceptable: bool
    problems: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        # The password itself is never part of this object.
        return f"PasswordStrength(score={self.score}, acceptable={self.acceptable})"


def check_password_strength(
    password: str,
    *,
    email: str | None = None,
    name: str | None = None,
    config: IdentityConfig | None = None,
) -> PasswordStrength:
    """Score a password 0-100 and list what makes it unacceptable, in words a user can act on.

    It must be at least `password_min_length` long, not a common password, not built from the
    user's e-mail address or name, and score at least `password_min_score`.
    """
    config = config or IdentityConfig()
    inputs = _personal_words(email, name)
    result = zxcvbn(password[:_SCORED_LENGTH], user_inputs=inputs)
    score = max(0, min(100, round(float(result["guesses_log10"]) * 100 / _FULL_SCORE_LOG10)))
    problems: list[str] = []
    if len(password) < config.password_min_length:
        problems.append(f"Use at least {config.password_min_length} characters.")
    if len(password) > _MAX_PASSWORD_LENGTH:
        problems.append(f"Use at most {_MAX_PASSWORD_LENGTH} characters.")
    sequence = result["sequence"]
    if any(m.get("dictionary_name") == "passwords" for m in sequence) and score < 60:
        problems.append("This is a commonly used password; choose one nobody else would.")
    lowered = password.lower()
    if any(word in lowered for word in inputs if len(word) >= 3) or any(
        m.get("dictionary_name") == "user_inputs" for m in sequence
    ):
        problems.append("Do not build the password from your e-mail address or name.")
    if score < config.password_min_score:
        problems.append(
            f"The password is too easy to guess (strength {score} of 100, "
            f"{config.password_min_score} needed)."
        )
    feedback = result["feedback"]
    suggestions = [s for s in feedback.get("suggestions", []) if s]
    if feedback.get("warning"):
        suggestions.insert(0, feedback["warning"])
    if problems and not suggestions:
        suggestions.append("Use a passphrase of four or more unrelated words.")
    return PasswordStrength(score, not problems, problems, suggestions)


def require_strong_password(
    password: str,
    *,
    email: str | None = None,
    name: str | None = None,
    config: IdentityConfig | None = None,
) -> None:
    """Raise InvalidInputError, naming every problem, unless the password is acceptable."""
    strength = check_password_strength(password, email=email, name=name, config=config)
    if not strength.acceptable:
        raise InvalidInputError("The password is not acceptable: " + " ".join(strength.problems))


def _personal_words(email: str | None, name: str | None) -> list[str]:
    words: list[str] = []
    if email:
        local, _, domain = email.lower().partition("@")
        words.append(local)
        words.extend(part for part in local.replace("_", ".").replace("-", ".").split(".") if part)
        if domain:
            words.append(domain.split(".")[0])
    if name:
        words.extend(part for part in name.lower().split() if part)
    return list(dict.fromkeys(words))


_ALPHABET = string.ascii_letters + string.digits + "-_.!@#%^*+=?"


def generate_password(length: int = 20) -> str:
    """A random password from `secrets`, with lower, upper, digit and symbol characters."""
    if length < 12:
        raise InvalidInputError("Generate passwords of at least 12 characters.")
    while True:
        candidate = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if (
            any(c.islower() for c in candidate)
            and any(c.isupper() for c in candidate)
            and any(c.isdigit() for c in candidate)
            and any(not c.isalnum() for c in candidate)
        ):
            return candidate
