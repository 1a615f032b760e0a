"""`/admin/db`: admins only, server-rendered with SVG charts, and clean in a real browser."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI

from pgstack.config import Settings
from pgstack.crypto import configure_encryption
from pgstack.db.database import Database
from pgstack.identity import Identity
from pgstack.migrations import MigrationProject, heads
from pgstack.web import create_app
from pgstack.web.modules import builtin_routers

STRONG = "violet Harbour 42 lanterns drift"


def make_app(settings: Settings) -> FastAPI:
    return create_app(settings, monitor_interval=None, routers=builtin_routers())


async def tokens(db: Database) -> tuple[str, str]:
    """A session token of an admin and of a plain user."""
    identity = Identity(db)
    await identity.users.create("root@example.com", STRONG, roles=["admin"])
    await identity.users.create("pat@example.com", STRONG)
    admin = await identity.auth.login("root@example.com", STRONG)
    user = await identity.auth.login("pat@example.com", STRONG)
    return admin.token, user.token


@pytest.fixture(autouse=True)
def no_keys() -> Iterator[None]:
    configure_encryption(None)
    yield
    configure_encryption(None)


@pytest.fixture
async def client(pgstack_migrated_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(pgstack_migrated_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_dashboard_is_for_admins_and_shows_every_part(
    client: httpx.AsyncClient, pgstack_migrated_db: Database
) -> None:
    # proves: O7
    admin, user = await tokens(pgstack_migrated_db)
    assert (await client.get("/admin/db")).status_code == 401
    denied = await client.get("/admin/db", headers={"Authorization": f"Bearer {user}"})
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("application/problem+json")

    async with pgstack_migrated_db.engine.begin() as conn:
        await conn.exec_driver_sql('CREATE TABLE "<script>alert(1)</script>" (x int)')
        await conn.exec_driver_sql("CREATE TABLE loose (x int)")
    page = await client.get("/admin/db", headers={"Authorization": f"Bearer {admin}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<meta http-equiv="refresh"' in html
    assert 'id="pool-chart"' in html and 'id="latency-chart"' in html
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "tables.no-primary-key" in html and "public.loose" in html
    [head] = heads(MigrationProject.pgstack_only())  # the newest of pgstack's revisions
    assert f"Applied: {head}" in html and "Not applied: none" in html
    assert re.search(r"https?://(?!www\.w3\.org)", html) is None  # nothing from elsewhere
    # Pool use is a series: each render adds a sample.
    again = await client.get("/admin/db", headers={"Authorization": f"Bearer {admin}"})
    assert "2 sample(s)" in again.text


# -- in a real browser ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(pgstack_migrated_settings: Settings) -> Iterator[str]:
    """The app served by uvicorn on a loopback port, in a thread; its base URL."""
    port = free_port()
    config = uvicorn.Config(
        make_app(pgstack_migrated_settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


class DevTools:
    """A small Chrome DevTools Protocol client over one flattened page session."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        await self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    async def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event.get("method") == method:
                        return event
                self.events.append(json.loads(await self.ws.recv()))


@pytest.mark.browser
async def test_dashboard_in_headless_chromium(
    served: str, pgstack_migrated_db: Database, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    # proves: O7
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium chromium-driver")
    admin, _ = await tokens(pgstack_migrated_db)
    browser = subprocess.Popen(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,1400",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert browser.stderr is not None
        endpoint = None
        deadline = time.monotonic() + 30
        while endpoint is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(browser.stderr.readline)
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            endpoint = found.group(1) if found else None
        assert endpoint, "chromium did not open its DevTools port"
        async with websockets.connect(endpoint, max_size=50 * 2**20) as ws:
            cdp = DevTools(ws)
            target = await cdp.send("Target.createTarget", url="about:blank")
            attached = await cdp.send(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            cdp.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                await cdp.send(f"{domain}.enable")
            await cdp.send(
                "Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {admin}"}
            )
            await cdp.send("Page.navigate", url=f"{served}/admin/db")
            await cdp.wait_for("Page.loadEventFired")
            result = await cdp.send(
                "Runtime.evaluate",
                returnByValue=True,
                expression=(
                    "JSON.stringify({charts: [...document.querySelectorAll('svg[data-chart]')]"
                    ".map(s => [s.id, s.getBoundingClientRect().width > 100]),"
                    " line: !!document.querySelector('#pool-chart polyline'),"
                    " bars: document.querySelectorAll('#latency-chart rect').length,"
                    " findings: document.querySelectorAll('#findings tbody tr').length,"
                    " title: document.title})"
                ),
            )
            seen = json.loads(result["result"]["value"])
            shot = await cdp.send("Page.captureScreenshot", format="png")
            await asyncio.sleep(0.5)  # let late console messages arrive
            await cdp.send("Runtime.evaluate", expression="1")
        artifacts = pytestconfig.rootpath / ".pgstack" / "test-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        png = base64.b64decode(shot["data"])
        (artifacts / "dashboard.png").write_bytes(png)
        assert png.startswith(b"\x89PNG")

        assert seen["title"] == "pgstack database"
        assert seen["charts"] == [["pool-chart", True], ["latency-chart", True]]
        assert seen["line"] and seen["bars"] > 5 and seen["findings"] > 0
        responses = [
            e["params"]["response"]
            for e in cdp.events
            if e.get("method") == "Network.responseReceived"
        ]
        assert [r["status"] for r in responses if r["url"].endswith("/admin/db")] == [200]
        problems = [
            e["params"]
            for e in cdp.events
            if e.get("method") in ("Runtime.exceptionThrown", "Network.loadingFailed")
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        ]
        assert problems == [], problems
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
