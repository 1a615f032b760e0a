"""What the service does, on pgstack's public API: install, connect, process, map.

Everything below runs inside a workspace's tenant context (a request's `TenantAccessDep`, or
`with tenant(workspace_id):` in a job), so the repository filters and stamps the workspace
and PostgreSQL's row-level security holds every statement to it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from sqlalchemy import func, select

from meetings_saas.models import AccountMapping, CrmConnection, Meeting
from pgstack import ConflictError, Database, InvalidInputError, NotFoundError, Repository, Session
from pgstack.audit import AuditLog
from pgstack.identity import User
from pgstack.orm import require_tenant
from pgstack.repository import Eq
from pgstack.tenancy import Tenancy, Tenant, tenant
from pgstack.tokens import TokenVault

# -- workspaces ----------------------------------------------------------------------------


async def install_workspace(
    db: Database, team_id: str, team_name: str, installer: User, slack_user_id: str
) -> tuple[Tenant, bool]:
    """The workspace of a Slack team, made on its first install; whether it is new.

    The installer becomes its owner and their Slack user id is linked in it. Installing a
    team again is allowed for its members (nothing changes); for anyone else it is a 409.
    """
    tenancy = Tenancy(db)
    try:
        workspace = await tenancy.tenants.get_by_external_id(team_id)
    except NotFoundError:
        try:
            workspace = await tenancy.tenants.create(team_id, team_name, owner_id=installer.id)
        except ConflictError:  # installed at this very moment by another request
            workspace = await tenancy.tenants.get_by_external_id(team_id)
        else:
            await tenancy.memberships.link_identity(
                workspace.id, installer.id, "slack", slack_user_id
            )
            with tenant(workspace.id):
                await AuditLog(db).record(
                    "workspace.installed",
                    resource_type="workspace",
                    resource_id=team_id,
                    description=f"Installed by {slack_user_id}",
                )
            return workspace, True
    if await tenancy.memberships.role_of(workspace.id, installer.id) is None:
        raise ConflictError(
            "This Slack team is installed already; ask one of its admins to invite you."
        )
    return workspace, False


# -- CRM connections -----------------------------------------------------------------------


class CrmConnections(Repository[CrmConnection]):
    model = CrmConnection
    filterable = ("id", "provider", "status", "is_default")
    sortable = ("provider", "created_at", "last_sync_at")
    max_page_size = 100


async def connect_crm(
    db: Database,
    session: Session,
    provider: str,
    account: str,
    access_token: str,
    refresh_token: str | None,
    expires_in: int,
) -> CrmConnection:
    """Store the tokens in the vault (encrypted, this workspace's) and the connection's row.

    Connecting an account again replaces its tokens and marks it connected. A workspace
    without a default connection gets this one as its default: when several are connected
    at once, the partial unique index lets one win and the others stay non-default.
    """
    await TokenVault(db).save(provider, account, access_token, refresh_token, expires_in=expires_in)
    connections = CrmConnections(session)
    [row] = await connections.upsert_many(
        [{"provider": provider, "account": account, "status": "connected", "last_error": None}],
        on=["tenant_id", "provider", "account"],
        update=["status", "last_error"],
    )
    if not await connections.exists(is_default=True):
        try:
            async with session.begin_nested():  # a lost race undoes this step only
                row = await connections.update(row.id, is_default=True)
        except ConflictError:
            pass  # another connection became the default at this moment
    return row


async def set_default_connection(session: Session, connection_id: uuid.UUID) -> CrmConnection:
    """Make one connection the workspace's default, and no other.

    The workspace's connection rows are locked first, so two admins choosing different
    defaults at once run one after the other; the partial unique index
    `uq_crm_connections_one_default` is the database's guarantee.
    """
    connections = CrmConnections(session)
    chosen = await connections.get(connection_id)
    if chosen.status != "connected":
        raise ConflictError(
            f"The {chosen.provider} connection's status is {chosen.status}: "
            "connect the account again first."
        )
    await session.execute(
        select(CrmConnection.id)
        .where(CrmConnection.tenant_id == require_tenant())
        .order_by(CrmConnection.id)
        .with_for_update()
    )
    await connections.update_many({"is_default": False}, is_default=True)
    return await connections.update(connection_id, is_default=True)


async def record_sync(
    session: Session, connection_id: uuid.UUID, error: str | None = None
) -> CrmConnection:
    """Record a sync's outcome: its time, and the connection's status and last error."""
    connections = CrmConnections(session)
    current = await connections.get(connection_id)
    if current.status == "revoked":
        raise ConflictError("This connection was disconnected: connect the account again.")
    return await connections.update(
        connection_id,
        last_sync_at=func.now(),
        status="error" if error else "connected",
        last_error=error,
    )


async def disconnect_crm(db: Database, session: Session, connection_id: uuid.UUID) -> CrmConnection:
    """Delete the tokens from the vault; the row stays, revoked, for the history."""
    connections = CrmConnections(session)
    current = await connections.get(connection_id)
    await TokenVault(db).delete(current.provider, current.account)
    return await connections.update(connection_id, status="revoked", is_default=False)


# -- meetings: pending -> processing -> completed / failed, failed -> pending (retry) ------

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("processing",),
    "processing": ("completed", "failed"),
    "failed": ("pending",),
    "completed": (),
}


class Meetings(Repository[Meeting]):
    model = Meeting
    # "id" because the state machine's conditional updates filter by it (update_many with
    # the allow-list; Repository.update checks only `version`).
    filterable = ("id", "status", "external_id", "title", "attempts", "created_at")
    sortable = ("created_at", "title", "status")
    max_page_size = 100


def _refuse(meeting: Meeting, target: str) -> ConflictError:
    allowed = TRANSITIONS[meeting.status]
    then = (
        f"from {meeting.status} it can only become {' or '.join(allowed)}"
        if allowed
        else f"a {meeting.status} meeting does not change any more"
    )
    return ConflictError(f"Meeting {meeting.external_id!r} cannot become {target}: {then}.")


async def _move(
    session: Session,
    meeting_id: uuid.UUID,
    target: str,
    changes: dict[str, Any],
    expect: Sequence[Any] = (),
) -> Meeting:
    """One conditional UPDATE: the meeting moves only if it is still in the source state.

    Two callers racing for the same move both send it; the row lock lines them up and the
    second finds the status changed, updates nothing and gets the 409.
    """
    [source] = [s for s, targets in TRANSITIONS.items() if target in targets]
    meetings = Meetings(session)
    moved = await meetings.update_many(
        {"status": target, **changes}, *expect, id=meeting_id, status=source
    )
    current = await meetings.get(meeting_id)  # 404 for a meeting of no one, or of another
    if not moved:
        raise _refuse(current, target)
    return current


async def claim(session: Session, meeting_id: uuid.UUID) -> Meeting:
    """pending -> processing, for one caller only; counts the attempt."""
    return await _move(
        session,
        meeting_id,
        "processing",
        {"attempts": Meeting.attempts + 1, "started_at": func.now(), "finished_at": None},
    )


async def claim_next(session: Session) -> Meeting | None:
    """The oldest pending meeting of the workspace, claimed; None when there is none.

    Workers running this at once each get a different meeting (`FOR UPDATE SKIP LOCKED`).
    """
    next_id = await session.scalar(
        select(Meeting.id)
        .where(Meeting.tenant_id == require_tenant(), Meeting.status == "pending")
        .order_by(Meeting.created_at, Meeting.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return None if next_id is None else await claim(session, next_id)


async def complete(session: Session, meeting_id: uuid.UUID, summary: str) -> Meeting:
    """processing -> completed, with what the processing produced."""
    changes = {"summary": summary, "last_error": None, "finished_at": func.now()}
    return await _move(session, meeting_id, "completed", changes)


async def fail(session: Session, meeting_id: uuid.UUID, error: str) -> Meeting:
    """processing -> failed, with the error."""
    return await _move(
        session, meeting_id, "failed", {"last_error": error, "finished_at": func.now()}
    )


async def retry(session: Session, meeting_id: uuid.UUID) -> Meeting:
    """failed -> pending, while attempts are left (`max_attempts`, 3 by default)."""
    current = await Meetings(session).get(meeting_id)
    if current.status == "failed" and current.attempts >= current.max_attempts:
        raise ConflictError(
            f"Meeting {current.external_id!r} failed {current.attempts} time(s), its limit: "
            "raise max_attempts or create it again."
        )
    # The attempts read above must still hold: a concurrent retry and claim cannot overrun.
    return await _move(session, meeting_id, "pending", {}, [Eq("attempts", current.attempts)])


# -- account mappings ----------------------------------------------------------------------

MAX_IMPORT_BYTES = 5_000_000
DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+")


def _domain(value: str) -> str:
    domain = value.strip().lower()
    if len(domain) > 253 or not DOMAIN.fullmatch(domain):
        raise ValueError("not a domain name such as example.com")
    return domain


Domain = Annotated[str, AfterValidator(_domain)]
Printable = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class MappingIn(BaseModel):
    """One entry of an import file."""

    model_config = ConfigDict(extra="forbid")
    domain: Domain
    crm_account_id: Printable
    account_name: Printable | None = None
    confidence: float = Field(1.0, ge=0, le=1)


class AccountMappings(Repository[AccountMapping]):
    model = AccountMapping
    filterable = ("domain", "crm_account_id", "confidence", "usage_count", "last_used_at")
    sortable = ("domain", "confidence", "usage_count", "last_used_at")
    max_page_size = 200


def parse_mappings(data: bytes) -> list[MappingIn]:
    """The entries of an import file (a JSON array), all checked before anything is written."""
    if len(data) > MAX_IMPORT_BYTES:
        raise InvalidInputError(
            f"The import file is over {MAX_IMPORT_BYTES // 1_000_000} MB; split it. "
            "Nothing was imported."
        )
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise InvalidInputError(
            f"The import file is not valid JSON{where}: "
            f"{getattr(exc, 'msg', 'not UTF-8')}. Nothing was imported."
        ) from None
    if not isinstance(raw, list):
        raise InvalidInputError(
            'The import file must be a JSON array of {"domain": ..., "crm_account_id": ...} '
            "objects. Nothing was imported."
        )
    entries: list[MappingIn] = []
    for number, item in enumerate(raw, start=1):
        try:
            entries.append(MappingIn.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "entry"
            raise InvalidInputError(
                f"Entry {number} of the import file: {field}: {first['msg']}. Nothing was imported."
            ) from None
    domains = [e.domain for e in entries]
    repeated = sorted({d for d in domains if domains.count(d) > 1})
    if repeated:
        raise InvalidInputError(
            f"The import file names {', '.join(repeated[:5])} more than once; keep one entry "
            "each. Nothing was imported."
        )
    return entries


async def import_mappings(session: Session, data: bytes) -> int:
    """Insert or update the file's mappings in one statement; how many were written.

    Importing the same file again changes nothing but `updated_at`; usage counts are kept.
    """
    entries = parse_mappings(data)
    if not entries:
        return 0
    return await AccountMappings(session).upsert_many(
        [e.model_dump() for e in entries],
        on=["tenant_id", "domain"],
        update=["crm_account_id", "account_name", "confidence"],
        returning=False,
    )


def domain_of(email: str) -> str:
    """The domain of an e-mail address, lower-case; a clear error for anything else."""
    local, at, domain = email.strip().rpartition("@")
    if not at or not local or not domain:
        raise InvalidInputError(f"{email[:100]!r} is not an e-mail address.")
    return domain.lower()


async def resolve_account(session: Session, email: str) -> AccountMapping:
    """The CRM account of an attendee's e-mail domain; counts the use (one UPDATE)."""
    mappings = AccountMappings(session)
    domain = domain_of(email)
    used = await mappings.update_many(
        {"usage_count": AccountMapping.usage_count + 1, "last_used_at": func.now()}, domain=domain
    )
    if not used:
        raise NotFoundError(f"No CRM account is mapped to {domain!r}; import a mapping for it.")
    return await mappings.get_by(domain=domain)
