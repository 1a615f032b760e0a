"""`/metrics` as scrapers and linters read it: Prometheus text, OpenMetrics, promtool's rules."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from pgstack import Settings
from pgstack.web import create_app

from .conftest import served

# What Prometheus itself sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.fixture
async def client(pgstack_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with served(create_app(pgstack_settings, monitor_interval=None)) as c:
        await c.get("/ready")  # a query, a health result: every family has samples
        yield c


async def test_text_format_names_follow_prometheus_conventions(client: httpx.AsyncClient) -> None:
    # proves: C7
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parse_text(response.text) if f.name.startswith("pgstack_")}
    assert families["pgstack_pool_connections"].type == "gauge"
    assert families["pgstack_pool_size"].samples[0].labels == {"pool": "primary"}
    for family in families.values():
        assert family.documentation, family.name
        if family.type == "gauge":
            # promtool: a gauge must not end in _total (that suffix means a counter).
            assert not family.name.endswith("_total"), family.name
    assert "pgstack_pool_total" not in response.text


async def test_openmetrics_when_the_scraper_asks(client: httpx.AsyncClient) -> None:
    # proves: C7
    response = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(response.text)}
    assert families["pgstack_query_errors"].type == "counter"
    assert families["pgstack_query_duration_seconds"].type == "histogram"
    assert families["pgstack_pool_connections"].type == "gauge"


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run does)",
)
async def test_promtool_accepts_the_metrics(client: httpx.AsyncClient) -> None:
    # proves: C7
    assert PROMTOOL is not None, "CI must have promtool: .ci/run installs it"
    body = (await client.get("/metrics")).content
    process = await asyncio.create_subprocess_exec(
        PROMTOOL,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate(body)
    report = out.decode()
    assert process.returncode == 0 and "pgstack" not in report, report
