"""Seed data sets (`dev`, `test`, ...): registered functions that must be idempotent.

    from pgstack.migrations import SeedContext, seeder

    @seeder("dev", "test")
    async def authors(ctx: SeedContext) -> None:
        await ctx.insert(Author, [{"email": "ada@example.com", "name": "Ada"}],
                         conflict=["email"])

`SeedContext.insert` adds only the rows whose key is not there yet (`ON CONFLICT DO
NOTHING`), so running a data set twice adds nothing the second time. A data set runs in one
transaction: all of it lands, or none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from rich.progress import Progress
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert

from pgstack.db.database import Database
from pgstack.db.session import Session
from pgstack.errors import ConfigurationError
from pgstack.migrations.project import MigrationProject

SeedFn = Callable[["SeedContext"], Awaitable[None]]
DEFAULT_BATCH = 500


@dataclass(frozen=True)
class Seeder:
    """A registered seed function and the data sets it belongs to."""

    name: str
    datasets: frozenset[str]
    fn: SeedFn
    order: int


_REGISTRY: dict[str, Seeder] = {}


def seeder(*datasets: str, name: str | None = None, order: int = 0) -> Callable[[SeedFn], SeedFn]:
    """Register an async function `fn(ctx)` for the named data sets; lower `order` runs first.

    Registering the same name again replaces the earlier one (a module imported twice).
    """
    if not datasets:
        raise ConfigurationError("@seeder needs at least one data set, e.g. @seeder('dev').")

    def register(fn: SeedFn) -> SeedFn:
        key = name or f"{fn.__module__}.{fn.__qualname__}"
        _REGISTRY[key] = Seeder(key, frozenset(datasets), fn, order)
        return fn

    return register


def seeders(dataset: str) -> list[Seeder]:
    """The seeders of a data set, in the order they run."""
    found = [s for s in _REGISTRY.values() if dataset in s.datasets]
    position = {key: i for i, key in enumerate(_REGISTRY)}
    return sorted(found, key=lambda s: (s.order, position[s.name]))


def datasets() -> list[str]:
    """Every data set some seeder is registered for."""
    return sorted({d for s in _REGISTRY.values() for d in s.datasets})


@dataclass
class SeedContext:
    """What a seeder gets: the session of the data set's transaction, and progress reporting."""

    session: Session
    dataset: str
    seeder: str
    progress: Progress | None = None
    inserted: dict[str, int] = field(default_factory=dict)

    async def insert(
        self,
        target: Any,
        rows: Iterable[Mapping[str, Any]],
        *,
        conflict: Sequence[str] | None = None,
        batch: int = DEFAULT_BATCH,
    ) -> int:
        """Insert the rows that are not there yet; how many were new.

        `target` is a model class or a `Table`; `conflict` names the columns of the unique
        key that identifies a row (default: any unique constraint or primary key).
        """
        table: Table = getattr(target, "__table__", target)
        total = len(rows) if isinstance(rows, Sequence) else None
        task = (
            self.progress.add_task(f"{self.seeder}: {table.name}", total=total)
            if self.progress is not None
            else None
        )
        added = 0
        iterator = iter(rows)
        while chunk := [dict(r) for r in islice(iterator, batch)]:
            statement = insert(table).values(chunk).on_conflict_do_nothing(index_elements=conflict)
            result = await self.session.execute(statement)
            added += max(0, int(getattr(result, "rowcount", 0) or 0))
            if self.progress is not None and task is not None:
                self.progress.advance(task, len(chunk))
        self.inserted[table.name] = self.inserted.get(table.name, 0) + added
        return added


async def run_seeders(
    db: Database,
    dataset: str,
    *,
    project: MigrationProject | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Run a data set's seeders in one transaction; rows added per table.

    The `seeds` modules of `project` are imported first, which registers their seeders
    (default: the project of the nearest pyproject.toml, as `pgstack db seed` finds it).
    """
    project = project if project is not None else MigrationProject.discover()
    project.import_seeds()
    chosen = seeders(dataset)
    if not chosen:
        known = ", ".join(datasets()) or "none"
        where = (
            f"the `seeds` modules of [tool.pgstack] in {project.root / 'pyproject.toml'} "
            f"({', '.join(project.seeds) or 'none listed'})"
            if project.configured
            else f"no [tool.pgstack] section in or above {project.root}"
        )
        raise ConfigurationError(
            f"No seeder is registered for data set {dataset!r} (registered: {known}; looked "
            f"in {where}). Register one with @seeder({dataset!r}) in a module listed in "
            "`seeds` of [tool.pgstack] or given with `pgstack db seed --seeds MODULE` (from "
            "Python: project=MigrationProject.from_pyproject(...))."
        )
    totals: dict[str, int] = {}
    async with db.transaction() as session:
        for entry in chosen:
            ctx = SeedContext(session, dataset, entry.name, progress)
            await entry.fn(ctx)
            for table, count in ctx.inserted.items():
                totals[table] = totals.get(table, 0) + count
    return totals
