"""Errors as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

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


async def _pgstack_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PgStackError)
    if exc.status_code >= 500:
        logger.error(
            "%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc.message
        )
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


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The exception text may hold data from the request or the database: log it, never send it.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "An unexpected error occurred.", instance=request.url.path)


def install(app: FastAPI) -> None:
    """Answer every error of the app with a problem-details body."""
    app.add_exception_handler(PgStackError, _pgstack_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
