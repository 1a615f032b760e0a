"""TLS to the server: a CA made here, a throwaway PostgreSQL with ssl=on, verified connections.

The server is a temporary cluster of the local PostgreSQL installation (initdb/pg_ctl), on a
free loopback port; the shared test server is left as it is.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text
from typer.testing import CliRunner

from pgstack.cli import app
from pgstack.config import Settings
from pgstack.db.database import Database
from pgstack.errors import DatabaseUnavailableError

CERT_USER = "pgstack_cert_user"


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout
        candidate = Path(bindir.strip()) / name
        if candidate.exists():
            return str(candidate)
    return None


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".key").chmod(0o600)
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    ips: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if ips:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in ips]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class TlsServer:
    port: int
    certs: Path

    def url(self, user: str = "postgres", host: str = "127.0.0.1", **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{user}@{host}:{self.port}/postgres" + (f"?{params}" if params else "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    as_root = os.geteuid() == 0
    # PostgreSQL refuses to run as root: then the cluster belongs to the postgres account.
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="pgstack-tls-"))
    certs, data = base / "certs", base / "data"
    certs.mkdir()

    ca_key, other_key = _key(), _key()
    _write(certs / "ca", ca_key, _certificate("pgstack test CA", ca_key, ca=True))
    _write(certs / "other-ca", other_key, _certificate("another CA", other_key, ca=True))
    server_key, client_key = _key(), _key()
    issuer = ("pgstack test CA", ca_key)
    _write(
        certs / "server",
        server_key,
        _certificate("pgstack test server", server_key, issuer, ips=("127.0.0.1",)),
    )
    _write(certs / "client", client_key, _certificate(CERT_USER, client_key, issuer))
    if as_root:
        shutil.chown(base, "postgres")
        for path in (certs, *certs.iterdir()):
            shutil.chown(path, "postgres")
        # The client files stay readable for the tests, run as root.
    port = _free_port()
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\n"
            f"unix_socket_directories = '{data}'\nssl = on\n"
            f"ssl_cert_file = '{certs / 'server.pem'}'\nssl_key_file = '{certs / 'server.key'}'\n"
            f"ssl_ca_file = '{certs / 'ca.pem'}'\nfsync = off\n"
        )
    # TLS or nothing over TCP; the certificate user signs in with its client certificate.
    (data / "pg_hba.conf").write_text(
        f"local all all trust\n"
        f"hostssl all {CERT_USER} 127.0.0.1/32 cert\n"
        "hostssl all all 127.0.0.1/32 trust\n"
        "hostnossl all all 0.0.0.0/0 reject\n"
    )
    subprocess.run(
        [*run_as, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *run_as,
                "psql",
                "-h",
                str(data),
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                f"CREATE ROLE {CERT_USER} LOGIN SUPERUSER",
            ],
            check=True,
            capture_output=True,
        )
        yield TlsServer(port, certs)
    finally:
        subprocess.run(
            [*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


async def _tls_in_use(settings: Settings) -> tuple[bool, bool, str]:
    """(engine connection uses TLS, read-lane connection uses TLS, user) on one Database."""
    query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    async with Database(settings) as db:
        async with db.session() as session:
            engine_ssl = await session.scalar(text(query))
            user = await session.scalar(text("SELECT current_user"))
        lane = db.read_lane
        assert lane is not None
        rows = await lane.fetch(query + " AND true", ())
        return bool(engine_ssl), bool(rows[0]["ssl"]), str(user)


def _settings(raw_url: str, **values: object) -> Settings:
    return Settings(database_url=raw_url, database_connect_attempts=1, _env_file=None, **values)


async def test_verified_tls_with_a_ca_from_the_url(tls_server: TlsServer) -> None:
    # proves: O5, C1
    ca = tls_server.certs / "ca.pem"
    url = tls_server.url(sslmode="verify-full", sslrootcert=str(ca))
    assert await _tls_in_use(_settings(url)) == (True, True, "postgres")


async def test_a_server_the_ca_did_not_sign_is_refused(tls_server: TlsServer) -> None:
    # proves: O5
    other = tls_server.certs / "other-ca.pem"
    url = tls_server.url(sslmode="verify-full", sslrootcert=str(other))
    with pytest.raises(DatabaseUnavailableError, match="certificate"):
        await _tls_in_use(_settings(url))


async def test_verify_full_checks_the_host_name_and_verify_ca_does_not(
    tls_server: TlsServer,
) -> None:
    # proves: O5
    ca = str(tls_server.certs / "ca.pem")
    # The server's certificate names 127.0.0.1, not localhost.
    by_name = tls_server.url(host="localhost")
    with pytest.raises(DatabaseUnavailableError):
        await _tls_in_use(
            _settings(by_name, database_sslmode="verify-full", database_sslrootcert=ca)
        )
    verify_ca = _settings(by_name, database_sslmode="verify-ca", database_sslrootcert=ca)
    assert await _tls_in_use(verify_ca) == (True, True, "postgres")


async def test_client_certificate_from_settings_signs_in(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: O5, C1
    certs = tls_server.certs
    monkeypatch.setenv("DATABASE_URL", tls_server.url(user=CERT_USER))
    monkeypatch.setenv("DATABASE_SSLMODE", "verify-full")
    monkeypatch.setenv("DATABASE_SSLROOTCERT", str(certs / "ca.pem"))
    monkeypatch.setenv("DATABASE_CONNECT_ATTEMPTS", "1")
    # Without the client certificate, the server turns the role away.
    with pytest.raises(DatabaseUnavailableError):
        await _tls_in_use(Settings(_env_file=None))
    monkeypatch.setenv("DATABASE_SSLCERT", str(certs / "client.pem"))
    monkeypatch.setenv("DATABASE_SSLKEY", str(certs / "client.key"))
    assert await _tls_in_use(Settings(_env_file=None)) == (True, True, CERT_USER)


def test_migrations_and_admin_commands_use_the_same_tls(
    tls_server: TlsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # proves: O5
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("DATABASE_", "PGSTACK_")):
            monkeypatch.delenv(name)
    certs = tls_server.certs
    tls = {
        "sslmode": "verify-full",
        "sslrootcert": str(certs / "ca.pem"),
        "sslcert": str(certs / "client.pem"),
        "sslkey": str(certs / "client.key"),
    }
    runner = CliRunner()
    # The certificate user can sign in only with its client certificate: each command that
    # works below sent it.
    env = {
        "DATABASE_URL": tls_server.url(user=CERT_USER),
        **{f"DATABASE_{k.upper()}": v for k, v in tls.items()},
    }
    upgraded = runner.invoke(app, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    assert "pgstack_0001" in upgraded.output

    admin = tls_server.url(user=CERT_USER, **tls)
    app_env = {
        "DATABASE_URL": tls_server.url(user="pgstack_tls_app").replace(
            "/postgres", "/pgstack_tls_app"
        )
    }
    init = runner.invoke(app, ["db", "init", "--admin-url", admin], env=app_env)
    assert init.exit_code == 0, init.output
    assert "database pgstack_tls_app: created" in init.output

    # A CA that did not sign the server's certificate: the admin connection is refused.
    wrong = tls_server.url(user=CERT_USER, **{**tls, "sslrootcert": str(certs / "other-ca.pem")})
    refused = runner.invoke(app, ["db", "init", "--admin-url", wrong], env=app_env)
    assert refused.exit_code == 1
    assert "certificate" in refused.output and "Traceback" not in refused.output
