"""Migrated template databases, built once per run, cloned for every test that wants one.

`CREATE DATABASE ... TEMPLATE ...` copies a migrated schema in milliseconds, where running
the migrations again would take a second or more; each test gets a database nobody else
touches. Names carry the pytest-xdist worker id and a random part, so workers and parallel
runs on one server never collide.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
from sqlalchemy.engine import URL

from pgstack.db.admin import asyncpg_dsn
from pgstack.migrations.api import upgrade
from pgstack.migrations.project import MigrationProject

T = TypeVar("T")


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function to completion on a thread of its own.

    Fixtures that use this work whatever event loop (or none) pytest-asyncio has set up.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pgstack-admin") as pool:
        return pool.submit(lambda: asyncio.run(_call(fn))).result()


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


def worker_id() -> str:
    """The pytest-xdist worker id (`gw0`, ...), or `main` without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def unique_name(prefix: str) -> str:
    """A database name no other worker or run will pick."""
    return f"{prefix}_{worker_id()}_{uuid.uuid4().hex[:12]}"


async def _admin(server: URL, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(server))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class TemplateDatabases:
    """Templates per migration project, and the clones made from them in this process."""

    server: URL
    templates: dict[tuple[str, ...], str] = field(default_factory=dict)
    clone_ms: list[float] = field(default_factory=list)
    template_ms: list[float] = field(default_factory=list)

    def template(self, project: MigrationProject) -> URL:
        """The URL of the template migrated to head for `project`, built on first use.

        A template whose upgrade fails is dropped, not kept: the next test tries afresh.
        """
        key = (str(project.versions), project.branch)
        name = self.templates.get(key)
        if name is None:
            name = unique_name("pgstack_tpl")
            started = time.perf_counter()
            run_async(lambda: _admin(self.server, f"CREATE DATABASE {_quote(name)}"))
            try:
                upgrade(self.server.set(database=name), "heads", project=project)
                # No one may connect to a template while it is copied; refusing connections
                # makes a stray one fail loudly instead of making a clone wait and fail.
                run_async(
                    lambda: _admin(
                        self.server, f"ALTER DATABASE {_quote(name)} WITH ALLOW_CONNECTIONS false"
                    )
                )
            except BaseException:
                self._drop([name])
                raise
            self.templates[key] = name
            self.template_ms.append((time.perf_counter() - started) * 1000)
        return self.server.set(database=name)

    def clone(self, project: MigrationProject) -> URL:
        """A fresh database with the migrated schema of `project`, for one test."""
        template = self.template(project).database
        assert template is not None
        name = unique_name("pgstack_t")
        started = time.perf_counter()
        # The server's default strategy (WAL_LOG since PostgreSQL 15): on small templates it
        # measured about twice as fast as STRATEGY FILE_COPY and its two checkpoints.
        run_async(
            lambda: _admin(
                self.server, f"CREATE DATABASE {_quote(name)} TEMPLATE {_quote(template)}"
            )
        )
        self.clone_ms.append((time.perf_counter() - started) * 1000)
        return self.server.set(database=name)

    def empty(self) -> URL:
        """A new, empty database (for testing migrations themselves)."""
        name = unique_name("pgstack_e")
        run_async(lambda: _admin(self.server, f"CREATE DATABASE {_quote(name)}"))
        return self.server.set(database=name)

    def drop(self, url: URL) -> None:
        """Drop a clone (its connections are cut)."""
        assert url.database is not None
        self._drop([url.database])

    def dropped_after(self, url: URL) -> Iterator[URL]:
        """Yield `url` (a fixture's database), then drop it: `yield from t.dropped_after(u)`."""
        try:
            yield url
        finally:
            self.drop(url)

    def close(self) -> None:
        """Drop every template this process made."""
        names, self.templates = list(self.templates.values()), {}
        self._drop(names)

    def _drop(self, names: list[str]) -> None:
        if names:
            statements = [f"DROP DATABASE IF EXISTS {_quote(n)} WITH (FORCE)" for n in names]
            run_async(lambda: _admin(self.server, *statements))

    def summary(self) -> str | None:
        """One line about the clones made, for the end of the test run."""
        if not self.clone_ms:
            return None
        median = statistics.median(self.clone_ms)
        built = ", ".join(f"{ms:.0f} ms" for ms in self.template_ms)
        return (
            f"pgstack: {len(self.clone_ms)} test database(s) cloned from "
            f"{len(self.template_ms)} migrated template(s) (built in {built}); "
            f"clone median {median:.0f} ms, max {max(self.clone_ms):.0f} ms"
        )
