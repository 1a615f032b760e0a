"""Per-address limits behind a proxy: counted per client, as the audit log names it."""

from __future__ import annotations

import httpx
from fastapi import Depends

from pgstack.config import Settings
from pgstack.web import create_app
from pgstack.web.ratelimit import rate_limit

from .test_ratelimit import away_from_boundary


async def test_per_ip_limits_count_the_client_behind_a_trusted_proxy(
    pgstack_migrated_settings: Settings,
) -> None:
    # proves: N4 (per client address), W2 (one client cannot exhaust everyone's allowance)
    settings = pgstack_migrated_settings.model_copy(update={"trusted_proxies": "10.0.0.0/8"})
    app = create_app(settings, monitor_interval=None)

    @app.get("/sign-in", dependencies=[Depends(rate_limit("2/minute", resource="in", per="ip"))])
    async def sign_in() -> dict[str, bool]:
        return {"ok": True}

    def via(peer: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    await away_from_boundary(60, margin=10)
    async with app.router.lifespan_context(app), via("10.0.0.7") as proxy:
        attacker = {"X-Forwarded-For": "198.51.100.9"}
        codes = [(await proxy.get("/sign-in", headers=attacker)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        # Another client through the same proxy keeps its own allowance.
        other = {"X-Forwarded-For": "203.0.113.4"}
        assert (await proxy.get("/sign-in", headers=other)).status_code == 200
        # A client that is not a trusted proxy cannot pick its address with the header.
        async with via("192.0.2.50") as direct:
            forged = [
                (await direct.get("/sign-in", headers={"X-Forwarded-For": f"203.0.113.{n}"}))
                for n in range(3)
            ]
            assert [a.status_code for a in forged] == [200, 200, 429]
