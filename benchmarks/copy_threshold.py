"""Where COPY starts to pay off for `Repository.create_many`: batched INSERTs against COPY.

Run with `uv run python benchmarks/copy_threshold.py` (DATABASE_URL, or the embedded server).
Each batch size is timed inside a transaction that is rolled back, best of several runs,
and printed as a markdown table of rows per second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgstack import Database, Repository, Settings
from pgstack.orm import (
    NAMING_CONVENTION,
    TYPE_ANNOTATION_MAP,
    Audited,
    ModelMixin,
    SoftDelete,
    Timestamped,
    UUIDPrimaryKey,
    Versioned,
    create_all,
    drop_all,
)

SIZES = (1, 10, 30, 100, 300, 1_000, 3_000, 10_000, 100_000)


class BenchBase(ModelMixin, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = TYPE_ANNOTATION_MAP


class Item(UUIDPrimaryKey, Timestamped, Audited, SoftDelete, Versioned, BenchBase):
    __tablename__ = "bench_copy_items"
    name: Mapped[str] = mapped_column(String(100))
    qty: Mapped[int]
    note: Mapped[str | None]


class Inserts(Repository[Item]):
    model = Item
    copy_threshold = 10**12


class Copies(Repository[Item]):
    model = Item
    copy_threshold = 0


async def best_time(db: Database, repo: type[Repository[Item]], size: int) -> float:
    best = float("inf")
    for _ in range(5 if size <= 10_000 else 2):
        rows: list[dict[str, Any]] = [
            {"name": f"n{i}", "qty": i, "note": None} for i in range(size)
        ]
        async with db.session() as session:
            started = time.perf_counter()
            await repo(session).create_many(rows)
            best = min(best, time.perf_counter() - started)
            await session.rollback()
    return best


async def main() -> None:
    async with Database(Settings()) as db:
        await create_all(db, BenchBase)
        try:
            print("| rows | batched INSERT rows/s | COPY rows/s | COPY's advantage |")
            print("|---:|---:|---:|---:|")
            for size in SIZES:
                inserts = await best_time(db, Inserts, size)
                copies = await best_time(db, Copies, size)
                print(
                    f"| {size:,} | {size / inserts:,.0f} | {size / copies:,.0f} | "
                    f"{inserts / copies:.2f}x |"
                )
        finally:
            await drop_all(db, BenchBase)


if __name__ == "__main__":
    asyncio.run(main())
