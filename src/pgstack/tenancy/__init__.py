"""Tenancy: tenants, row-level security, rate limits."""

from pgstack.tenancy.rls import disable_tenant_rls, enable_tenant_rls

__all__ = ["disable_tenant_rls", "enable_tenant_rls"]
