"""The meetings service as users and hostile callers meet it: HTTP against real PostgreSQL.

The app connects as the application role of `db init` (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from conftest import HERE, Caller, Install, MakeUser, team_id
from meetings_saas.service import MAX_IMPORT_BYTES

from pgstack import Database
from pgstack.audit import AuditLog
from pgstack.tenancy import Tenancy, tenant
from pgstack.testing.plugin import AppRoleDatabase, asyncpg_dsn
from pgstack.tokens import TokenVault

PROBLEM = "application/problem+json"


def problem(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    return str(answer.json()["detail"])


async def new_meeting(
    client: httpx.AsyncClient, base: str, caller: Caller, external_id: str, **extra: Any
) -> dict[str, Any]:
    body = {"external_id": external_id, "title": f"Call {external_id}", **extra}
    answer = await client.post(f"{base}/meetings", json=body, headers=caller.headers)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def test_a_slack_install_makes_a_workspace_with_its_installer_as_owner(
    client: httpx.AsyncClient, db: Database, make_user: MakeUser
) -> None:
    # proves: X3, N1, N5 (workspace from a team id; users with roles per workspace)
    ada, bob, eve = await make_user("ada"), await make_user("bob"), await make_user("eve")
    team = team_id()
    body = {"team_id": team, "team_name": "Acme", "slack_user_id": "U0ADA"}
    first = await client.post("/workspaces/install", json=body, headers=ada.headers)
    assert first.status_code == 201, first.text
    workspace = first.json()
    assert (workspace["team_id"], workspace["name"], workspace["created"]) == (team, "Acme", True)
    # Installing again (the Slack app re-authorized) changes nothing for a member...
    again = await client.post("/workspaces/install", json=body, headers=ada.headers)
    assert again.status_code == 200 and again.json()["id"] == workspace["id"]
    # ...and is refused to anyone else: a team id does not let a stranger in.
    assert "ask one of its admins" in problem(
        await client.post("/workspaces/install", json=body, headers=eve.headers), 409
    )

    # The installer's double click, and a stranger at the same moment, on a new team.
    race = {**body, "team_id": team_id()}
    answers = await asyncio.gather(
        *(client.post("/workspaces/install", json=race, headers=c.headers) for c in [ada] * 4),
        client.post("/workspaces/install", json=race, headers=eve.headers),
    )
    codes = sorted(a.status_code for a in answers)
    # One install made it (201); the others see it: the owner's own 200, the other side 409.
    assert codes in ([200, 200, 200, 201, 409], [201, 409, 409, 409, 409]), codes
    assert len({a.json()["id"] for a in answers if a.status_code < 300}) == 1

    tenancy = Tenancy(db)
    ws = uuid.UUID(workspace["id"])
    assert await tenancy.memberships.role_of(ws, ada.user_id) == "owner"
    found = await tenancy.memberships.find_by_identity(ws, "slack", "U0ADA")
    assert found is not None and found.id == ada.user_id
    # Roles, through pgstack's tenancy routes: the owner invites bob as a viewer (reads only).
    invited = await client.post(
        f"/tenants/{ws}/invitations",
        json={"email": bob.email, "role": "viewer"},
        headers=ada.headers,
    )
    assert invited.status_code == 201, invited.text
    token = {"token": invited.json()["token"]}
    # Only the invited address accepts: for anyone else the token is no credential (401).
    assert "for another e-mail address" in problem(
        await client.post("/tenants/invitations/accept", json=token, headers=eve.headers), 401
    )
    joined = await client.post("/tenants/invitations/accept", json=token, headers=bob.headers)
    assert joined.status_code == 200 and joined.json()["role"] == "viewer", joined.text
    base = f"/workspaces/{ws}"
    assert (await client.get(f"{base}/meetings", headers=bob.headers)).status_code == 200
    assert "Viewers can only read" in problem(
        await client.post(
            f"{base}/meetings", json={"external_id": "x", "title": "x"}, headers=bob.headers
        ),
        403,
    )
    # A stranger gets 404 for the workspace, whether it exists or not.
    assert (await client.get(f"{base}/meetings", headers=eve.headers)).status_code == 404
    assert (
        await client.get(f"/workspaces/{uuid.uuid4()}/meetings", headers=eve.headers)
    ).status_code == 404

    with tenant(ws):
        entries = await AuditLog(db).entries(resource_type="workspace")
    assert [(e["action"], e["resource_id"]) for e in entries.items] == [
        ("workspace.installed", team)
    ]


async def test_the_meeting_state_machine_refuses_invalid_moves_and_counts_retries(
    client: httpx.AsyncClient, make_user: MakeUser, install: Install
) -> None:
    # proves: X3 (pending -> processing -> completed / failed, retries)
    ada = await make_user("ada")
    base = f"/workspaces/{(await install(ada))['id']}"
    meeting = await new_meeting(client, base, ada, "cal-1", max_attempts=2)
    url = f"{base}/meetings/{meeting['id']}"
    assert (meeting["status"], meeting["attempts"]) == ("pending", 0)

    detail = problem(
        await client.post(f"{url}/complete", json={"summary": "x"}, headers=ada.headers), 409
    )
    assert (
        detail
        == "Meeting 'cal-1' cannot become completed: from pending it can only become processing."
    )
    assert "cannot become pending" in problem(
        await client.post(f"{url}/retry", headers=ada.headers), 409
    )

    claimed = (await client.post(f"{url}/claim", headers=ada.headers)).json()
    assert (claimed["status"], claimed["attempts"]) == ("processing", 1)
    assert claimed["started_at"] is not None
    failed = await client.post(
        f"{url}/fail", json={"error": "transcript missing"}, headers=ada.headers
    )
    assert (
        failed.json()["status"] == "failed" and failed.json()["last_error"] == "transcript missing"
    )
    retried = (await client.post(f"{url}/retry", headers=ada.headers)).json()
    assert (retried["status"], retried["attempts"]) == ("pending", 1)
    assert (await client.post(f"{url}/claim", headers=ada.headers)).json()["attempts"] == 2
    await client.post(f"{url}/fail", json={"error": "again"}, headers=ada.headers)
    # Two attempts of two: no more retries.
    assert "failed 2 time(s), its limit" in problem(
        await client.post(f"{url}/retry", headers=ada.headers), 409
    )

    other = await new_meeting(client, base, ada, "cal-2")
    url2 = f"{base}/meetings/{other['id']}"
    await client.post(f"{url2}/claim", headers=ada.headers)
    done = await client.post(
        f"{url2}/complete", json={"summary": "Next steps: pricing"}, headers=ada.headers
    )
    assert done.json()["status"] == "completed" and done.json()["summary"] == "Next steps: pricing"
    for verb in ("claim", "retry"):
        detail = problem(await client.post(f"{url2}/{verb}", headers=ada.headers), 409)
        assert "a completed meeting does not change any more" in detail

    listed = await client.get(f"{base}/meetings", params={"status": "failed"}, headers=ada.headers)
    assert [m["external_id"] for m in listed.json()["items"]] == ["cal-1"]
    # The same external id twice in one workspace is a conflict.
    dup = await client.post(
        f"{base}/meetings", json={"external_id": "cal-1", "title": "x"}, headers=ada.headers
    )
    assert dup.status_code == 409


async def test_of_concurrent_claimers_exactly_one_wins(
    client: httpx.AsyncClient, make_user: MakeUser, install: Install
) -> None:
    # proves: X3 (one pending meeting, many workers: one claim, one attempt counted)
    ada = await make_user("ada")
    base = f"/workspaces/{(await install(ada))['id']}"
    meeting = await new_meeting(client, base, ada, "race")
    answers = await asyncio.gather(
        *(
            client.post(f"{base}/meetings/{meeting['id']}/claim", headers=ada.headers)
            for _ in range(10)
        )
    )
    assert sorted(a.status_code for a in answers) == [200] + [409] * 9
    final = (await client.get(f"{base}/meetings/{meeting['id']}", headers=ada.headers)).json()
    assert (final["status"], final["attempts"]) == ("processing", 1)

    # Workers taking "the next one": three pending meetings, six workers, three distinct claims.
    for n in range(3):
        await new_meeting(client, base, ada, f"queue-{n}")
    taken = await asyncio.gather(
        *(client.post(f"{base}/meetings/claim", headers=ada.headers) for _ in range(6))
    )
    assert all(a.status_code == 200 for a in taken), [a.text for a in taken]
    claimed = [a.json()["external_id"] for a in taken if a.json() is not None]
    assert sorted(claimed) == ["queue-0", "queue-1", "queue-2"]


async def test_crm_connections_keep_tokens_in_the_vault_with_one_default(
    client: httpx.AsyncClient, db: Database, make_user: MakeUser, install: Install
) -> None:
    # proves: X3, T1 (tokens encrypted in the vault, per workspace), N3
    ada, bob = await make_user("ada"), await make_user("bob")
    acme, globex = await install(ada), await install(bob)
    base = f"/workspaces/{acme['id']}"

    async def connect(provider: str, account: str) -> dict[str, Any]:
        body = {
            "provider": provider,
            "account": account,
            "access_token": f"at-{provider}-secret",
            "refresh_token": f"rt-{provider}-secret",
            "expires_in": 3600,
        }
        answer = await client.post(f"{base}/crm-connections", json=body, headers=ada.headers)
        assert answer.status_code == 201, answer.text
        assert "secret" not in answer.text
        return dict(answer.json())

    # A new workspace's first connections, made at the same moment: one becomes the default.
    fresh = f"/workspaces/{(await install(ada))['id']}"
    first = await asyncio.gather(
        *(
            client.post(
                f"{fresh}/crm-connections",
                json={"provider": "pipedrive", "account": f"a{n}", "access_token": "t"},
                headers=ada.headers,
            )
            for n in range(8)
        )
    )
    assert [a.status_code for a in first] == [201] * 8, [a.text for a in first]
    assert sum(a.json()["is_default"] for a in first) == 1

    hubspot = await connect("hubspot", "portal-1")
    salesforce = await connect("salesforce", "org-1")
    assert (hubspot["is_default"], salesforce["is_default"]) == (True, False)
    with tenant(uuid.UUID(acme["id"])):
        token = await TokenVault(db).get("hubspot", "portal-1")
        assert token.access_token == "at-hubspot-secret"
    async with db.engine.connect() as conn:  # the raw column is ciphertext
        raw = (
            await conn.exec_driver_sql(
                "SELECT count(*) FROM oauth_tokens WHERE access_token LIKE '%secret%'"
            )
        ).scalar()
    assert raw == 0
    with tenant(uuid.UUID(globex["id"])):  # the other workspace has no such token
        assert await TokenVault(db).list_tokens() == []

    # Two admins choosing different defaults at once: one default remains.
    urls = [f"{base}/crm-connections/{c['id']}/default" for c in (hubspot, salesforce)]
    answers = await asyncio.gather(*(client.post(u, headers=ada.headers) for u in urls * 3))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    listed = (await client.get(f"{base}/crm-connections", headers=ada.headers)).json()["items"]
    assert sum(c["is_default"] for c in listed) == 1

    synced = await client.post(
        f"{base}/crm-connections/{hubspot['id']}/sync", json={}, headers=ada.headers
    )
    assert synced.json()["last_sync_at"] is not None and synced.json()["status"] == "connected"
    broken = await client.post(
        f"{base}/crm-connections/{hubspot['id']}/sync",
        json={"error": "401 from CRM"},
        headers=ada.headers,
    )
    assert (broken.json()["status"], broken.json()["last_error"]) == ("error", "401 from CRM")

    gone = await client.delete(f"{base}/crm-connections/{hubspot['id']}", headers=ada.headers)
    assert (gone.json()["status"], gone.json()["is_default"]) == ("revoked", False)
    with tenant(uuid.UUID(acme["id"])):
        assert [t.provider for t in await TokenVault(db).list_tokens()] == ["salesforce"]
    assert "status is revoked: connect the account again first" in problem(
        await client.post(f"{base}/crm-connections/{hubspot['id']}/default", headers=ada.headers),
        409,
    )
    # bob, owner of another workspace, cannot reach acme's connections at all.
    assert (await client.get(f"{base}/crm-connections", headers=bob.headers)).status_code == 404


MAPPINGS = [
    {"domain": "Acme.com", "crm_account_id": "001A", "account_name": "Acme", "confidence": 0.9},
    {"domain": "globex.io", "crm_account_id": "001G"},
]


async def test_account_mappings_import_is_all_or_nothing_and_idempotent(
    client: httpx.AsyncClient, make_user: MakeUser, install: Install
) -> None:
    # proves: X3 (domain -> CRM account, confidence, usage counts, bulk import from JSON)
    ada = await make_user("ada")
    base = f"/workspaces/{(await install(ada))['id']}"
    url = f"{base}/account-mappings/import"
    headers = {**ada.headers, "content-type": "application/json"}

    async def upload(data: bytes) -> httpx.Response:
        return await client.post(url, content=data, headers=headers)

    async def listed() -> list[dict[str, Any]]:
        answer = await client.get(f"{base}/account-mappings", headers=ada.headers)
        return list(answer.json()["items"])

    for bad, says in [
        (b'[{"domain": "acme.com", "crm_account_id": "1"},', "not valid JSON at line 1"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"domain": "acme.com"}', "must be a JSON array"),
        (
            json.dumps(
                [MAPPINGS[0], {"domain": "x.io", "crm_account_id": "2", "confidence": 2}]
            ).encode(),
            "Entry 2",
        ),
        (
            json.dumps([MAPPINGS[1], {"domain": "not a domain", "crm_account_id": "3"}]).encode(),
            "Entry 2 of the import file: domain",
        ),
        (
            json.dumps([MAPPINGS[1], {"domain": "GLOBEX.io", "crm_account_id": "4"}]).encode(),
            "globex.io more than once",
        ),
        (
            json.dumps(
                [{"domain": "a.io", "crm_account_id": "5", "sql": "'; DROP TABLE x"}]
            ).encode(),
            "Extra inputs",
        ),
        (b"[1]", "Entry 1 of the import file: entry"),
        (b'[{"domain": "a.io", "crm_account_id": "6", "confidence": NaN}]', "Entry 1"),
        (b'[{"domain": "a.io", "crm_account_id": "7\\u0000"}]', "Entry 1"),
        (b"[" + b" " * MAX_IMPORT_BYTES + b"]", "over 5 MB"),
    ]:
        detail = problem(await upload(bad), 422)
        assert says in detail and "Nothing was imported" in detail, detail
    assert await listed() == []

    assert (await upload(json.dumps(MAPPINGS).encode())).json() == {"written": 2}
    resolved = await client.post(
        f"{base}/account-mappings/resolve", json={"email": "Wile@ACME.com"}, headers=ada.headers
    )
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["crm_account_id"], resolved.json()["usage_count"]) == ("001A", 1)
    # Ten lookups at once: ten uses counted, none lost.
    await asyncio.gather(
        *(
            client.post(
                f"{base}/account-mappings/resolve",
                json={"email": "x@acme.com"},
                headers=ada.headers,
            )
            for _ in range(10)
        )
    )
    before = await listed()
    assert [(m["domain"], m["usage_count"], m["confidence"]) for m in before] == [
        ("acme.com", 11, 0.9),
        ("globex.io", 0, 1.0),
    ]
    # Importing the same file again changes nothing; a changed entry is updated in place.
    assert (await upload(json.dumps(MAPPINGS).encode())).json() == {"written": 2}
    assert [(m["id"], m["usage_count"]) for m in await listed()] == [
        (m["id"], m["usage_count"]) for m in before
    ]
    changed = [{**MAPPINGS[1], "crm_account_id": "002G", "confidence": 0.5}]
    assert (await upload(json.dumps(changed).encode())).json() == {"written": 1}
    assert [(m["domain"], m["crm_account_id"], m["confidence"]) for m in await listed()][1] == (
        "globex.io",
        "002G",
        0.5,
    )

    assert "No CRM account is mapped to 'initech.com'" in problem(
        await client.post(
            f"{base}/account-mappings/resolve", json={"email": "p@initech.com"}, headers=ada.headers
        ),
        404,
    )
    assert "is not an e-mail address" in problem(
        await client.post(
            f"{base}/account-mappings/resolve", json={"email": "nobody"}, headers=ada.headers
        ),
        422,
    )


async def test_each_workspace_has_its_own_meeting_rate_limit(
    client: httpx.AsyncClient, make_user: MakeUser, install: Install, db: Database
) -> None:
    # proves: X3, N4 (per-workspace limits, shared by its members; 429 with Retry-After)
    ada, bob, carol = await make_user("ada"), await make_user("bob"), await make_user("carol")
    acme, globex = await install(ada), await install(carol)
    await Tenancy(db).memberships.add(uuid.UUID(acme["id"]), bob.user_id, "member")
    if time.time() % 60 > 50:  # the limit is 5 per UTC minute (conftest): not at its edge
        await asyncio.sleep(61 - time.time() % 60)
    acme_base, globex_base = f"/workspaces/{acme['id']}", f"/workspaces/{globex['id']}"
    statuses = []
    for n in range(6):
        caller = (ada, bob)[n % 2]  # two members, one count
        body = {"external_id": f"m{n}", "title": "t"}
        answer = await client.post(f"{acme_base}/meetings", json=body, headers=caller.headers)
        statuses.append(answer.status_code)
    assert statuses == [201] * 5 + [429]
    assert "Rate limit 5/minute (meetings) exceeded" in answer.json()["detail"]
    wait = int(answer.headers["retry-after"])
    assert 0 < wait <= math.ceil(60 - time.time() % 60) + 1
    assert answer.json()["violated-policies"] == ["meetings"]
    # The other workspace is not slowed down by acme's.
    other = await client.post(
        f"{globex_base}/meetings", json={"external_id": "g", "title": "t"}, headers=carol.headers
    )
    assert other.status_code == 201 and other.headers["ratelimit"].startswith('"meetings";r=4;')
    # A refused request stored nothing.
    listed = await client.get(f"{acme_base}/meetings", headers=ada.headers)
    assert listed.json()["total"] == 5


async def test_hostile_input_gets_clear_4xx_never_5xx(
    client: httpx.AsyncClient, make_user: MakeUser, install: Install
) -> None:
    # proves: X3, R2 (filters and sorts never reach SQL), I8
    ada, bob = await make_user("ada"), await make_user("bob")
    base = f"/workspaces/{(await install(ada))['id']}"
    theirs = await new_meeting(
        client, f"/workspaces/{(await install(bob))['id']}", bob, "secret-call"
    )
    cases = [
        ("get", f"{base}/meetings?summary=x", None, 422),
        ("get", f"{base}/meetings?sort=title;DROP TABLE meetings", None, 422),
        ("get", f"{base}/meetings?status__in=failed&limit=100000", None, 422),
        ("get", f"{base}/meetings/not-a-uuid", None, 422),
        ("get", f"{base}/meetings/{theirs['id']}", None, 404),  # bob's meeting, ada's workspace
        ("post", f"{base}/meetings/{theirs['id']}/claim", None, 404),
        ("post", f"{base}/meetings", {"external_id": "a\x00b", "title": "t"}, 422),
        (
            "post",
            f"{base}/meetings",
            {"external_id": "a", "title": "t", "tenant_id": str(uuid.uuid4())},
            422,
        ),
        (
            "post",
            f"{base}/meetings",
            {"external_id": "a", "title": "t", "max_attempts": 10**12},
            422,
        ),
        (
            "post",
            f"{base}/crm-connections",
            {"provider": "Robert'); --", "account": "a", "access_token": "t"},
            422,
        ),
        (
            "post",
            "/workspaces/install",
            {"team_id": "' OR 1=1", "team_name": "x", "slack_user_id": "U1"},
            422,
        ),
        ("get", "/workspaces/%00/meetings", None, 422),
    ]
    for method, url, body, status in cases:
        answer = await client.request(method, url, json=body, headers=ada.headers)
        assert answer.status_code == status, (url, body, answer.text)
        assert answer.headers["content-type"].startswith(PROBLEM), url
    # The OpenAPI document describes the import body (the file) and every route.
    document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/workspaces/{tenant_id}/account-mappings/import"]["post"]
    assert body["requestBody"]["content"]["application/json"]["schema"]["type"] == "array"
    # No credentials: 401 everywhere.
    assert (await client.get(f"{base}/meetings")).status_code == 401
    assert (await client.post("/workspaces/install", json={})).status_code == 401


async def test_mappings_import_from_a_file_on_the_command_line(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    pgstack_app_role_database: AppRoleDatabase,
    encryption_key: str,
    tmp_path: Path,
) -> None:
    # proves: X3 (bulk import from a JSON file: clear error, nothing stored; idempotent)
    ada = await make_user("ada")
    team = team_id()
    body = {"team_id": team, "team_name": "Files", "slack_user_id": "U0FILES"}
    ws = (await client.post("/workspaces/install", json=body, headers=ada.headers)).json()["id"]
    env = {
        **os.environ,
        "DATABASE_URL": asyncpg_dsn(pgstack_app_role_database.app),
        "PGSTACK_ENCRYPTION_KEYS": encryption_key,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "meetings_saas", "import-mappings", *args]
        return subprocess.run(
            command, cwd=HERE, env=env, capture_output=True, text=True, timeout=120
        )

    broken = tmp_path / "broken.json"
    broken.write_text('[{"domain": "acme.com", "crm_account_id": "001A"},\n  {"domain": ')
    refused = run(team, str(broken))
    assert refused.returncode == 1
    assert "not valid JSON at line 2" in refused.stderr and "Nothing was imported" in refused.stderr
    assert "Traceback" not in refused.stderr
    good = tmp_path / "mappings.json"
    good.write_text(json.dumps(MAPPINGS))
    for _ in range(2):  # the second run changes nothing
        done = run(team, str(good))
        assert (done.returncode, done.stdout.strip()) == (0, "2 mapping(s) written"), done.stderr
    listed = await client.get(f"/workspaces/{ws}/account-mappings", headers=ada.headers)
    assert [m["domain"] for m in listed.json()["items"]] == ["acme.com", "globex.io"]
    unknown = run("T0NOSUCHTEAM", str(good))
    assert unknown.returncode == 1 and "No tenant has the external id" in unknown.stderr
