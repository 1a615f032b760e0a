"""`/docs` works on a host with no way out (its assets come from the installed package), and
production can turn the docs and the schema off."""

from __future__ import annotations

import re

from pgstack import Settings
from pgstack.web import create_app

from .conftest import served


async def test_docs_load_every_asset_from_the_app_itself(pgstack_settings: Settings) -> None:
    # proves: W1
    app = create_app(pgstack_settings, monitor_interval=None)
    async with served(app, lifespan=False) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert "https://" not in page.text and "http://" not in page.text
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
        assets = [u for u in urls if u != "/openapi.json"]
        assert len(assets) >= 3  # script, stylesheet, icon
        for url in assets:
            assert url.startswith("/docs/"), url
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 500, url
        script = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in script.headers["content-type"]
        assert "SwaggerUIBundle" in script.text
        assert (await client.get("/openapi.json")).json()["info"]["title"] == "pgstack"
        assert (await client.get("/redoc")).status_code == 404  # ReDoc would need a CDN


async def test_production_can_turn_docs_and_schema_off(pgstack_settings: Settings) -> None:
    # proves: W1
    settings = pgstack_settings.model_copy(update={"docs": False})
    assert Settings(PGSTACK_DOCS="false").docs is False  # type: ignore[call-arg]
    app = create_app(settings, monitor_interval=None)
    async with served(app, lifespan=False) as client:
        for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"] == "application/problem+json"
        assert (await client.get("/health")).status_code == 200
