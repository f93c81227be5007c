"""Reads: what a caller may see of streams, conversations and messages (ownership applied here)."""

from __future__ import annotations

import uuid
from typing import Any

from .cancellation import StreamInfo
from .exceptions import FORBIDDEN, NOT_FOUND, ClientError
from .identity import Owner
from .models import Conversation
from .runtime import get_store


def visible_streams(owner: Owner, streams: list[StreamInfo]) -> list[StreamInfo]:
    """The registry entries ``owner`` may see: their own, or all of them for staff."""
    return [s for s in streams if owner.owns(owner_key=s.owner_key, owner_user_id=s.owner_user_id)]


async def active_streams(*, owner: Owner) -> list[StreamInfo]:
    """Running streams across all instances that ``owner`` may see; raises ``StoreUnavailable``."""
    return visible_streams(owner, await get_store().list_active())


def stream_as_json(info: StreamInfo) -> dict[str, Any]:
    return {
        "message_id": info.message_id,
        "conversation_id": info.conversation_id,
        "instance": info.instance,
        "started_at": info.started_at,
        "chunks": info.chunks,
        "heartbeat_at": info.heartbeat_at,
        "stale": info.stale,
    }


def owned_conversation(owner: Owner, conversation_id: uuid.UUID) -> Conversation:
    conversation = Conversation.objects.filter(pk=conversation_id).first()
    if conversation is None:
        raise ClientError(NOT_FOUND, "Conversation not found.")
    if not owner.owns(owner_key=conversation.owner_key, owner_user_id=conversation.owner_user_id):
        raise ClientError(FORBIDDEN, "This conversation belongs to someone else.")
    return conversation


def conversation_messages(*, owner: Owner, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    conversation = owned_conversation(owner, conversation_id)
    return [
        {
            "message_id": str(m.pk),
            "role": m.role,
            "text": m.text,
            "status": m.status,
            "error": m.error,
        }
        for m in conversation.messages.all()
    ]


def owner_conversations(*, owner: Owner, limit: int = 50) -> list[dict[str, Any]]:
    """The caller's own conversations, newest first (staff see only their own here too)."""
    from django.db.models import Q

    query = Q(owner_key=owner.key) if owner.key else Q(pk__in=[])
    if owner.user_id is not None:
        query |= Q(owner_user_id=owner.user_id)
    return [
        {"conversation_id": str(c.pk), "title": c.title, "updated_at": c.updated_at.isoformat()}
        for c in Conversation.objects.filter(query)[:limit]
    ]
