"""schemathesis against `pgstack serve`: no 5xx, no undocumented status or content type.

A loopback `pgstack serve` on a migrated database of the test's own, fuzzed from its own
OpenAPI document (every module under `/v1`) with every check, a fixed seed, once signed in
with a session and once with an API key of an admin. Each admin owns a tenant, named in
every `tenant_id` path parameter and `X-Tenant-ID` header, so the tenant routes run their
bodies rather than answering 404. Slow (minutes on two cores): behind the `fuzz` marker,
which `.ci/run` runs on its own (`uv run pytest -m fuzz`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgstack.config import Settings
from pgstack.crypto import generate_key
from pgstack.db.database import Database
from pgstack.identity import Identity, User
from pgstack.tenancy import Tenancy

from .conftest import pgstack_serve

pytestmark = pytest.mark.fuzz

ADMIN_PASSWORD = "correct-horse-Battery-staple-9"
SEED = 20260101
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# The checks' settings, and the narrow exclusions of known findings, each with its reason.
CONFIG = Path(__file__).with_name("schemathesis.toml")

# Operations left out of a run, each with the reason.
SESSION_RUN_EXCLUDES = [
    # Logging out ends the very session the run authenticates with; the API-key run
    # covers the route.
    "^/v1/auth/logout$",
]


@pytest.fixture
def server(pgstack_migrated_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`pgstack serve` on a free loopback port; its base URL."""
    # Two-factor enrolment encrypts its secret: without keys it is a (correct) 503.
    env = {"DATABASE_POOL_SIZE": "5", "PGSTACK_ENCRYPTION_KEYS": generate_key("fuzz")}
    with pgstack_serve(
        pgstack_migrated_settings, ["--no-migrate"], log=tmp_path / "serve.log", env=env
    ) as base:
        yield base


async def _admin(identity: Identity, email: str) -> User:
    return await identity.users.create(email, ADMIN_PASSWORD, roles=["admin"], verified=True)


@dataclass(frozen=True)
class Run:
    """A fuzz run's bearer token and the ids schemathesis.toml puts in the paths."""

    token: str
    ids: dict[str, str]


async def _runs(settings: Settings) -> tuple[Run, Run]:
    """The API-key run of one admin and the session run of another, made through the library.

    Each admin owns a tenant, named in `tenant_id` and X-Tenant-ID. The admin routes of
    users, members, keys and tenants act on others, never on the caller: a member of both
    tenants (`user_id`), a spare key (`key_id`) and a spare tenant (`/admin/tenants/...`).
    Otherwise the run deactivates its own admin, revokes its own key or suspends its own
    tenant early on (it learns the ids from earlier answers), and from then on sees only
    401 and 403.
    """
    async with Database(settings) as db:
        identity = Identity(db)
        tenancy = Tenancy(db)
        member = await identity.users.create(
            "fuzz-member@example.com", ADMIN_PASSWORD, verified=True
        )
        spare = await tenancy.tenants.create("fuzz-spare", "Fuzz (spare)", owner_id=member.id)
        runs = []
        for name in ("key", "session"):
            admin = await _admin(identity, f"fuzz-{name}@example.com")
            tenant = await tenancy.tenants.create(
                f"fuzz-{name}", f"Fuzz ({name})", owner_id=admin.id
            )
            await tenancy.memberships.add(tenant.id, member.id, "member")
            if name == "key":
                token = (
                    await identity.api_keys.create(
                        admin.id, "fuzz", scopes=["admin", "tenant:owner"]
                    )
                ).key
            else:
                token = (await identity.auth.login(admin.email, ADMIN_PASSWORD)).token
            spare_key = await identity.api_keys.create(admin.id, "spare")
            ids = {
                "PGSTACK_FUZZ_TENANT": str(tenant.id),
                "PGSTACK_FUZZ_SPARE_TENANT": str(spare.id),
                "PGSTACK_FUZZ_USER": str(member.id),
                "PGSTACK_FUZZ_KEY": str(spare_key.api_key.id),
            }
            runs.append(Run(token, ids))
        return runs[0], runs[1]


def _schemathesis(base: str, run: Run, excludes: list[str], report: Path) -> None:
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{base}/openapi.json",
        "--seed",
        str(SEED),
        "--max-examples",
        "25",
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {run.token}",
        "--output-truncate",
        "false",
    ]
    for pattern in excludes:
        command += ["--exclude-path-regex", pattern]
    # In the test's folder: schemathesis keeps a cache where it runs.
    # The config puts the run's ids into the paths and headers (see schemathesis.toml).
    env = {**os.environ, **run.ids}
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        cwd=report.parent,
        env=env,
    )
    report.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-12000:]


def test_schemathesis_finds_nothing_with_session_or_api_key(
    server: str, pgstack_migrated_settings: Settings, tmp_path: Path
) -> None:
    # proves: W3, W2, I8
    api_key, session = asyncio.run(_runs(pgstack_migrated_settings))
    _schemathesis(server, api_key, [], tmp_path / "api-key.txt")
    _schemathesis(server, session, SESSION_RUN_EXCLUDES, tmp_path / "session.txt")
