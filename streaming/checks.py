"""System checks for configurations that silently break cross-instance cancel."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.compatibility, deploy=False)
def check_streaming_configuration(app_configs: Any = None, **kwargs: Any) -> list:
    messages = []
    layer = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if not settings.DEBUG and not settings.REDIS_URL:
        messages.append(
            Error(
                "REDIS_URL is not set while DEBUG is off.",
                hint="Without Redis, a cancel reaching one instance never stops a stream on "
                "another. Set REDIS_URL, or DEBUG=1 for a single-process trial.",
                id="streaming.E001",
            )
        )
    if not settings.DEBUG and layer.endswith("InMemoryChannelLayer"):
        messages.append(
            Error(
                "The in-memory channel layer is configured while DEBUG is off.",
                hint="It cannot reach other instances; set REDIS_URL.",
                id="streaming.E002",
            )
        )
    if settings.STREAM_CANCEL_CHECK_SECONDS > 2:
        messages.append(
            Warning(
                "STREAM_CANCEL_CHECK_SECONDS is above 2 seconds.",
                hint="A cross-instance cancel can take that long to take effect.",
                id="streaming.W001",
            )
        )
    if settings.STREAM_CANCEL_FLAG_TTL < 60:
        messages.append(
            Warning(
                "STREAM_CANCEL_FLAG_TTL is under a minute.",
                hint="A flag must outlive the longest stream, or a cancel can be lost.",
                id="streaming.W002",
            )
        )
    if not settings.DEBUG and "*" in settings.ALLOWED_HOSTS:
        messages.append(
            Error(
                "ALLOWED_HOSTS contains '*' while DEBUG is off.",
                hint="The WebSocket Origin check trusts ALLOWED_HOSTS: a wildcard lets any web "
                "page open a chat socket with a visitor's cookies. List the real host names.",
                id="streaming.E003",
            )
        )
    if settings.STREAM_REAPER_GRACE_SECONDS < (
        settings.STREAM_STALE_AFTER_SECONDS + settings.STREAM_HEARTBEAT_SECONDS
    ):
        messages.append(
            Warning(
                "STREAM_REAPER_GRACE_SECONDS is shorter than STREAM_STALE_AFTER_SECONDS plus "
                "STREAM_HEARTBEAT_SECONDS.",
                hint="After a Redis restart the reaper could mark live replies interrupted before "
                "their instances have heartbeated them back into the registry.",
                id="streaming.W003",
            )
        )
    return messages


@register(Tags.compatibility, deploy=False)
def check_stream_backend(app_configs: Any = None, **kwargs: Any) -> list:
    """Build the configured backend once at startup, so a typo fails here and not on a reply."""
    from .backends import get_backend

    try:
        get_backend()
    except (ImportError, TypeError, ValueError) as exc:
        return [
            Error(
                f"STREAM_BACKEND {settings.STREAM_BACKEND!r} cannot be built: {exc}",
                hint="Use 'demo', 'openai' or the dotted path of a backend class, and check the "
                "OPENAI_* settings (docs/operations.md).",
                id="streaming.E004",
            )
        ]
    return []
