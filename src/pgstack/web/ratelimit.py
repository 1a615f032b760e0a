"""Rate limits over HTTP: the `rate_limit(...)` dependency, tier and plan limits, headers.

    @app.get("/search", dependencies=[Depends(rate_limit("100/minute", resource="search"))])
    async def search(...): ...

Every authenticated route is also limited per caller by `current_principal`: an API key by
its `rate_limit_tier`, a session as the tier "session", with the limits of
`PGSTACK_RATE_LIMIT_TIERS`. A tenant's requests are limited by its plan tier
(`PGSTACK_RATE_LIMIT_PLANS`) through `enforce_tenant_limit`. A refused request is a 429
problem-details answer with `Retry-After`; allowed ones carry `RateLimit-Policy` and
`RateLimit` (draft-ietf-httpapi-ratelimit-headers).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Request, Response

from pgstack.config import Settings
from pgstack.errors import ConfigurationError
from pgstack.orm.context import current_request
from pgstack.tenancy.ratelimit import (
    InvalidRateLimitError,
    RateLimit,
    RateLimiter,
    RateLimitResult,
    parse_limits,
    rate_limit_headers,
)
from pgstack.web.deps import get_database

if TYPE_CHECKING:
    from pgstack.web.identity import Principal

logger = logging.getLogger("pgstack.web")

Limits = tuple[RateLimit, ...]


@dataclass(frozen=True)
class RateLimitPolicies:
    """The limits of each API-key tier and plan tier, parsed from the settings."""

    tiers: Mapping[str, Limits]
    plans: Mapping[str, Limits]

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimitPolicies:
        """Parse `PGSTACK_RATE_LIMIT_TIERS` and `..._PLANS`; a bad value names its variable."""
        return cls(
            tiers=_parse_table(settings.rate_limit_tiers, "PGSTACK_RATE_LIMIT_TIERS"),
            plans=_parse_table(settings.rate_limit_plans, "PGSTACK_RATE_LIMIT_PLANS"),
        )

    def tier(self, name: str) -> Limits:
        """The limits of an API-key tier; an unknown tier gets "standard"'s."""
        return _lookup(self.tiers, name, "standard", "API-key tier")

    def plan(self, name: str | None) -> Limits:
        """The limits of a plan tier; an unknown plan gets "default"'s."""
        return _lookup(self.plans, name or "default", "default", "plan tier")


def _parse_table(table: Mapping[str, str], variable: str) -> dict[str, Limits]:
    parsed: dict[str, Limits] = {}
    for name, spec in table.items():
        if not spec.strip() or spec.strip().lower() in ("none", "unlimited"):
            parsed[name] = ()
            continue
        try:
            parsed[name] = parse_limits(spec)
        except InvalidRateLimitError as exc:
            raise ConfigurationError(f"{variable}: tier {name!r:.40}: {exc.message}") from None
    return parsed


_warned: set[tuple[str, str]] = set()


def _lookup(table: Mapping[str, Limits], name: str, fallback: str, what: str) -> Limits:
    limits = table.get(name)
    if limits is None:
        if (what, name) not in _warned and len(_warned) < 1000:  # once per name, bounded
            _warned.add((what, name))
            logger.warning("unknown %s %r: the limits of %r apply", what, name[:40], fallback)
        limits = table.get(fallback, ())
    return limits


def _state(request: Request) -> tuple[RateLimiter, RateLimitPolicies]:
    """This app's limiter and policies (made once per database and settings)."""
    db = get_database(request)
    state: Any = request.app.state
    cached: tuple[RateLimiter, RateLimitPolicies, Settings] | None = getattr(
        state, "pgstack_rate_limits", None
    )
    if cached is None or cached[0].db is not db or cached[2] is not db.settings:
        cached = (RateLimiter(db), RateLimitPolicies.from_settings(db.settings), db.settings)
        state.pgstack_rate_limits = cached
    return cached[0], cached[1]


