"""Validation of client frames (the wire contract is in docs/protocol.md).

``parse_frame`` turns raw WebSocket text into one of the typed frames below or raises
``ClientError`` with the contract's code; the consumer never looks at raw JSON itself.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .exceptions import INVALID_JSON, INVALID_MESSAGE, TOO_LARGE, UNKNOWN_TYPE, ClientError


@dataclass(frozen=True, slots=True)
class ChatMessage:
    text: str
    conversation_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class StreamCancel:
    message_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Frame = ChatMessage | StreamCancel | Ping


def parse_uuid(value: Any, field: str) -> uuid.UUID:
    """Parse a UUID given as a string, or raise ``invalid_message`` naming ``field``."""
    if not isinstance(value, str):
        raise ClientError(INVALID_MESSAGE, f"'{field}' must be a UUID string.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ClientError(INVALID_MESSAGE, f"'{field}' is not a valid UUID.") from None


def parse_frame(raw: str | bytes | None, *, max_bytes: int, max_text_chars: int) -> Frame:
    """Validate one inbound frame; called by the consumer for every text or binary frame."""
    if raw is None:
        raise ClientError(INVALID_JSON, "Empty frame.")
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > max_bytes:
        raise ClientError(TOO_LARGE, f"Frame is {size} bytes; the limit is {max_bytes}.")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ClientError(INVALID_JSON, "Frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ClientError(INVALID_MESSAGE, "Frame must be a JSON object.")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ClientError(INVALID_MESSAGE, "Frame needs a string 'type'.")
    if kind == "chat.message":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ClientError(INVALID_MESSAGE, "'text' must be a non-empty string.")
        if len(text) > max_text_chars:
            raise ClientError(
                TOO_LARGE, f"'text' is {len(text)} characters; the limit is {max_text_chars}."
            )
        raw_conv = data.get("conversation_id")
        conversation_id = None if raw_conv is None else parse_uuid(raw_conv, "conversation_id")
        return ChatMessage(text=text, conversation_id=conversation_id)
    if kind == "stream.cancel":
        return StreamCancel(message_id=parse_uuid(data.get("message_id"), "message_id"))
    if kind == "ping":
        return Ping()
    raise ClientError(UNKNOWN_TYPE, f"Unknown frame type {kind[:64]!r}.")
