"""`/admin/db`: a read-only database dashboard for admins, rendered on the server.

    app = create_app(routers=[dashboard_router(dependencies=[Depends(require_roles("admin"))])])

Pool use over time and the query latency histogram are SVG drawn here from pgstack's own
metrics; the doctor's findings, the slowest statements, table sizes and the migrations come
from the database. No script, no CDN, nothing fetched by the page: it works offline and
refreshes itself every few seconds. Pool use is sampled each time the page renders.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.db.doctor import Finding, diagnose, slowest_statements
from pgstack.db.metrics import QUERY_LATENCY
from pgstack.migrations.api import describe_revisions, status_async
from pgstack.migrations.project import MigrationProject
from pgstack.web.deps import get_database

REFRESH_S = 10
DOCTOR_TTL_S = 60.0
_SAMPLES = 120
_SECURITY_HEADERS = {
    # Nothing but the page itself and its inline style: no script runs, nothing loads.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class PoolSample:
    """Connections in use and allowed, at one moment."""

    at: float
    in_use: int
    capacity: int


class _State:
    """Per-app history (pool samples) and the doctor's last findings."""

    def __init__(self) -> None:
        self.samples: deque[PoolSample] = deque(maxlen=_SAMPLES)
        self.findings: list[Finding] = []
        self.findings_at = 0.0


def _state(request: Request) -> _State:
    state: _State | None = getattr(request.app.state, "pgstack_dashboard", None)
    if state is None:
        state = request.app.state.pgstack_dashboard = _State()
    return state


def _sample(db: Database) -> PoolSample:
    stats = db.pool_stats()
    in_use, capacity = stats["checked_out"], stats["size"] + stats["max_overflow"]
    lane = db.read_pool_stats()
    if lane is not None:
        in_use += lane["checked_out"]
        capacity += lane["size"] + lane["max_overflow"]
    return PoolSample(time.time(), in_use, capacity)


def latency_buckets() -> list[tuple[str, float]]:
    """(upper bound label, statements in that bucket) from the query latency histogram."""
    cumulative: list[tuple[str, float]] = []
    for metric in QUERY_LATENCY.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                cumulative.append((s.labels["le"], s.value))
    buckets, before = [], 0.0
    for le, total in cumulative:
        label = "more" if le == "+Inf" else f"≤{float(le) * 1000:g} ms"
        buckets.append((label, total - before))
        before = total
    return buckets


# -- SVG ----------------------------------------------------------------------------------------

_W, _H, _PAD = 560, 180, 32


def pool_chart(samples: Sequence[PoolSample]) -> str:
    """A line of connections in use over time, against the capacity."""
    capacity = max([s.capacity for s in samples] or [1])
    n = len(samples)

    def x(i: int) -> float:
        return _PAD + (i * (_W - 2 * _PAD) / max(1, n - 1))

    def y(v: float) -> float:
        return _H - _PAD - v * (_H - 2 * _PAD) / max(1, capacity)

    points = " ".join(f"{x(i):.1f},{y(s.in_use):.1f}" for i, s in enumerate(samples))
    last = samples[-1] if samples else None
    caption = (
        f"{last.in_use} of {last.capacity} connections in use now; {n} sample(s)"
        if last
        else "no samples yet"
    )
    return (
        f'<svg id="pool-chart" data-chart="pool" role="img" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>Pool use over time: {escape(caption)}</title>"
        f'<line x1="{_PAD}" y1="{y(capacity):.1f}" x2="{_W - _PAD}" y2="{y(capacity):.1f}" '
        'class="cap"/>'
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" class="axis"/>'
        f'<polyline points="{points}" class="use"/>'
        + (
            f'<circle cx="{x(n - 1):.1f}" cy="{y(last.in_use):.1f}" r="3" class="dot"/>'
            if last
            else ""
        )
        + f'<text x="{_PAD}" y="{y(capacity) - 6:.1f}">capacity {capacity}</text>'
        f'<text x="{_PAD}" y="{_H - 8}">{escape(caption)}</text>'
        "</svg>"
    )


def latency_chart(buckets: Sequence[tuple[str, float]]) -> str:
    """Bars: how many statements finished within each latency bucket."""
    top = max([v for _, v in buckets] or [0]) or 1
    width = (_W - 2 * _PAD) / max(1, len(buckets))
    bars = []
    for i, (label, value) in enumerate(buckets):
        h = value * (_H - 2 * _PAD) / top
        x = _PAD + i * width
        bars.append(
            f'<rect x="{x + 2:.1f}" y="{_H - _PAD - h:.1f}" width="{width - 4:.1f}" '
            f'height="{h:.1f}" class="bar"><title>{escape(label)}: {value:g}</title></rect>'
            f'<text x="{x + width / 2:.1f}" y="{_H - _PAD + 12}" class="tick" '
            f'text-anchor="middle">{escape(label.replace(" ms", ""))}</text>'
        )
    total = sum(v for _, v in buckets)
    return (
        f'<svg id="latency-chart" data-chart="latency" role="img" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>Query latency histogram of {total:g} statements (ms)</title>"
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" class="axis"/>'
        + "".join(bars)
        + f'<text x="{_PAD}" y="14">{total:g} statements since start; bucket upper bounds in '
        "ms</text></svg>"
    )


