"""Errors as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from pgstack.db.metrics import sqlstate_of
from pgstack.errors import PgStackError

logger = logging.getLogger("pgstack.web")
MEDIA_TYPE = "application/problem+json"


def _slug(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name.removesuffix("Error")).lower()


def problem_response(
    status: int,
    detail: str | None,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem-details response."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


# What a client is told on a 5xx: the error's own message names settings, keys, hosts and
# other operator detail (and can tell accounts apart), so it goes to the log instead.
_GENERIC_5XX = {
    500: "An unexpected error occurred. It was logged; try again later.",
    502: "A service this request depends on failed. Try again later.",
    503: "The service cannot answer this request right now. Try again later.",
}


def _server_error(
    request: Request, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    return problem_response(
        status,
        _GENERIC_5XX.get(status, _GENERIC_5XX[500]),
        instance=request.url.path,
        headers=headers,
    )


async def _pgstack_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PgStackError)
    if exc.status_code >= 500:
        logger.error(
            "%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc.message
        )
        return _server_error(request, exc.status_code)
    # RFC 9110: a 401 must say which authentication scheme to use.
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return problem_response(
        exc.status_code,
        exc.message,
        title=exc.title,
        type_=f"urn:pgstack:error:{_slug(type(exc).__name__)}",
        instance=request.url.path,
        headers=headers,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return problem_response(
        exc.status_code,
        exc.detail if isinstance(exc.detail, str) else None,
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return problem_response(
        422, "The request is not valid; see `errors`.", instance=request.url.path, errors=errors
    )


# Why PostgreSQL refused a value (SQLSTATE class 22, "data exception"), in words that name
# no value: the server's own message quotes the offending input.
_DATA_ERRORS = {
    "22001": "a text is longer than its field allows",
    "22003": "a number is out of the range its field allows",
    "22007": "a date or time is not valid",
    "22008": "a date or time is out of range",
    "22021": "a text holds a character PostgreSQL cannot store (such as a NUL byte, U+0000)",
    "22P05": "a text holds a character PostgreSQL cannot store (such as a NUL byte, U+0000)",
    "22P02": "a value does not have the form its field needs",
    "2201W": "a page size is out of range",
    "2201X": "a page offset is out of range",
}
# The driver's own refusal of a value before sending it (e.g. a number too big for int4).
_CLIENT_DATA_ERROR = "22000"


def data_error_code(exc: BaseException) -> str | None:
    """The SQLSTATE when `exc` is PostgreSQL refusing a value (class 22), else None.

    asyncpg's refusal to encode a value (out of range for its type) counts as one too.
    """
    code = sqlstate_of(exc)
    if code is not None:
        return code if code.startswith("22") else None
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ValueError) and type(seen).__module__.startswith("asyncpg"):
            return _CLIENT_DATA_ERROR
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def _where(request: Request) -> str:
    return f"{request.method} {request.url.path}"


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    code = data_error_code(exc)
    if code is not None:
        # The driver's text quotes the refused value (which may be a secret): log the code.
        logger.info("database refused a value (SQLSTATE %s) on %s", code, _where(request))
        reason = _DATA_ERRORS.get(code, "a value is not valid for its field")
        return problem_response(
            422,
            f"The database refused a value of the request: {reason} (SQLSTATE {code}). "
            "Correct the value and send the request again.",
            title="Invalid input",
            type_="urn:pgstack:error:invalid-input",
            instance=request.url.path,
        )
    # Bound parameters are hidden (the engine runs with hide_parameters); the statement and
    # the server's message go to the log, never to the client.
    logger.error("database error on %s", _where(request), exc_info=exc)
    return _server_error(request, 500)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The exception text may hold data from the request or the database: log it, never send it.
    if data_error_code(exc) is not None:
        return await _database_error(request, exc)
    logger.exception("unhandled error on %s", _where(request))
    return _server_error(request, 500)


def install(app: FastAPI) -> None:
    """Answer every error of the app with a problem-details body."""
    app.add_exception_handler(PgStackError, _pgstack_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Handled here rather than by the catch-all below, which Starlette re-raises to the server
    # (whose log line would carry the driver's text, values included).
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
