"""Who is acting and for which tenant: per request or task, carried by context variables.

Context variables follow the task that set them (and the tasks it starts), so two requests
served concurrently never see each other's actor or tenant.

    with acting_as(user.id), tenant_context(workspace.id):
        await repo.create({...})   # created_by and tenant_id filled in
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pgstack.errors import TenantScopeError

_actor: ContextVar[Any] = ContextVar("pgstack_actor", default=None)
_tenant: ContextVar[Any] = ContextVar("pgstack_tenant", default=None)
_all_tenants: ContextVar[bool] = ContextVar("pgstack_all_tenants", default=False)


@contextmanager
def acting_as(actor_id: Any) -> Iterator[Any]:
    """Record `actor_id` as the actor of every write inside the block (`created_by`, ...)."""
    token = _actor.set(actor_id)
    try:
        yield actor_id
    finally:
        _actor.reset(token)


def current_actor() -> Any:
    """The actor set by the innermost `acting_as`, or None."""
    return _actor.get()


@contextmanager
def tenant_context(tenant_id: Any) -> Iterator[Any]:
    """Scope every query and insert on tenant-scoped models inside the block to `tenant_id`."""
    if tenant_id is None:
        raise TenantScopeError(
            "tenant_context(None) scopes nothing: pass the tenant's id. For maintenance work "
            "across tenants, use `with all_tenants():` instead."
        )
    token = _tenant.set(tenant_id)
    all_token = _all_tenants.set(False)
    try:
        yield tenant_id
    finally:
        _all_tenants.reset(all_token)
        _tenant.reset(token)


@contextmanager
def all_tenants() -> Iterator[None]:
    """Lift tenant scoping inside the block, on purpose (maintenance jobs, admin tools)."""
    token = _all_tenants.set(True)
    tenant_token = _tenant.set(None)
    try:
        yield
    finally:
        _tenant.reset(tenant_token)
        _all_tenants.reset(token)


def current_tenant() -> Any:
    """The tenant set by the innermost `tenant_context`, or None."""
    return _tenant.get()


def tenant_scope_lifted() -> bool:
    """Whether the innermost scope is `all_tenants()`."""
    return _all_tenants.get()


def require_tenant(what: str = "this tenant-scoped model") -> Any:
    """The current tenant; without one (and outside `all_tenants()`), a TenantScopeError."""
    tenant = _tenant.get()
    if tenant is None:
        raise TenantScopeError(
            f"No tenant in context for {what}: wrap the work in "
            "`with tenant_context(tenant_id):` (pgstack's web dependencies do this per request), "
            "or in `with all_tenants():` for deliberate cross-tenant maintenance."
        )
    return tenant


_request: ContextVar[dict[str, str] | None] = ContextVar("pgstack_request", default=None)


@contextmanager
def request_context(**fields: str | None) -> Iterator[dict[str, str]]:
    """Record where the work comes from (request id, IP, user agent, actor type) in the block.

    Audit entries and log records read it; the web middleware sets it per request. Fields
    given as None are left out.
    """
    values = {key: str(value) for key, value in fields.items() if value is not None}
    token = _request.set(values)
    try:
        yield values
    finally:
        _request.reset(token)


@contextmanager
def request_scope(**fields: str | None) -> Iterator[dict[str, str]]:
    """A request's context: its fields, and no actor until authentication names one."""
    actor_token = _actor.set(None)
    try:
        with request_context(**fields) as values:
            yield values
    finally:
        _actor.reset(actor_token)


def set_actor(actor_id: Any) -> None:
    """Record `actor_id` for the rest of the current task (the web middleware resets it)."""
    _actor.set(actor_id)


def note_request(**fields: str | None) -> None:
    """Add fields to the innermost `request_context` (such as the actor's type), if any."""
    values = _request.get()
    if values is not None:
        values.update({key: str(value) for key, value in fields.items() if value is not None})


def current_request() -> dict[str, str]:
    """The fields of the innermost `request_context` (empty outside one)."""
    return dict(_request.get() or {})


def audit_context() -> dict[str, str]:
    """What an audit entry records about who acts and from where: actor and request fields."""
    values = current_request()
    actor = _actor.get()
    if actor is not None:
        values["actor_id"] = str(actor)
        values.setdefault("actor_type", "user")
    return values
