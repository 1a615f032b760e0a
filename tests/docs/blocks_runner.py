"""Run one page's python blocks in order, as one script, and drive every FastAPI app they make.

Usage: python blocks_runner.py BLOCKS.json — a JSON list of [name, source] pairs. Blocks may
use top-level `await` (as in `python -m asyncio`); they share one namespace and one event
loop, and a block without `await` runs outside that loop, so `asyncio.run(main())` works as it
does in a script. After a block binds `app` to a new FastAPI app, the app is started (its
lifespan) and every GET route without path parameters must answer below 500. The process
exits non-zero with the traceback when a block raises.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import sys
from typing import Any

import httpx
from fastapi import FastAPI


async def drive(app: FastAPI, name: str) -> None:
    """Start the app and GET every parameterless route; a 5xx is a failure."""
    paths = sorted(
        {
            route.path
            for route in app.routes
            if "GET" in (getattr(route, "methods", None) or ()) and "{" not in route.path
        }
    )
    failures = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://docs") as client:
            for path in paths:
                answer = await client.get(path)
                print(f"{name}: GET {path} -> {answer.status_code}", file=sys.stderr)
                if answer.status_code >= 500:
                    failures.append(f"GET {path} -> {answer.status_code}: {answer.text[:300]}")
    if failures:
        raise AssertionError(f"the app of {name} answered 5xx:\n" + "\n".join(failures))


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        blocks: list[tuple[str, str]] = json.load(file)
    loop = asyncio.new_event_loop()
    namespace: dict[str, Any] = {"__name__": "__main__"}
    driven: set[int] = set()
    for name, source in blocks:
        # dont_inherit: the block runs as a reader's script would, with no future imports.
        code = compile(
            source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        if code.co_flags & inspect.CO_COROUTINE:
            loop.run_until_complete(eval(code, namespace))
        else:
            exec(code, namespace)
        app = namespace.get("app")
        if isinstance(app, FastAPI) and id(app) not in driven:
            driven.add(id(app))
            loop.run_until_complete(drive(app, name))
        sys.stdout.flush()
    loop.run_until_complete(loop.shutdown_asyncgens())


if __name__ == "__main__":
    main()
