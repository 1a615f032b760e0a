"""Agent conversation sessions and their messages, per user and tenant.

from pgstack.conversations import Conversations

conversations = Conversations(db)
with tenant_context(tenant_id):
    chat = await conversations.start(user_id, "support-bot")
    await conversations.append(chat.id, user_id, "user", "Hello")
    page = await conversations.history(chat.id, user_id, limit=20)
"""

from pgstack.conversations.models import (
    ROLES,
    STATUSES,
    TRANSITIONS,
    ConversationMessage,
    ConversationSession,
)
from pgstack.conversations.service import (
    MAX_AGENT_ID,
    MAX_PAGE,
    Conversations,
    Message,
    MessagePage,
    SessionInfo,
)

__all__ = [
    "MAX_AGENT_ID",
    "MAX_PAGE",
    "ROLES",
    "STATUSES",
    "TRANSITIONS",
    "ConversationMessage",
    "ConversationSession",
    "Conversations",
    "Message",
    "MessagePage",
    "SessionInfo",
]
