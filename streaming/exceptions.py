"""Errors the streaming app reports to clients.

A ``ClientError`` carries one of the contract's error codes (docs/protocol.md). The consumer turns
it into an ``error`` frame and the HTTP views into a JSON error response; neither ever closes the
socket for it.
"""

from __future__ import annotations

from typing import Final

INVALID_JSON: Final = "invalid_json"
INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_TYPE: Final = "unknown_type"
TOO_LARGE: Final = "too_large"
NOT_FOUND: Final = "not_found"
FORBIDDEN: Final = "forbidden"
RATE_LIMITED: Final = "rate_limited"
UNAVAILABLE: Final = "unavailable"

ERROR_CODES: Final = frozenset(
    {
        INVALID_JSON,
        INVALID_MESSAGE,
        UNKNOWN_TYPE,
        TOO_LARGE,
        NOT_FOUND,
        FORBIDDEN,
        RATE_LIMITED,
        UNAVAILABLE,
    }
)

#: The HTTP status each code maps to in the JSON API.
HTTP_STATUS: Final = {
    INVALID_JSON: 400,
    INVALID_MESSAGE: 400,
    UNKNOWN_TYPE: 400,
    TOO_LARGE: 413,
    NOT_FOUND: 404,
    FORBIDDEN: 403,
    RATE_LIMITED: 429,
    UNAVAILABLE: 503,
}


class ClientError(Exception):
    """A request the client can fix or retry; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"Expected one of {sorted(ERROR_CODES)} but got {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def as_frame(self) -> dict[str, str]:
        return {"type": "error", "code": self.code, "message": self.message}
