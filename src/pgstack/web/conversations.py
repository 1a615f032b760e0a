"""Routes for conversation sessions and their messages: each caller reaches their own only.

Every route runs in the request's tenant (`TenantAccessDep`: membership checked, rate limit
counted, viewers read-only) and for the calling user: another member's session, or one in
another tenant, is a 404. Appending a message is one statement that holds no connection
afterwards, so an agent streaming its answer may append each finished message (or chunk) as
it goes.

    app = create_app(routers=[identity_router(), tenancy_router(), conversations_router()])
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from pgstack.conversations import MAX_AGENT_ID, MAX_PAGE, Conversations, Message, SessionInfo
from pgstack.web.deps import DatabaseDep
from pgstack.web.tenancy import TenantAccessDep

#: The longest message content the routes take (characters).
MAX_CONTENT = 1_000_000
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
_Name = Annotated[str, Field(min_length=1, max_length=200, pattern=_PRINTABLE)]
_Object = Annotated[dict[str, Any], Field(max_length=500)]
SessionId = Annotated[uuid.UUID, Path(description="The session's id.")]
_Keys = Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=500)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class SessionIn(_Body):
    # The rest of what an agent id may hold is checked by Conversations.start (a 422).
    agent_id: Annotated[str, Field(min_length=1, max_length=MAX_AGENT_ID, pattern=_PRINTABLE)]
    title: _Name | None = None
    context: _Object = Field(default_factory=dict)
    metadata: _Object = Field(default_factory=dict)
    #: Choose the id to make starting idempotent (a retry returns the same session).
    id: uuid.UUID | None = None


class SessionPatchIn(_Body):
    """Keys of `context` and `metadata` are merged into the stored objects; `remove_*` drop
    keys; `title` changes when sent (null clears it)."""

    title: _Name | None = None
    context: _Object | None = None
    metadata: _Object | None = None
    remove_context: _Keys = Field(default_factory=list)
    remove_metadata: _Keys = Field(default_factory=list)


class StatusIn(_Body):
    status: Literal["completed", "failed", "cancelled"]


class MessageIn(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str, Field(max_length=MAX_CONTENT)]
    # strict: text or a boolean is not a count (lax mode read "12" and true as numbers).
    tokens: Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)] = 0
    tool_calls: Any = None


class SessionOut(BaseModel):
    id: uuid.UUID
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


class MessageOut(BaseModel):
    seq: int
    role: str
    content: str
    tokens: int
    tool_calls: Any
    created_at: datetime


class MessagePageOut(BaseModel):
    """Messages oldest first; ask for `before_seq=next_before` for the older page."""

    messages: list[MessageOut]
    next_before: int | None


def _session(info: SessionInfo) -> SessionOut:
    return SessionOut(
        id=info.id,
        tenant_id=info.tenant_id,
        agent_id=info.agent_id,
        title=info.title,
        status=info.status,
        context=info.context,
        metadata=info.metadata,
        message_count=info.message_count,
        token_count=info.token_count,
        created_at=info.created_at,
        last_activity_at=info.last_activity_at,
        expires_at=info.expires_at,
        ended_at=info.ended_at,
    )


def _message(message: Message) -> MessageOut:
    return MessageOut(
        seq=message.seq,
        role=message.role,
        content=message.content,
        tokens=message.tokens,
        tool_calls=message.tool_calls,
        created_at=message.created_at,
    )


def conversations_router(
    *, prefix: str = "/conversations", conversations: Conversations | None = None
) -> APIRouter:
    """The routes of the caller's own conversation sessions and messages.

    `conversations` sets the idle timeout (the default: 24 hours); it must use the app's
    Database, else each request's.
    """
    router = APIRouter(prefix=prefix, tags=["conversations"])

    def service(db: Any) -> Conversations:
        return conversations or Conversations(db)

    @router.post("", status_code=201)
    async def start_session(
        body: SessionIn, access: TenantAccessDep, db: DatabaseDep
    ) -> SessionOut:
        info = await service(db).start(
            access.principal.user.id,
            body.agent_id,
            title=body.title,
            context=body.context,
            metadata=body.metadata,
            session_id=body.id,
        )
        return _session(info)

    @router.get("")
    async def list_sessions(
        access: TenantAccessDep,
        db: DatabaseDep,
        status: Annotated[
            Literal["active", "completed", "failed", "cancelled", "expired"] | None, Query()
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> list[SessionOut]:
        infos = await service(db).list(access.principal.user.id, status=status, limit=limit)
        return [_session(i) for i in infos]

    @router.get("/{session_id}")
    async def get_session(
        session_id: SessionId, access: TenantAccessDep, db: DatabaseDep
    ) -> SessionOut:
        return _session(await service(db).get(session_id, access.principal.user.id))

    @router.patch("/{session_id}")
    async def update_session(
        session_id: SessionId, body: SessionPatchIn, access: TenantAccessDep, db: DatabaseDep
    ) -> SessionOut:
        info = await service(db).update(
            session_id,
            access.principal.user.id,
            title=body.title,
            set_title="title" in body.model_fields_set,
            context=body.context,
            metadata=body.metadata,
            remove_context=body.remove_context,
            remove_metadata=body.remove_metadata,
        )
        return _session(info)

    @router.post("/{session_id}/status")
    async def close_session(
        session_id: SessionId, body: StatusIn, access: TenantAccessDep, db: DatabaseDep
    ) -> SessionOut:
        info = await service(db).set_status(session_id, access.principal.user.id, body.status)
        return _session(info)

    @router.delete("/{session_id}", status_code=204)
    async def delete_session(
        session_id: SessionId, access: TenantAccessDep, db: DatabaseDep
    ) -> Response:
        await service(db).delete(session_id, access.principal.user.id)
        return Response(status_code=204)

    @router.post("/{session_id}/messages", status_code=201)
    async def append_message(
        session_id: SessionId,
        body: MessageIn,
        access: TenantAccessDep,
        db: DatabaseDep,
        request: Request,
        response: Response,
    ) -> MessageOut:
        message = await service(db).append(
            session_id,
            access.principal.user.id,
            body.role,
            body.content,
            tokens=body.tokens,
            tool_calls=body.tool_calls,
        )
        response.headers["Location"] = f"{request.url.path}?after_seq={message.seq - 1}&limit=1"
        return _message(message)

    @router.get("/{session_id}/messages")
    async def list_messages(
        session_id: SessionId,
        access: TenantAccessDep,
        db: DatabaseDep,
        before_seq: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
        after_seq: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> MessagePageOut:
        page = await service(db).history(
            session_id,
            access.principal.user.id,
            before_seq=before_seq,
            after_seq=after_seq,
            limit=limit,
        )
        return MessagePageOut(
            messages=[_message(m) for m in page.messages], next_before=page.next_before
        )

    return router
