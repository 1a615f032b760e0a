"""Key ring and authenticated encryption (AES-256-GCM) for secrets stored in the database.

Keys come from `PGSTACK_ENCRYPTION_KEYS`: comma-separated `kid:base64key` entries, newest
first. New values are encrypted with the newest key; every stored value names the key it was
encrypted with, so older keys keep decrypting until everything is re-encrypted. Each value is
bound to a context (for columns: `table.column`) as associated data, so a ciphertext copied to
another column, or changed in any byte, fails to decrypt instead of yielding wrong data.

Stored form: `v1:<kid>:<base64url(nonce || ciphertext || tag)>`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pgstack.errors import EncryptionError

ENV_VAR = "PGSTACK_ENCRYPTION_KEYS"
_VERSION = "v1"
_NONCE_BYTES = 12
_KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def generate_key(kid: str) -> str:
    """A new random AES-256 key as a `kid:base64key` entry for `PGSTACK_ENCRYPTION_KEYS`."""
    _check_kid(kid)
    return f"{kid}:{base64.b64encode(os.urandom(_KEY_BYTES)).decode()}"


def row_context(column: str, *row: str) -> str:
    """The context of a value bound to its column (`table.column`) and to its row's identity.

    A ciphertext copied into another row then fails to decrypt instead of serving that row.
    JSON keeps the row's values unambiguous whatever text they hold.
    """
    return f"{column}{json.dumps(list(row), ensure_ascii=False)}"


def key_id_of(token: str) -> str:
    """The id of the key a stored value was encrypted with."""
    return _split(token, "value")[1]


def _check_kid(kid: str) -> None:
    if not _KID.match(kid):
        raise EncryptionError(
            f"Key id {kid[:64]!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'."
        )


class KeyRing:
    """Encryption keys by id, newest first; encrypts with the newest, decrypts with any."""

    __slots__ = ("_ciphers", "_primary")

    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        ciphers: dict[str, AESGCM] = {}
        for position, (kid, key) in enumerate(keys, start=1):
            _check_kid(kid)
            if kid in ciphers:
                raise EncryptionError(f"Key id {kid!r} appears twice in {ENV_VAR}.")
            if len(key) != _KEY_BYTES:
                raise EncryptionError(
                    f"Key {kid!r} (entry {position} of {ENV_VAR}) is {len(key)} bytes; AES-256 "
                    f"needs {_KEY_BYTES}. Generate one with pgstack.crypto.generate_key()."
                )
            ciphers[kid] = AESGCM(key)
        if not ciphers:
            raise EncryptionError(
                f"No encryption keys: set {ENV_VAR} to `kid:base64key` entries, newest first "
                "(pgstack.crypto.generate_key('k1') makes one)."
            )
        self._ciphers = ciphers
        self._primary = next(iter(ciphers))

    @classmethod
    def parse(cls, raw: str) -> KeyRing:
        """A key ring from `kid:base64key,kid:base64key` text, newest first."""
        keys: list[tuple[str, bytes]] = []
        for position, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
            if not entry:
                continue
            kid, sep, encoded = entry.partition(":")
            if not sep:
                raise EncryptionError(
                    f"Entry {position} of {ENV_VAR} has no key id: write it as `kid:base64key`."
                )
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise EncryptionError(
                    f"Key {kid.strip()[:64]!r} (entry {position} of {ENV_VAR}) is not valid base64."
                ) from None
            keys.append((kid.strip(), key))
        return cls(keys)

    @classmethod
    def from_env(cls) -> KeyRing:
        """The key ring named by `PGSTACK_ENCRYPTION_KEYS` (environment or `.env`)."""
        raw = os.environ.get(ENV_VAR)
        if raw is None:
            from pgstack.config import Settings

            secret = Settings().encryption_keys
            raw = secret.get_secret_value() if secret is not None else ""
        return cls.parse(raw)

    @property
    def primary_kid(self) -> str:
        """The id of the newest key, the one new values are encrypted with."""
        return self._primary

    @property
    def kids(self) -> tuple[str, ...]:
        """All key ids, newest first."""
        return tuple(self._ciphers)

    def __repr__(self) -> str:
        return f"KeyRing(kids={list(self._ciphers)!r})"

    def encrypt(self, plaintext: str | bytes, context: str) -> str:
        """Encrypt under the newest key, bound to `context` (e.g. `table.column`)."""
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        kid = self._primary
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, data, _aad(kid, context))
        return f"{_VERSION}:{kid}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, context: str) -> bytes:
        """Decrypt a value made by `encrypt` with the same context; any change fails loudly."""
        kid, cipher, nonce, sealed = self._opened(token, context)
        try:
            return cipher.decrypt(nonce, sealed, _aad(kid, context))
        except InvalidTag:
            raise EncryptionError(
                f"The encrypted value in {context} failed authentication: it was altered, or "
                "it was copied from another column or table. It is not returned."
            ) from None

    def _opened(self, token: str, context: str) -> tuple[str, AESGCM, bytes, bytes]:
        """The key id, its cipher, the nonce and the sealed data of a stored value."""
        _, kid, body = _split(token, context)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise EncryptionError(
                f"The value in {context} was encrypted with key {kid!r}, which is not in "
                f"{ENV_VAR} (known: {', '.join(self._ciphers)}). Add that key back, after the "
                "newest, until every value is re-encrypted."
            )
        try:
            raw = base64.urlsafe_b64decode(body.encode())
        except (binascii.Error, ValueError):
            raise EncryptionError(f"The encrypted value in {context} is corrupt.") from None
        if len(raw) <= _NONCE_BYTES:
            raise EncryptionError(f"The encrypted value in {context} is corrupt (too short).")
        return kid, cipher, raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]

    def decrypt_text(self, token: str, context: str) -> str:
        """Decrypt to text (UTF-8)."""
        return self.decrypt(token, context).decode()

    def needs_reencryption(self, token: str) -> bool:
        """Whether a stored value was encrypted with a key other than the newest."""
        return key_id_of(token) != self._primary

    def reencrypt(self, token: str, context: str) -> str:
        """The value re-encrypted under the newest key (unchanged if it already is).

        A value its key fails to authenticate is an EncryptionError that names the key: in a
        rotation the likely cause is a wrong older key in the ring (a mistyped or regenerated
        one under the right id), which a read cannot tell from an altered value either.
        """
        if not self.needs_reencryption(token):
            return token
        kid, cipher, nonce, sealed = self._opened(token, context)
        try:
            plaintext = cipher.decrypt(nonce, sealed, _aad(kid, context))
        except InvalidTag:
            raise EncryptionError(
                f"The value in {context} cannot be decrypted with key {kid!r} of {ENV_VAR}: is "
                "that the key it was encrypted with (the current key before the rotation)? "
                "If the key is right, the value was altered or copied from another column or "
                "row. It is left as it is."
            ) from None
        return self.encrypt(plaintext, context)


def _aad(kid: str, context: str) -> bytes:
    return f"pgstack:{_VERSION}:{kid}:{context}".encode()


def _split(token: str, context: str) -> tuple[str, str, str]:
    parts = token.split(":", 2) if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != _VERSION:
        raise EncryptionError(
            f"The value in {context} is not a pgstack-encrypted value (it may have been written "
            "around pgstack in plain text). It is not returned."
        )
    return parts[0], parts[1], parts[2]


_lock = threading.Lock()
_ring: KeyRing | None = None


def configure_encryption(keys: KeyRing | str | None) -> None:
    """Set the process-wide key ring (a KeyRing or `kid:base64key,...` text); None resets it.

    After a reset the ring is read again from `PGSTACK_ENCRYPTION_KEYS` on first use.
    """
    global _ring
    ring = KeyRing.parse(keys) if isinstance(keys, str) else keys
    with _lock:
        _ring = ring


def get_key_ring() -> KeyRing:
    """The process-wide key ring, read from `PGSTACK_ENCRYPTION_KEYS` on first use."""
    global _ring
    ring = _ring
    if ring is None:
        with _lock:
            if _ring is None:
                _ring = KeyRing.from_env()
            ring = _ring
    return ring
