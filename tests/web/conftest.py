"""What the web tests share: an app served in-process, its lifespan run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI


@asynccontextmanager
async def served(app: FastAPI, *, lifespan: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` (lifespan run, unless not wanted); a 500 is an answer, not a raise."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        if not lifespan:
            yield client
            return
        async with app.router.lifespan_context(app):
            yield client
