"""Tenancy: rate limits counted in PostgreSQL (tenants and row-level security join them)."""

from pgstack.tenancy.ratelimit import (
    InvalidRateLimitError,
    RateLimit,
    RateLimiter,
    RateLimitResult,
    WindowUsage,
    parse_limits,
    rate_limit_headers,
)

__all__ = [
    "InvalidRateLimitError",
    "RateLimit",
    "RateLimitResult",
    "RateLimiter",
    "WindowUsage",
    "parse_limits",
    "rate_limit_headers",
]
