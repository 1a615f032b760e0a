"""The audit log over HTTP: the request-context middleware and a read-only admin router.

`RequestContextMiddleware` (installed by `create_app`) gives every request an id (an
incoming `X-Request-ID` is kept when it is a plain token of at most 128 characters), finds
the client's IP (through `X-Forwarded-For` only from trusted proxies, `TRUSTED_PROXIES`)
and its user agent, and keeps them in the request context that audit entries, `Audited`
columns and log records read. The id is sent back in `X-Request-ID`.

The router is read-only and needs your authorization:

    app = create_app(routers=[audit_router(dependencies=[Depends(require_roles("admin"))])])
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, params
from pydantic import BaseModel
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pgstack.audit import AuditLog
from pgstack.errors import ConfigurationError
from pgstack.orm.context import request_scope
from pgstack.web.deps import DatabaseDep, Timestamp

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(value: str) -> tuple[_Network, ...]:
    """The trusted proxies of `TRUSTED_PROXIES` (comma-separated addresses or networks)."""
    networks: list[_Network] = []
    for part in value.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"TRUSTED_PROXIES: {part.strip()!r} is not an address or network "
                    "(such as 10.0.0.0/8 or 127.0.0.1)."
                ) from None
    return tuple(networks)


def _trusted(address: str, proxies: Sequence[_Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_ip(
    peer: str | None, forwarded_for: str | None, proxies: Sequence[_Network]
) -> str | None:
    """The client's address: the peer, or, behind trusted proxies, the first untrusted hop.

    `X-Forwarded-For` is read right to left and only while each hop is a trusted proxy, so a
    client cannot name an address of its choosing by sending the header itself.
    """
    if peer is None or not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    address = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        address = hop
        if not _trusted(hop, proxies):
            break
    return address


class RequestContextMiddleware:
    """Fill the request context (id, IP, user agent) per request; answer with X-Request-ID."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: str = "") -> None:
        self.app = app
        self.proxies = parse_proxies(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        peer = scope.get("client")
        fields = {
            "request_id": request_id,
            "ip": client_ip(
                peer[0] if peer else None, headers.get("x-forwarded-for"), self.proxies
            ),
            "user_agent": headers.get("user-agent", "")[:512] or None,
        }

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        # No actor until the auth dependencies name one (`set_actor`), for this request only.
        with request_scope(**fields):
            await self.app(scope, receive, send_with_id)


class EntryOut(BaseModel):
    """One audit entry as the admin API shows it."""

    id: uuid.UUID
    occurred_at: datetime
    seq: int
    tenant_id: uuid.UUID | None
    actor_id: str | None
    actor_type: str
    action: str
    category: str
    resource_type: str | None
    resource_id: str | None
    description: str | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    outcome: str
    error: str | None
    request_data: Any
    response_data: Any
    changes: Any
    hash: str


class EntryPageOut(BaseModel):
    """A page of entries, newest first; pass `next` as `after` for the following page."""

    items: list[EntryOut]
    next: str | None


class ChainOut(BaseModel):
    """The result of verifying one chain."""

    chain: str
    ok: bool
    checked: int
    broken_id: uuid.UUID | None
    broken_seq: int | None
    reason: str | None


_Text = Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


def audit_router(
    *,
    dependencies: Sequence[params.Depends] = (),
    prefix: str = "/admin/audit",
) -> APIRouter:
    """Read-only routes over the audit log; `dependencies` must authorize the caller."""
    if not dependencies:
        raise ConfigurationError(
            "audit_router needs your authorization, such as "
            "dependencies=[Depends(require_roles('admin'))]: these routes show every action."
        )
    router = APIRouter(prefix=prefix, tags=["audit"], dependencies=list(dependencies))

    @router.get("/entries", response_model=EntryPageOut)
    async def list_entries(
        db: DatabaseDep,
        tenant_id: Annotated[uuid.UUID | None, Query()] = None,
        actor_id: _Text = None,
        resource_type: _Text = None,
        resource_id: _Text = None,
        category: _Text = None,
        action: _Text = None,
        outcome: Annotated[Literal["success", "failure", "partial"] | None, Query()] = None,
        since: Annotated[Timestamp | None, Query()] = None,
        until: Annotated[Timestamp | None, Query()] = None,
        after: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> EntryPageOut:
        """Entries newest first, filtered by tenant, actor, resource, category, outcome, time."""
        page = await AuditLog(db).entries(
            tenant_id=tenant_id,
            actor_id=actor_id,
            resource_type=resource_type,
            resource_id=resource_id,
            category=category,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            after=after,
            limit=limit,
        )
        return EntryPageOut(items=[EntryOut(**item) for item in page.items], next=page.next)

    @router.get("/verify", response_model=ChainOut)
    async def verify_chain(
        db: DatabaseDep, tenant_id: Annotated[uuid.UUID | None, Query()] = None
    ) -> ChainOut:
        """Walk a chain (a tenant's, or the global one) and name its first broken entry."""
        report = await AuditLog(db).verify(tenant_id)
        return ChainOut(
            chain=report.chain,
            ok=report.ok,
            checked=report.checked,
            broken_id=report.broken_id,
            broken_seq=report.broken_seq,
            reason=report.reason,
        )

    return router