def get_rate_limiter(request: Request) -> RateLimiter:
    """The app's RateLimiter (a dependency)."""
    return _state(request)[0]


async def check(
    request: Request, key: str, limits: Limits | str, policy: str, response: Response | None = None
) -> RateLimitResult | None:
    """Count one hit of `key`; raise RateLimitedError (429) when refused. None without limits.

    The `RateLimit-*` headers of the result go on `response` when given (an allowed request).
    """
    if not limits:
        return None
    result = await get_rate_limiter(request).hit(key, limits)
    if not result.allowed:
        raise result.error(policy)
    if response is not None:
        response.headers.update(rate_limit_headers(result, policy))
    return result


def rate_limit(
    limit: str, *, resource: str, per: Literal["caller", "ip", "tenant"] = "caller"
) -> Callable[..., Awaitable[None]]:
    """A dependency that counts each request against `limit` ("100/minute") for `resource`.

    Per caller (the authenticated user's API key or session; the route then needs one), per
    client address with `per="ip"` (for routes open to anyone), or per tenant with
    `per="tenant"`: every member of the request's tenant (`TenantAccessDep`, which the route
    then needs) shares one count, kept under the key `tenant:<id>:<resource>`.
    """
    limits = parse_limits(limit)  # a bad limit fails when the route is declared
    if per == "ip":

        async def by_address(request: Request, response: Response) -> None:
            # The client's address as the request context resolved it (X-Forwarded-For
            # believed from TRUSTED_PROXIES only): behind a proxy the peer is the proxy, and
            # counting it would let one client use up every client's allowance.
            address = current_request().get("ip") or (
                request.client.host if request.client else "unknown"
            )
            await check(request, f"ip:{address}:{resource}", limits, resource, response)

        return by_address

    if per == "tenant":
        from pgstack.web.tenancy import TenantAccess, TenantAccessDep

        async def by_tenant(request: Request, response: Response, access: TenantAccess) -> None:
            key = f"tenant:{access.tenant.id}:{resource}"
            await check(request, key, limits, resource, response)

        by_tenant.__annotations__["access"] = TenantAccessDep
        return by_tenant

    if per != "caller":
        raise ValueError(f"rate_limit(per=...) is 'caller', 'ip' or 'tenant', not {per!r}")

    from pgstack.web.identity import PrincipalDep

    async def by_caller(request: Request, response: Response, principal: Principal) -> None:
        await check(request, f"{_caller(principal)}:{resource}", limits, resource, response)

    # Resolved here, not by name: the two modules import each other.
    by_caller.__annotations__["principal"] = PrincipalDep
    return by_caller


def _caller(principal: Principal) -> str:
    if principal.api_key is not None:
        return f"key:{principal.api_key.id}"
    return f"user:{principal.user.id}"


async def enforce_caller_limit(request: Request, principal: Principal) -> None:
    """Count one request of an authenticated caller against its tier (429 when over)."""
    _, policies = _state(request)
    if principal.api_key is not None:
        tier = principal.api_key.rate_limit_tier
        limits = policies.tier(tier)
    else:
        tier = "session"
        limits = policies.tier(tier)
    await check(request, _caller(principal), limits, f"tier-{tier}")


async def enforce_tenant_limit(
    request: Request, tenant_id: uuid.UUID | str, plan_tier: str | None
) -> RateLimitResult | None:
    """Count one request of a tenant against its plan tier's limits (429 when over).

    The key is `tenant:<id>`: an id with a `:` could name another key (`tenant:acme:export`,
    acme's export limit), so it is an InvalidRateLimitError (422).
    """
    _, policies = _state(request)
    if ":" in str(tenant_id):
        raise InvalidRateLimitError(
            "A tenant id for a rate limit cannot contain ':'; send the tenant's id."
        )
    plan = plan_tier or "default"
    return await check(request, f"tenant:{tenant_id}", policies.plan(plan), f"plan-{plan}")
