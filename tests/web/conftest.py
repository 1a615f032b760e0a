"""What the web tests share: an app served in-process, its lifespan run, or `pgstack serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from pgstack.config import Settings


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pgstack_serve(
    settings: Settings,
    args: Sequence[str],
    *,
    log: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """`pgstack serve ARGS` on a free loopback port of `settings`' database, once ready; its
    base URL. Its output goes to `log`; it is stopped with SIGTERM at the end."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": settings.url.render_as_string(hide_password=False) if settings.url else "",
        # Through PgBouncer (PGSTACK_TEST_POOLER_URL) the server must know it: no startup
        # parameters the pooler refuses, no session state.
        "DATABASE_POOLER": settings.database_pooler,
        **(env or {}),
    }
    environment.pop("PGSTACK_ENV", None)
    command = [sys.executable, "-c", "from pgstack.cli import main; main()", "serve"]
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            env=environment,
            cwd=cwd or Path(__file__).resolve().parents[2],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text()[-3000:])
                time.sleep(0.3)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
