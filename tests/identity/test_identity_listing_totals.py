"""The admin user listing over HTTP estimates a big directory's total and counts a small one."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from pgstack.identity import Identity

from .conftest import STRONG, bearer, login

MANY = 12_000


async def test_admin_users_report_whether_the_total_is_an_estimate(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/auth/register", json={"email": "pat@example.com", "password": STRONG})
    identity: Identity = client.app.state.pgstack_identity  # type: ignore[attr-defined]
    await identity.users.create("root@example.com", STRONG, roles=["admin"])
    admin = bearer(await login(client, "root@example.com", STRONG))
    engine = identity.db.engine
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, email, version) SELECT gen_random_uuid(), "
                "'bulk' || g || '@example.com', 1 FROM generate_series(1, :n) AS g"
            ),
            {"n": MANY},
        )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE users"))

    big = await client.get("/admin/users", params={"limit": 20}, headers=admin)
    assert big.status_code == 200, big.text
    body = big.json()
    assert body["total_is_estimate"] is True and body["has_more"] is True
    assert 0.7 * MANY < body["total"] < 1.3 * MANY
    assert len(body["items"]) == 20

    one = await client.get("/admin/users", params={"email": "bulk77@"}, headers=admin)
    assert one.status_code == 200, one.text
    assert one.json()["total"] == 1 and one.json()["total_is_estimate"] is False
    assert one.json()["has_more"] is False
    assert one.json()["items"][0]["email"] == "bulk77@example.com"

    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["UserPageOut"]
    assert {"total", "total_is_estimate", "has_more"} <= set(schema["required"])
    assert schema["properties"]["total_is_estimate"]["type"] == "boolean"
