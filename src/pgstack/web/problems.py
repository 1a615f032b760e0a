"""Errors as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Iterator
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from pgstack.db.metrics import sqlstate_of
from pgstack.db.session import translate_error
from pgstack.errors import PgStackError, RateLimitedError

logger = logging.getLogger("pgstack.web")
MEDIA_TYPE = "application/problem+json"

#: The problem-details body (RFC 9457) every error answers with; `errors` on a 422.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "violated-policies": {"type": "array", "items": {"type": "string"}},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
#: The headers of a 429 (see pgstack.web.ratelimit).
RATE_LIMIT_HEADERS: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before sending the request again.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Policy": {
        "description": 'The limit that refused: `"name";q=<quota>;w=<window seconds>`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of it: `"name";r=<remaining>;t=<seconds to reset>`.',
        "schema": {"type": "string"},
    },
}
PROBLEM_CONTENT: dict[str, Any] = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


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


def _server_error(request: Request, status: int) -> JSONResponse:
    detail = _GENERIC_5XX.get(status, _GENERIC_5XX[500])
    return problem_response(status, detail, instance=request.url.path)


async def _pgstack_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PgStackError)
    if exc.status_code >= 500:
        logger.error(
            "%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc.message
        )
        return _server_error(request, exc.status_code)
    # RFC 9110: a 401 must say which authentication scheme to use.
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    extra: dict[str, Any] = {}
    if isinstance(exc, RateLimitedError):
        # Retry-After (delta seconds) and RateLimit-*; the limits that refused, by name.
        headers = exc.headers
        extra["violated-policies"] = exc.violated_policies
    return problem_response(
        exc.status_code,
        exc.message,
        title=exc.title,
        type_=f"urn:pgstack:error:{_slug(type(exc).__name__)}",
        instance=request.url.path,
        headers=headers,
        **extra,
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """The problem answer of an HTTPException (a 404 of no route, a 405, ...)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        malformed = malformed_ids(request)
        if malformed:
            return _malformed_ids_problem(request, malformed)
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        # Starlette's Allow names the methods of one route; a path may have several (GET,
        # PATCH and DELETE of one resource), as the OpenAPI document says.
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(
        exc.status_code,
        exc.detail if isinstance(exc.detail, str) else None,
        instance=request.url.path,
        headers=headers or None,
    )


_UUID = re.compile(
    "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)


def _fitting_operations(request: Request) -> Iterator[tuple[str, list[str]]]:
    """Each operation of the OpenAPI document whose path the request's path fits, by method,
    with the names of its UUID path parameters that the request gives something else in.

    The router's `:uuid` convertor matches only a UUID, so `/admin/users/statistics` is not
    taken for `/admin/users/{user_id}`; a path that fits but for such a value names it here.
    """
    path = request.url.path
    for template, item in request.app.openapi().get("paths", {}).items():
        # re.split alternates literal text and parameter names: "/a/", "id", "/b".
        parts = re.split(r"\{(.*?)\}", template)
        pattern = "".join(re.escape(p) if i % 2 == 0 else "([^/]+)" for i, p in enumerate(parts))
        fit = re.fullmatch(pattern, path)
        if fit is None:
            continue
        values = dict(zip(parts[1::2], fit.groups(), strict=True))
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            malformed = [
                p["name"]
                for p in operation.get("parameters", [])
                if p.get("in") == "path"
                and p.get("schema", {}).get("format") == "uuid"
                and not _UUID.fullmatch(values.get(p["name"], ""))
            ]
            yield method.upper(), malformed


def _allowed_methods(request: Request) -> str:
    """Every method the OpenAPI document lists for an operation whose path this request fits."""
    methods = {method for method, malformed in _fitting_operations(request) if not malformed}
    return ", ".join(sorted(methods))


def malformed_ids(request: Request) -> list[str]:
    """The UUID path parameters that kept the request from its route; [] if none did."""
    names: set[str] = set()
    asked = "GET" if request.method == "HEAD" else request.method  # as the router serves HEAD
    for method, malformed in _fitting_operations(request):
        if method == asked:
            names.update(malformed)
    return sorted(names)


def _malformed_ids_problem(request: Request, names: list[str]) -> JSONResponse:
    example = "0190f3a0-5c3b-7d2e-8f10-2b3c4d5e6f70"
    errors = [
        {
            "loc": ["path", name],
            "msg": f"{name} must be a UUID, such as {example}.",
            "type": "uuid_parsing",
        }
        for name in names
    ]
    what = (
        f"The path parameter {names[0]} is not a UUID"
        if len(names) == 1
        else f"The path parameters {' and '.join(names)} are not UUIDs"
    )
    return problem_response(
        422,
        f"{what}: send each id as a UUID, such as {example}; see `errors`.",
        instance=request.url.path,
        errors=errors,
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
    translated = translate_error(exc)
    if isinstance(translated, PgStackError):
        # A server away (restarting, 57P03), a cancelled statement: what the caller can act on.
        return await _pgstack_error(request, translated)
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
    # asyncpg's own errors (raised outside SQLAlchemy) carry a SQLSTATE too: a server that is
    # starting up (57P03) is a 503 there as well.
    if data_error_code(exc) is not None or (
        sqlstate_of(exc) is not None and isinstance(translate_error(exc), PgStackError)
    ):
        return await _database_error(request, exc)
    logger.exception("unhandled error on %s", _where(request))
    return _server_error(request, 500)


def problem_statuses() -> list[int]:
    """Every status an error can answer with: pgstack's error hierarchy, validation, 500."""
    statuses = {422, 500}
    pending: list[type[PgStackError]] = [PgStackError]
    while pending:
        cls = pending.pop()
        statuses.add(cls.status_code)
        pending.extend(cls.__subclasses__())
    return sorted(statuses)


def document_problems(schema: dict[str, Any], skip: Collection[str] = ()) -> None:
    """Declare the problem responses of every operation of an OpenAPI document, in place.

    Each operation outside the paths in `skip` (which declare their own) lists every status
    of `problem_statuses()` with `application/problem+json` content; FastAPI's own 422
    (`application/json`, HTTPValidationError) becomes the problem-details body it really is.
    """
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    statuses = problem_statuses()
    for path, item in schema.get("paths", {}).items():
        if path in skip:
            continue
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            # A body that is not even text (bytes that are not UTF-8) is a 400, not a 422.
            extra = [400] if "requestBody" in operation else []
            for status in sorted([*statuses, *extra]):
                entry = responses.setdefault(
                    str(status), {"description": HTTPStatus(status).phrase}
                )
                content = entry.get("content") or {}
                if status == 422:
                    content.pop("application/json", None)  # FastAPI's HTTPValidationError
                if status == 429:
                    entry.setdefault("headers", {}).update(RATE_LIMIT_HEADERS)
                entry["content"] = {**content, **PROBLEM_CONTENT}
    components = schema["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):  # in that order: one uses the other
        if f'"#/components/schemas/{name}"' not in json.dumps(schema):
            components.pop(name, None)


def install(app: FastAPI, *, probes: APIRouter | None = None) -> None:
    """Answer every error of the app with a problem-details body, and document them.

    The app's OpenAPI document lists the problem responses of every operation (see
    `document_problems`); the routes of `probes` declare their own responses.
    """
    generate = app.openapi
    skip = {getattr(route, "path", "") for route in probes.routes} if probes else set()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_problems(generate(), skip)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(PgStackError, _pgstack_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Handled here rather than by the catch-all below, which Starlette re-raises to the server
    # (whose log line would carry the driver's text, values included).
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
