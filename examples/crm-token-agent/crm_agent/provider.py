"""A fake CRM provider: an OAuth token endpoint that rotates refresh tokens, and one API route.

Like HubSpot, Salesforce and many others, it retires a refresh token on use: sending one a
second time answers `invalid_grant`. Two agents that refresh the same token at once would
therefore lose the account; the vault's single-flight refresh is what prevents it.
"""

from __future__ import annotations

import base64
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qs

import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

CLIENT_ID = "crm-agent"
CLIENT_SECRET = "demo-client-secret"  # noqa: S105 - the fake provider's own demo credential


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


@dataclass
class FakeCRM:
    """The provider's state: which refresh and access tokens are live, and for which portal."""

    expires_in: int = 1800
    base_url: str = ""  # set while a ProviderServer serves it
    refresh_calls: int = 0
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> portal
    access_tokens: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def grant(self, portal: str) -> dict[str, Any]:
        """Issue a new token pair for `portal` (what the authorization-code flow would return)."""
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        with self.lock:
            self.access_tokens[access] = portal
            self.refresh_tokens[refresh] = portal
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": "crm.objects.contacts.read",
        }

    def revoke(self, portal: str) -> None:
        """The user disconnected the app: every token of `portal` stops working."""
        with self.lock:
            for tokens in (self.refresh_tokens, self.access_tokens):
                for token in [t for t, p in tokens.items() if p == portal]:
                    del tokens[token]

    def app(self) -> FastAPI:
        """The provider's HTTP face."""
        api = FastAPI(title="Fake CRM")

        @api.post("/oauth/token")
        async def token(request: Request) -> Any:
            form = parse_qs((await request.body()).decode())
            grant_type = form.get("grant_type", [""])[0]
            refresh_token = form.get("refresh_token", [""])[0]
            authorization = request.headers.get("authorization")
            expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if authorization != f"Basic {expected}":
                return _oauth_error("invalid_client", "client authentication failed", 401)
            if grant_type != "refresh_token" or not refresh_token:
                return _oauth_error("unsupported_grant_type", "only refresh_token is served")
            with self.lock:
                self.refresh_calls += 1
                portal = self.refresh_tokens.pop(refresh_token, None)
            if portal is None:
                return _oauth_error("invalid_grant", "refresh token is not active")
            return self.grant(portal)

        @api.get("/crm/v3/contacts")
        def contacts(authorization: Annotated[str | None, Header()] = None) -> Any:
            token = (authorization or "").removeprefix("Bearer ")
            with self.lock:
                portal = self.access_tokens.get(token)
            if portal is None:
                return JSONResponse({"message": "authentication required"}, status_code=401)
            return {"portal": portal, "results": [{"email": "ada@example.com"}]}

        return api


class ProviderServer:
    """Serve a FakeCRM over HTTP on a free loopback port, in a thread of this process."""

    def __init__(self, crm: FakeCRM) -> None:
        self.crm = crm
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.base_url = crm.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(crm.app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth/token"

    def __enter__(self) -> ProviderServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the fake provider did not start")
            self._thread.join(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        self._sock.close()
