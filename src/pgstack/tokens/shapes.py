"""What a refresher may answer, and what a failed refresh may record about itself.

Real OAuth clients answer in different shapes, and the vault takes them all:

- Authlib's `OAuth2Token`: a dict with `expires_in` and an integer epoch `expires_at`;
- requests-oauthlib's dict: `expires_in` and a float epoch `expires_at`;
- httpx-oauth's `OAuth2Token`: a dict with an integer epoch `expires_at`;
- a provider's raw JSON: `expires_in` as a number or text, sometimes an ISO-8601
  `expires_at`, often no `refresh_token` (the old one stays valid).

`rotated_refresh_token` reads only the refresh token and cannot fail, so the vault stores
it before anything else about the answer is looked at. An error is recorded as its type,
the provider's error code when it carries one, and its text with every token value removed
in every encoding a client might have quoted it in.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, quote_plus

ERROR_MAX = 500
_REDACTED = "***"
# RFC 6749 section 5.2: error codes are printable ASCII without '"' and '\'.
_ERROR_CODE = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}$")
_DESCRIPTION = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,300}$")


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """A refresher's answer, understood: what the vault stores after a refresh."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    token_type: str | None
    scopes: list[str] | None


def rotated_refresh_token(answer: object) -> str | None:
    """The refresh token in an answer of any shape; None when it carries none (never raises)."""
    try:
        value = _field(answer, "refresh_token")
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


def parse_answer(answer: object, now: datetime) -> TokenAnswer:
    """An answer of any shape a real client returns; ValueError naming the field when unusable.

    `expires_at` may be an aware or naive (UTC) datetime, epoch seconds (number or text) or
    ISO-8601 text; `expires_in` seconds (number or text). When both are given the earlier
    expiry wins, so a token is never used past either.
    """
    if not isinstance(answer, Mapping) and not hasattr(answer, "access_token"):
        raise ValueError(f"the refresher returned {type(answer).__name__}, not a token mapping")
    access = _field(answer, "access_token")
    if not isinstance(access, str) or not access:
        raise ValueError("it has no access_token")
    refresh = _field(answer, "refresh_token")
    if refresh is not None and (not isinstance(refresh, str) or not refresh):
        raise ValueError("its refresh_token is not text")
    candidates = [
        at
        for at in (
            _expires_at(_field(answer, "expires_at")),
            _expires_in(_field(answer, "expires_in"), now),
        )
        if at is not None
    ]
    token_type = _field(answer, "token_type")
    if token_type is not None and (not isinstance(token_type, str) or not token_type):
        raise ValueError("its token_type is not text")
    scopes = _field(answer, "scopes")
    return TokenAnswer(
        access_token=access,
        refresh_token=refresh,
        expires_at=min(candidates) if candidates else None,
        token_type=token_type,
        scopes=parse_scopes(_field(answer, "scope") if scopes is None else scopes),
    )


def parse_scopes(value: Iterable[str] | str | None) -> list[str] | None:
    """Scopes from space-separated text or a list; None when not given."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.split()
    if isinstance(value, bytes | Mapping):
        raise ValueError("its scope is neither text nor a list")
    return [str(s) for s in value]


def _field(answer: object, name: str) -> Any:
    if isinstance(answer, Mapping):
        return answer.get(name)
    return getattr(answer, name, None)


def _number(value: object, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"its {name} is not a number")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"its {name} is out of range") from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"its {name} is not a number") from None
    else:
        raise ValueError(f"its {name} is not a number")
    if not math.isfinite(number):
        raise ValueError(f"its {name} is not a finite number")
    return number


def _expires_in(value: object, now: datetime) -> datetime | None:
    seconds = _number(value, "expires_in")
    if seconds is None:
        return None
    try:
        return now + timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError("its expires_in is out of range") from None


def _expires_at(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and not _looks_numeric(value):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("its expires_at is neither epoch seconds nor ISO-8601") from None
    else:
        epoch = _number(value, "expires_at")
        assert epoch is not None
        try:
            moment = datetime.fromtimestamp(epoch, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError("its expires_at is out of range") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        # A provider's naive time is UTC (OAuth servers speak UTC); guessing local time
        # would shift the expiry by the machine's offset.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _looks_numeric(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


# -- errors ----------------------------------------------------------------------------------


def describe_failure(exc: BaseException, secrets: Iterable[str | None]) -> str:
    """`Type: code (description)` or `Type: message`, every secret removed, at most 500 chars.

    The code is the provider's OAuth error (`invalid_grant`), read from the exception as
    Authlib and oauthlib carry it (`error`, `description`) or from the JSON body of the
    HTTP response it holds (httpx-oauth, httpx, requests).
    """
    code, description = _provider_error(exc)
    if code is not None:
        detail = code if not description else f"{code} ({description})"
    else:
        detail = str(exc)
    return redact(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__, secrets)


def redact(message: str, secrets: Iterable[str | None]) -> str:
    """The message with each secret replaced by `***` in every encoding, cut to 500 chars."""
    forms = {form for secret in secrets if secret for form in _encodings(secret) if form}
    # Longest first, so a form that contains another is replaced whole.
    for form in sorted(forms, key=len, reverse=True):
        message = message.replace(form, _REDACTED)
    return message[:ERROR_MAX]


def _encodings(secret: str) -> set[str]:
    raw = secret.encode()
    as_json = json.dumps(secret)[1:-1]
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        quote(quote(secret, safe=""), safe=""),
        as_json,
        as_json.replace("/", "\\/"),
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        html.escape(secret),
        raw.hex(),
        raw.hex().upper(),
    }
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(raw).decode()
        forms |= {encoded, encoded.rstrip("=")}
    return forms


def _provider_error(exc: BaseException) -> tuple[str | None, str | None]:
    code = getattr(exc, "error", None)
    description = getattr(exc, "description", None) or getattr(exc, "error_description", None)
    if not isinstance(code, str):
        code, description = _error_of_response(getattr(exc, "response", None))
    if not isinstance(code, str) or not _ERROR_CODE.match(code):
        return None, None
    if not isinstance(description, str) or not _DESCRIPTION.match(description):
        description = None
    return code, description


def _error_of_response(response: object) -> tuple[Any, Any]:
    try:
        body = response.json() if response is not None else None  # type: ignore[attr-defined]
    except Exception:
        return None, None
    if not isinstance(body, Mapping):
        return None, None
    return body.get("error"), body.get("error_description")