# -- data from the database ---------------------------------------------------------------------


async def table_sizes(db: Database, limit: int = 15) -> list[dict[str, Any]]:
    """The largest tables: name, total size (indexes and TOAST included), estimated rows."""
    async with db.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT format('%I.%I', n.nspname, c.relname) AS name,"
                " pg_size_pretty(pg_total_relation_size(c.oid)) AS size,"
                " greatest(c.reltuples, 0)::bigint AS rows FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
                " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname !~ '^pg_' ORDER BY pg_total_relation_size(c.oid) DESC LIMIT :n"
            ),
            {"n": limit},
        )
        return [dict(r) for r in result.mappings()]


async def _findings(db: Database, state: _State) -> list[Finding]:
    if time.monotonic() - state.findings_at > DOCTOR_TTL_S or not state.findings_at:
        state.findings = await diagnose(db)
        state.findings_at = time.monotonic()
    return state.findings


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}
.error{color:#b00020;font-weight:600}.warn{color:#a15c00;font-weight:600}.info{color:#05668d}
svg text{font:11px system-ui,sans-serif;fill:#444}svg .tick{font-size:9px}
.use{fill:none;stroke:#1565c0;stroke-width:2}.cap{stroke:#c62828;stroke-dasharray:4 3}
.axis{stroke:#999}.dot{fill:#1565c0}.bar{fill:#2e7d32}.empty{color:#666}
.charts{display:flex;flex-wrap:wrap;gap:16px}
"""


def dashboard_router(
    *, dependencies: Sequence[Depends] = (), project: MigrationProject | None = None
) -> APIRouter:
    """The `/admin/db` page; pass the admin dependency (pgstack serve passes the admin role)."""
    router = APIRouter(dependencies=list(dependencies))

    @router.get("/admin/db", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(request: Request) -> HTMLResponse:
        db = get_database(request)
        state = _state(request)
        state.samples.append(_sample(db))
        findings = await _findings(db, state)
        statements = await slowest_statements(db)
        sizes = await table_sizes(db)
        proj = project or MigrationProject.discover()
        migrations = await status_async(db.engine, project=proj)
        return HTMLResponse(
            _page(db, state, findings, statements, sizes, proj, migrations),
            headers=_SECURITY_HEADERS,
        )

    return router


def _page(
    db: Database,
    state: _State,
    findings: list[Finding],
    statements: list[dict[str, Any]] | None,
    sizes: list[dict[str, Any]],
    project: MigrationProject,
    migrations: Any,
) -> str:
    finding_rows = [
        (f.severity, f.id, f.object, f"{f.evidence} — {f.why}", f.fix) for f in findings
    ]
    findings_html = _table(
        ("severity", "id", "object", "evidence", "fix"), finding_rows, "The doctor found nothing."
    )
    for level in ("error", "warn", "info"):
        findings_html = findings_html.replace(
            f"<tr><td>{level}</td>", f'<tr><td class="{level}">{level}</td>'
        )
    if statements is None:
        statements_html = (
            '<p class="empty">pg_stat_statements is not loaded: add it to '
            "shared_preload_libraries, restart, and CREATE EXTENSION pg_stat_statements.</p>"
        )
    else:
        statements_html = _table(
            ("mean ms", "calls", "total ms", "statement"),
            [
                (f"{s['mean_ms']:.1f}", s["calls"], f"{s['total_ms']:.0f}", s["query"])
                for s in statements
            ],
            "No statements recorded yet.",
        )
    applied = describe_revisions(project.script, migrations.current) or "none"
    missing = describe_revisions(project.script, migrations.missing) or "none"
    sizes_html = _table(
        ("table", "size", "rows (estimate)"),
        [(t["name"], t["size"], t["rows"]) for t in sizes],
        "No tables.",
    )
    checked = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<link rel="icon" href="data:,">
<title>pgstack database</title><style>{_STYLE}</style></head>
<body><h1>Database {escape(db.safe_url)}</h1>
<p>Rendered {checked}; refreshes every {REFRESH_S} s. Doctor findings are at most
{DOCTOR_TTL_S:.0f} s old.</p>
<div class="charts">
<section><h2>Pool use over time</h2>{pool_chart(list(state.samples))}</section>
<section><h2>Query latency</h2>{latency_chart(latency_buckets())}</section>
</div>
<section id="findings"><h2>Doctor findings</h2>{findings_html}</section>
<section id="statements"><h2>Slowest statements</h2>{statements_html}</section>
<section id="sizes"><h2>Table sizes</h2>{sizes_html}</section>
<section id="migrations"><h2>Migrations</h2>
<p>Applied: {escape(applied)}</p><p>Not applied: {escape(missing)}</p></section>
</body></html>
"""
