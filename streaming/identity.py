"""Who owns a stream: the browser session that started it, or its logged-in user, or staff.

The owner key is a random id kept *in* the session (not the session key, which Django rotates at
login), so a user who logs in keeps their conversations.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

OWNER_SESSION_KEY = "chat_owner"


@dataclass(frozen=True, slots=True)
class Owner:
    key: str
    user_id: int | None = None
    is_staff: bool = False

    def owns(self, *, owner_key: str, owner_user_id: int | None) -> bool:
        """True when this caller may read or cancel what ``owner_key``/``owner_user_id`` own."""
        if self.is_staff:
            return True
        if owner_key and secrets.compare_digest(owner_key, self.key):
            return True
        return self.user_id is not None and owner_user_id == self.user_id


def ensure_owner_key(session: Any) -> str:
    """Return the session's owner key, creating it on first visit (``GET /`` calls this)."""
    key = session.get(OWNER_SESSION_KEY)
    if not key:
        key = secrets.token_urlsafe(24)
        session[OWNER_SESSION_KEY] = key
    return key


def owner_from(session: Any, user: Any) -> Owner | None:
    """The owner behind a session and user (HTTP request or WebSocket scope); None if unknown."""
    key = session.get(OWNER_SESSION_KEY) if session is not None else None
    authenticated = bool(user is not None and getattr(user, "is_authenticated", False))
    if not key and not authenticated:
        return None
    return Owner(
        key=key or "",
        user_id=user.pk if authenticated else None,
        is_staff=bool(authenticated and user.is_active and user.is_staff),
    )
