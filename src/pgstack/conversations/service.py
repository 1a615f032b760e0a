"""`Conversations`: a user's sessions with an agent and their messages, one statement a verb.

Every verb runs in the tenant of `tenant_context` and for one user, the owner: a session of
another user, or of another tenant, is not found. Row-level security holds the tables to the
tenant as well (pgstack_0008_conversations).

Appending is one statement and one round trip: `pgstack_conversation_append`
(pgstack_0010_append_search) sets the tenant for its own transaction, bumps the
session's totals and takes the new total as the message's `seq`, then inserts the message.
The session row's lock orders concurrent appends, so sequence numbers run 1, 2, 3 ... with
no gap and no duplicate, the totals always equal the messages, and message 10,000 costs what
message 10 does.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Interval, TextualSelect, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import Text as TextType

from pgstack.conversations.models import ROLES, TRANSITIONS
from pgstack.db.database import Database
from pgstack.db.replicas import note_write
from pgstack.db.session import translated_errors
from pgstack.db.tenant import each_tenant, tenant_value
from pgstack.errors import ConflictError, InvalidInputError, NotFoundError, TenantScopeError
from pgstack.orm.context import all_tenants, audit_context
from pgstack.orm.mixins import new_uuid7
from pgstack.orm.types import UTCDateTime

#: The most messages one history page holds.
MAX_PAGE = 500
#: The longest agent id (characters).
MAX_AGENT_ID = 200

_SESSION_COLUMNS = (
    "id, user_id, tenant_id, agent_id, title, status, context, metadata, message_count, "
    "token_count, created_at, last_activity_at, expires_at, ended_at"
)
_SESSION_TYPES: dict[str, Any] = {
    "context": JSONB,
    "metadata": JSONB,
    "created_at": UTCDateTime(),
    "last_activity_at": UTCDateTime(),
    "expires_at": UTCDateTime(),
    "ended_at": UTCDateTime(),
}
_MESSAGE_TYPES: dict[str, Any] = {"tool_calls": JSONB, "created_at": UTCDateTime()}
_OWNED = "id = :id AND user_id = :user_id AND tenant_id = :tenant_id"


def _sql(sql: str, columns: Mapping[str, Any], **binds: Any) -> TextualSelect:
    params = [bindparam(name, type_=type_) for name, type_ in binds.items()]
    return text(sql).bindparams(*params).columns(**columns)


_CREATE = _sql(
    "INSERT INTO conversation_sessions "
    "(id, user_id, tenant_id, agent_id, title, context, metadata, expires_at) "
    "VALUES (:id, :user_id, :tenant_id, :agent_id, :title, :context, :metadata, "
    "now() + :idle) ON CONFLICT (id) DO NOTHING "
    f"RETURNING {_SESSION_COLUMNS}",
    _SESSION_TYPES,
    context=JSONB,
    metadata=JSONB,
    idle=Interval(),
)
_GET = _sql(f"SELECT {_SESSION_COLUMNS} FROM conversation_sessions WHERE {_OWNED}", _SESSION_TYPES)
_LIST = _sql(
    f"SELECT {_SESSION_COLUMNS} FROM conversation_sessions "
    "WHERE user_id = :user_id AND tenant_id = :tenant_id "
    "AND (CAST(:status AS text) IS NULL OR status = :status) "
    "ORDER BY last_activity_at DESC, id DESC LIMIT :limit",
    _SESSION_TYPES,
)
# `||` merges the top-level keys of the patch into the stored object, then `-` drops keys:
# one statement, so two concurrent updates both land.
_UPDATE = _sql(
    "UPDATE conversation_sessions SET "
    "title = CASE WHEN :set_title THEN :title ELSE title END, "
    "context = (context || :context) - :drop_context, "
    "metadata = (metadata || :metadata) - :drop_metadata "
    f"WHERE {_OWNED} RETURNING {_SESSION_COLUMNS}",
    _SESSION_TYPES,
    context=JSONB,
    metadata=JSONB,
    drop_context=ARRAY(TextType()),
    drop_metadata=ARRAY(TextType()),
)
_TRANSITION = _sql(
    "UPDATE conversation_sessions SET status = :to, ended_at = now() "
    f"WHERE {_OWNED} AND status = 'active' RETURNING {_SESSION_COLUMNS}",
    _SESSION_TYPES,
)
# One statement, one round trip: the function (pgstack_0010_append_search) sets the
# tenant and the audit context for its own transaction, bumps the session's totals and
# inserts the message numbered by the new total. Run by itself it needs no BEGIN, no
# `set_config` and no COMMIT around it; the session row's lock orders concurrent appends.
_APPEND = (
    "SELECT session_id, seq, role, content, tokens, tool_calls, created_at "
    "FROM pgstack_conversation_append($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)"
)
# The newest `limit` messages before `before` (all, when NULL), newest first; the caller
# turns the page round. Keyset on the primary key: the same cost on any page.
_HISTORY = _sql(
    "SELECT m.session_id, m.seq, m.role, m.content, m.tokens, m.tool_calls, m.created_at "
    "FROM conversation_messages m JOIN conversation_sessions s ON s.id = m.session_id "
    "WHERE s.id = :id AND s.user_id = :user_id AND s.tenant_id = :tenant_id "
    "AND m.session_id = :id AND (CAST(:before AS integer) IS NULL OR m.seq < :before) "
    "AND m.seq > :after ORDER BY m.seq DESC LIMIT :limit",
    _MESSAGE_TYPES,
)
_DELETE = _sql(f"DELETE FROM conversation_sessions WHERE {_OWNED} RETURNING id", {})
# SKIP LOCKED: several sweepers share the due rows; one that finds a row already swept by
# another re-checks `status` on the new version and leaves it.
# The tenant is named as well as held by row-level security, so a role that bypasses it
# still reads the (tenant_id, expires_at) index instead of scanning every session.
_SWEEP = _sql(
    "WITH due AS (SELECT id FROM conversation_sessions WHERE tenant_id = :tenant_id "
    "AND status = 'active' AND expires_at <= now() ORDER BY expires_at LIMIT :batch "
    "FOR UPDATE SKIP LOCKED) "
    "UPDATE conversation_sessions s SET status = 'expired', ended_at = now() "
    "FROM due WHERE s.id = due.id RETURNING s.id",
    {},
)


@dataclass(frozen=True)
class SessionInfo:
    """A conversation session as stored, totals included."""

    id: uuid.UUID
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    title: str | None
    status: str
    context: dict[str, Any]
    metadata: dict[str, Any]
    message_count: int
    token_count: int
    created_at: datetime
    last_activity_at: datetime
    expires_at: datetime | None
    ended_at: datetime | None

    @property
    def is_open(self) -> bool:
        """True while the session takes messages."""
        return self.status == "active"


@dataclass(frozen=True)
class Message:
    """One message of a session; `seq` is its place (1 for the first)."""

    session_id: uuid.UUID
    seq: int
    role: str
    content: str
    tokens: int
    tool_calls: Any
    created_at: datetime


@dataclass(frozen=True)
class MessagePage:
    """Messages oldest first; `next_before` is the `before_seq` of the older page, if any."""

    messages: list[Message]
    next_before: int | None


class Conversations:
    """Sessions with an agent and their messages, for the user who owns them.

        conversations = Conversations(db)
        with tenant_context(tenant_id):
            chat = await conversations.start(user_id, "support-bot", title="Refund")
            await conversations.append(chat.id, user_id, "user", "Where is my refund?")

    `idle_timeout`: a session expires that long after its last activity (None: never);
    `expire()` then closes it.
    """

    def __init__(self, db: Database, *, idle_timeout: timedelta | None = timedelta(hours=24)):
        if idle_timeout is not None and idle_timeout <= timedelta(0):
            raise InvalidInputError("idle_timeout must be a positive duration, or None.")
        self.db = db
        self.idle_timeout = idle_timeout

    def __repr__(self) -> str:
        return f"Conversations(idle_timeout={self.idle_timeout!r})"

    # -- sessions ----------------------------------------------------------------------------

    async def start(
        self,
        user_id: uuid.UUID,
        agent_id: str,
        *,
        title: str | None = None,
        context: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_id: uuid.UUID | None = None,
    ) -> SessionInfo:
        """Open a session for `user_id` with `agent_id` in the current tenant.

        With `session_id`, starting is idempotent: a second call with the same id returns
        the session the first one made (a ConflictError if another user holds that id).
        """
        _agent_id(agent_id)
        _text(title, "title")
        params = {
            **self._owner(session_id or new_uuid7(), user_id),
            "agent_id": agent_id,
            "title": title,
            "context": dict(_object(context, "context")),
            "metadata": dict(_object(metadata, "metadata")),
            "idle": self.idle_timeout,
        }
        rows = await self.db.run(_CREATE, params)
        if rows:
            return SessionInfo(*rows[0])
        try:
            return await self.get(params["id"], user_id)
        except NotFoundError:
            raise ConflictError(
                f"Session id {params['id']} is taken: start the session with another id."
            ) from None

    async def get(self, session_id: uuid.UUID, user_id: uuid.UUID) -> SessionInfo:
        """The session, if `user_id` owns it in the current tenant; else NotFoundError."""
        rows = await self.db.run(_GET, self._owner(session_id, user_id))
        if not rows:
            raise NotFoundError(f"No session {session_id} of yours in this tenant.")
        return SessionInfo(*rows[0])

    async def list(
        self, user_id: uuid.UUID, *, status: str | None = None, limit: int = 50
    ) -> list[SessionInfo]:
        """The user's sessions in the current tenant, most recently active first."""
        if status is not None and status not in TRANSITIONS:
            raise InvalidInputError(f"Unknown status {status!r}; use one of {_names(TRANSITIONS)}.")
        params = {**self._owner(None, user_id), "status": status, "limit": _limit(limit)}
        return [SessionInfo(*row) for row in await self.db.run(_LIST, params)]

    async def update(
        self,
        session_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        title: str | None = None,
        set_title: bool = False,
        context: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        remove_context: Sequence[str] = (),
        remove_metadata: Sequence[str] = (),
    ) -> SessionInfo:
        """Merge `context` and `metadata` into the stored ones, in the database, atomically.

        Top-level keys of the patch replace the stored ones; `remove_*` lists keys to drop.
        `title` is set when given (or with `set_title=True`, also to None).
        """
        _text(title, "title")
        params = {
            **self._owner(session_id, user_id),
            "set_title": set_title or title is not None,
            "title": title,
            "context": dict(_object(context, "context")),
            "metadata": dict(_object(metadata, "metadata")),
            "drop_context": [_text(k, "remove_context key", required=True) for k in remove_context],
            "drop_metadata": [
                _text(k, "remove_metadata key", required=True) for k in remove_metadata
            ],
        }
        rows = await self.db.run(_UPDATE, params)
        if not rows:
            raise NotFoundError(f"No session {session_id} of yours in this tenant.")
        return SessionInfo(*rows[0])

    async def set_status(self, session_id: uuid.UUID, user_id: uuid.UUID, to: str) -> SessionInfo:
        """Close an active session as completed, failed or cancelled (ConflictError otherwise)."""
        if to not in TRANSITIONS:
            raise InvalidInputError(f"Unknown status {to!r}; use one of {_names(TRANSITIONS)}.")
        if to in ("active", "expired"):
            raise InvalidInputError(
                f"A session cannot be set {to}: close it as completed, failed or cancelled."
            )
        rows = await self.db.run(_TRANSITION, {**self._owner(session_id, user_id), "to": to})
        if rows:
            return SessionInfo(*rows[0])
        current = await self.get(session_id, user_id)
        raise ConflictError(
            f"Session {session_id} is {current.status} and cannot become {to}: only an active "
            "session can be closed."
        )

    async def complete(self, session_id: uuid.UUID, user_id: uuid.UUID) -> SessionInfo:
        """Close the session as completed."""
        return await self.set_status(session_id, user_id, "completed")

    async def fail(self, session_id: uuid.UUID, user_id: uuid.UUID) -> SessionInfo:
        """Close the session as failed."""
        return await self.set_status(session_id, user_id, "failed")

    async def cancel(self, session_id: uuid.UUID, user_id: uuid.UUID) -> SessionInfo:
        """Close the session as cancelled."""
        return await self.set_status(session_id, user_id, "cancelled")

    async def delete(self, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Delete the session and all its messages."""
        if not await self.db.run(_DELETE, self._owner(session_id, user_id)):
            raise NotFoundError(f"No session {session_id} of yours in this tenant.")

    # -- messages ----------------------------------------------------------------------------

    async def append(
        self,
        session_id: uuid.UUID,
        user_id: uuid.UUID,
        role: str,
        content: str,
        *,
        tokens: int = 0,
        tool_calls: Any = None,
    ) -> Message:
        """Append a message to an open session: one statement, numbered after the last one.

        A closed or expired session refuses it with a ConflictError; a session that is not the
        user's in this tenant is a NotFoundError.
        """
        if role not in ROLES:
            raise InvalidInputError(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens < 2**31:
            raise InvalidInputError("tokens must be a whole number from 0 to 2,147,483,647.")
        if not isinstance(content, str) or "\x00" in content:
            raise InvalidInputError("content must be text without NUL characters.")
        calls = None if tool_calls is None else _json(tool_calls, "tool_calls")
        tenant = self._owner(session_id, user_id)["tenant_id"]
        context = audit_context()
        args = (
            session_id,
            user_id,
            tenant,
            role,
            content,
            tokens,
            calls,
            self.idle_timeout,
            json.dumps(context) if context else None,
        )
        # The function sets the tenant it is given (and refuses a transaction already scoped
        # to another): outside the tenant context, neither the read lane nor a transaction's
        # begin sets it a second time before it runs.
        with translated_errors(), all_tenants():
            lane = self.db.read_lane
            if lane is not None and not lane.echo:
                # Never sent twice: a lost connection is an error, the append may have landed.
                records = await lane.fetch(_APPEND, args, retry=False)
            else:
                async with self.db.engine.begin() as conn:
                    records = list(await conn.exec_driver_sql(_APPEND, args))
        if records:
            # The statement reads as a SELECT: note the write, so this task's reads that
            # follow go to the primary rather than a replica that may not have it yet.
            note_write()
            return Message(*records[0])
        current = await self.get(session_id, user_id)
        state = "expired" if current.is_open else current.status
        raise ConflictError(
            f"Session {session_id} is {state} and takes no new messages: start a new session."
        )

    async def history(
        self,
        session_id: uuid.UUID,
        user_id: uuid.UUID,
        *,
        before_seq: int | None = None,
        after_seq: int = 0,
        limit: int = 50,
    ) -> MessagePage:
        """The newest `limit` messages before `before_seq` (or the latest), oldest first.

        Page back with `before_seq=page.next_before`; read forward from a known point with
        `after_seq`. A session that is not the user's is a NotFoundError.
        """
        limit = _limit(limit)
        params = {
            **self._owner(session_id, user_id),
            "before": before_seq,
            "after": after_seq,
            "limit": limit,
        }
        rows = await self.db.run(_HISTORY, params)
        if not rows:
            await self.get(session_id, user_id)  # NotFoundError when there is no such session
            return MessagePage([], None)
        messages = [Message(*row) for row in reversed(rows)]
        older = len(rows) == limit and messages[0].seq > after_seq + 1
        return MessagePage(messages, messages[0].seq if older else None)

    # -- maintenance -------------------------------------------------------------------------

    async def expire(self, *, batch_size: int = 500) -> int:
        """Close every active session past its expiry, in batches; how many were closed.

        Safe to run from several workers at once: each closes a session once. Inside
        `tenant_context`, that tenant's sessions; outside, every tenant's in turn.
        """
        if batch_size < 1:
            raise InvalidInputError("batch_size must be 1 or more.")

        async def sweep(tenant_id: uuid.UUID) -> int:
            closed = 0
            while True:
                done = len(await self.db.run(_SWEEP, {"tenant_id": tenant_id, "batch": batch_size}))
                closed += done
                if done < batch_size:
                    return closed

        # Every session belongs to a tenant of `tenants` (a foreign key): visit each in turn.
        return sum(await each_tenant(self.db, sweep))

    @staticmethod
    def _owner(session_id: uuid.UUID | None, user_id: uuid.UUID) -> dict[str, Any]:
        tenant = tenant_value()
        if tenant is None:
            raise TenantScopeError(
                "Conversations belong to a tenant: call this inside tenant_context(tenant_id)."
            )
        return {"id": session_id, "user_id": user_id, "tenant_id": uuid.UUID(tenant)}


def _object(value: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name} must be a JSON object (a mapping of keys to values).")
    _json(value, name)
    return value


def _json(value: Any, name: str) -> str:
    """`value` as JSON text, if PostgreSQL's jsonb can hold it: finite numbers, no NUL."""
    try:
        dumped = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{name} must be JSON (finite numbers, string keys): {exc}."
        ) from None
    if "\\u0000" in dumped:
        raise InvalidInputError(f"{name} must not contain NUL characters.")
    return dumped


def _text(value: Any, name: str, *, required: bool = False) -> Any:
    if value is None and not required:
        return None
    if not isinstance(value, str) or "\x00" in value or (required and not value.strip()):
        raise InvalidInputError(f"{name} must be text without NUL characters, not empty.")
    return value


def _agent_id(value: Any) -> str:
    """`value` if it can name an agent: 1 to MAX_AGENT_ID printable characters, trimmed.

    Refused: control and format characters (NUL, ESC, C1, bidi overrides, zero-width ones),
    surrogates, private-use and unassigned code points, line and paragraph separators, and
    spaces around the name, so that ids that look alike are alike.
    """
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_AGENT_ID
        or value != value.strip()
        or any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in value)
    ):
        raise InvalidInputError(
            f"agent_id must be a name of 1 to {MAX_AGENT_ID} printable characters, without "
            "spaces around it or control, format or private-use characters, such as "
            "support-bot."
        )
    return value


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}.")
    return limit


def _names(values: Mapping[str, Any]) -> str:
    return ", ".join(values)
