"""Tenants, members and roles, the tenant of a request or job, row-level security, rate limits.

tenancy = Tenancy(db)
acme = await tenancy.tenants.create("T0123", "Acme", owner_id=ada.id)
issued = await tenancy.memberships.invite(acme.id, "bob@example.com", "member")
with tenant(acme.id):          # a job's queries and inserts on tenant-scoped models
    ...
"""

from __future__ import annotations

from pgstack.db.database import Database
from pgstack.orm.context import all_tenants, current_tenant, require_tenant, tenant_context
from pgstack.tenancy.memberships import (
    IssuedInvitation,
    Member,
    Memberships,
    check_role,
)
from pgstack.tenancy.models import (
    TRANSITIONS,
    USABLE,
    ExternalIdentity,
    Tenant,
    TenantApiKey,
    TenantMembership,
    TenantRole,
    TenantStatus,
)
from pgstack.tenancy.ratelimit import (
    InvalidRateLimitError,
    RateLimit,
    RateLimiter,
    RateLimitResult,
    WindowUsage,
    parse_limits,
    rate_limit_headers,
)
from pgstack.tenancy.rls import disable_tenant_rls, enable_tenant_rls
from pgstack.tenancy.tenants import TenantRepository, Tenants

#: `with tenant(tenant_id):` scopes a job's work to one tenant; the same as `tenant_context`.
tenant = tenant_context


class Tenancy:
    """The tenant and membership services on one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.tenants = Tenants(db)
        self.memberships = Memberships(db)

    def __repr__(self) -> str:
        return f"Tenancy({self.db!r})"


__all__ = [
    "TRANSITIONS",
    "USABLE",
    "ExternalIdentity",
    "InvalidRateLimitError",
    "IssuedInvitation",
    "Member",
    "Memberships",
    "RateLimit",
    "RateLimitResult",
    "RateLimiter",
    "Tenancy",
    "Tenant",
    "TenantApiKey",
    "TenantMembership",
    "TenantRepository",
    "TenantRole",
    "TenantStatus",
    "Tenants",
    "WindowUsage",
    "all_tenants",
    "check_role",
    "current_tenant",
    "disable_tenant_rls",
    "enable_tenant_rls",
    "parse_limits",
    "rate_limit_headers",
    "require_tenant",
    "tenant",
    "tenant_context",
]
