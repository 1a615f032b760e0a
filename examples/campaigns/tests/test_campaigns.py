"""The campaigns service as users and hostile callers meet it: HTTP against real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from campaigns.models import Campaign, Member
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from pgstack import Database
from pgstack.migrations import MigrationProject, run_seeders
from pgstack.testing import assert_migrations_roundtrip, assert_no_drift

HERE = Path(__file__).resolve().parents[1]
PGSTACK = str(Path(sys.executable).parent / "pgstack")


async def new_campaign(client: httpx.AsyncClient, headers: dict[str, str], name: str) -> dict:
    answer = await client.post("/campaigns", json={"name": name}, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def test_writes_carry_the_requests_user(client: httpx.AsyncClient, make_user) -> None:
    # proves: X2, M2 (created_by / updated_by from the request's user), R1
    alice, as_alice = await make_user("alice@example.com")
    bob, as_bob = await make_user("bob@example.com")
    created = await new_campaign(client, as_alice, "Spring")
    assert created["created_by"] == created["updated_by"] == alice
    assert (created["status"], created["version"]) == ("draft", 1)

    patched = await client.patch(
        f"/campaigns/{created['id']}", json={"budget_cents": 900, "version": 1}, headers=as_bob
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["created_by"], body["updated_by"], body["version"]) == (alice, bob, 2)
    assert body["updated_at"] > created["updated_at"]

    members = [{"email": "Ada@Example.com", "name": "Ada"}, {"email": "grace@example.com"}]
    added = await client.post(f"/campaigns/{created['id']}/members", json=members, headers=as_bob)
    assert added.status_code == 200 and added.json() == {"written": 2}
    again = [{"email": "ADA@example.com", "name": "Ada L."}]
    assert (
        await client.post(f"/campaigns/{created['id']}/members", json=again, headers=as_alice)
    ).json() == {"written": 1}
    listed = (await client.get(f"/campaigns/{created['id']}/members", headers=as_bob)).json()
    assert listed["total"] == 2
    ada = listed["items"][0]
    assert (ada["email"], ada["name"], ada["created_by"], ada["updated_by"]) == (
        "ada@example.com",
        "Ada L.",
        bob,
        alice,
    )

    mine = await client.get("/campaigns", params={"created_by": alice}, headers=as_bob)
    assert [c["name"] for c in mine.json()["items"]] == ["Spring"]
    assert (await client.delete(f"/campaigns/{created['id']}", headers=as_bob)).status_code == 204
    gone = await client.get(f"/campaigns/{created['id']}", headers=as_bob)
    assert gone.status_code == 404
    assert (await client.get("/campaigns", headers=as_bob)).json()["total"] == 0


async def test_no_lost_update_between_concurrent_editors(
    client: httpx.AsyncClient, make_user
) -> None:
    # proves: X2, R5 (an update on a stale version is a 409; no lost update)
    _, headers = await make_user("carol@example.com")
    campaign = await new_campaign(client, headers, "Budgeted")
    answers = await asyncio.gather(
        *(
            client.patch(
                f"/campaigns/{campaign['id']}",
                json={"budget_cents": cents, "version": 1},
                headers=headers,
            )
            for cents in range(100, 110)
        )
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * 9
    winner = next(a.json() for a in answers if a.status_code == 200)
    stored = (await client.get(f"/campaigns/{campaign['id']}", headers=headers)).json()
    assert stored["budget_cents"] == winner["budget_cents"] and stored["version"] == 2
    conflict = next(a for a in answers if a.status_code == 409)
    assert conflict.headers["content-type"].startswith("application/problem+json")


async def test_a_campaign_launches_once_under_concurrent_launches(
    client: httpx.AsyncClient, make_user, pgstack_migrated_db: Database
) -> None:
    # proves: X2, C3 (run_in_transaction: serializable, retried on 40001; one launch wins)
    _, headers = await make_user("dan@example.com")
    campaign = await new_campaign(client, headers, "Launch day")
    url = f"/campaigns/{campaign['id']}/launch"
    empty = await client.post(url, headers=headers)
    assert empty.status_code == 409 and "no subscribed member" in empty.json()["detail"]

    rows = [{"email": f"m{n}@example.com"} for n in range(50)]
    await client.post(f"/campaigns/{campaign['id']}/members", json=rows, headers=headers)
    answers = await asyncio.gather(*(client.post(url, headers=headers) for _ in range(8)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * 7, [a.text for a in answers]
    launched = next(a.json() for a in answers if a.status_code == 200)
    assert launched["status"] == "running" and launched["launched_at"] is not None
    async with pgstack_migrated_db.session() as session:
        assert await session.scalar(select(Campaign.version)) == 2


@pytest.mark.parametrize(
    ("method", "path", "payload", "status"),
    [
        ("get", "/campaigns?password_hash=x", None, 422),
        ("get", "/campaigns?sort=id;DROP TABLE campaigns", None, 422),
        ("get", "/campaigns?name__regex=.*", None, 422),
        ("get", "/campaigns?limit=100000", None, 422),
        ("get", "/campaigns?offset=-1", None, 422),
        ("get", "/campaigns/not-a-uuid", None, 422),
        ("get", "/campaigns/0194f1b2-0000-7000-8000-000000000000", None, 404),
        ("post", "/campaigns", {"name": "bad\x00name"}, 422),
        ("post", "/campaigns", {"name": "x", "budget_cents": -1}, 422),
        ("post", "/campaigns", {"name": "x", "owner": "me"}, 422),
        ("post", "/campaigns", {"name": "Taken"}, 409),
        ("patch", "/campaigns/{id}", {"version": 7, "name": "y"}, 409),
        ("patch", "/campaigns/{id}", {"name": "no version"}, 422),
        ("post", "/campaigns/{id}/members", [{"email": "not an address"}], 422),
        ("post", "/campaigns/{id}/members", {"email": "a@b.c"}, 422),
        ("post", "/campaigns/{id}/members", [{"email": "\uff41@b.c"}, {"email": "A@b.c"}], 422),
    ],
)
async def test_hostile_input_is_a_4xx_problem(
    client: httpx.AsyncClient, make_user, method: str, path: str, payload: object, status: int
) -> None:
    # proves: X2, R2 (filters and sorts only on declared fields, never SQL), W2
    _, headers = await make_user("eve@example.com")
    taken = await new_campaign(client, headers, "Taken")
    answer = await client.request(
        method, path.format(id=taken["id"]), json=payload, headers=headers
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/campaigns", headers=headers)).json()["total"] == 1


async def test_routes_need_a_user(client: httpx.AsyncClient) -> None:
    # proves: X2, W2 (every campaigns route authenticated)
    for method, path in [("get", "/campaigns"), ("post", "/campaigns")]:
        answer = await client.request(method, path, json={"name": "x"})
        assert answer.status_code == 401
    bad = {"Authorization": "Bearer pgs_abcdefgh_notarealkeyatall000000000"}
    assert (await client.get("/campaigns", headers=bad)).status_code == 401


async def test_kubernetes_probes(client: httpx.AsyncClient) -> None:
    # proves: X2, C5 (liveness, readiness with migrations at head, startup)
    live = await client.get("/health")
    assert live.status_code == 200 and live.json()["status"] == "pass"
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.headers["content-type"].startswith("application/health+json")
    [migrations] = ready.json()["checks"]["migrations"]
    assert migrations["status"] == "pass"
    assert (await client.get("/startup")).status_code == 200


async def test_seed_data_sets_are_idempotent(
    pgstack_migrated_db: Database, pgstack_migrated_url: URL
) -> None:
    # proves: X2, G6 (development and test data sets, idempotent, progress; refused in production)
    MigrationProject.from_pyproject(HERE).import_seeds()
    first = await run_seeders(pgstack_migrated_db, "test")
    assert first == {"campaigns": 1, "campaign_members": 3}
    assert await run_seeders(pgstack_migrated_db, "test") == {"campaigns": 0, "campaign_members": 0}
    async with pgstack_migrated_db.session() as session:
        assert set(await session.scalars(select(Member.created_by))) == {"seed"}

    env = {**os.environ, "DATABASE_URL": pgstack_migrated_url.render_as_string(False)}
    seed = [PGSTACK, "db", "seed", "dev"]
    done = subprocess.run(seed, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    async with pgstack_migrated_db.session() as session:
        members = await session.scalar(select(func.count()).select_from(Member))
        campaigns = await session.scalar(select(func.count()).select_from(Campaign))
    assert (campaigns, members) == (4, 3 + 20_001)
    again = subprocess.run(seed, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    async with pgstack_migrated_db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Member)) == members

    production = {**env, "PGSTACK_ENV": "production"}
    refused = subprocess.run(seed, cwd=HERE, env=production, capture_output=True, text=True)
    assert refused.returncode == 1 and "production" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("check", ["roundtrip", "drift"])
def test_migrations(check: str, pgstack_empty_url: URL, pgstack_migrated_url: URL) -> None:
    # proves: X2, G2, G4 (the app's revision on top of pgstack's: up, down, up; no drift)
    project = MigrationProject.from_pyproject(HERE)
    if check == "roundtrip":
        assert_migrations_roundtrip(pgstack_empty_url, project=project)
    else:
        assert_no_drift(pgstack_migrated_url, project=project)
