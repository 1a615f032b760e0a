"""Text hygiene for identity input: what an address, name, password or scope may hold."""

from __future__ import annotations

import unicodedata

from pgstack.errors import InvalidInputError


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a control character (NUL, ESC, ...) or a lone UTF-16 surrogate.

    Neither belongs in an address, a name, a password or a scope, and both break further
    down (PostgreSQL refuses NUL, UTF-8 cannot encode a surrogate), so they are refused first.
    """
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def check_text(text: str, what: str) -> str:
    """`text`, or InvalidInputError naming `what` if it holds control characters."""
    if has_control_characters(text):
        raise InvalidInputError(f"The {what} contains control characters; remove them.")
    return text
