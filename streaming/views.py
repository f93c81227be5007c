"""HTTP side of the contract (docs/protocol.md): the chat page and the small JSON API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from . import metrics, selectors, services
from .cancellation import StoreUnavailable
from .exceptions import FORBIDDEN, HTTP_STATUS, UNAVAILABLE, ClientError
from .identity import OWNER_SESSION_KEY, Owner, ensure_owner_key
from .runtime import get_store, start_instance_services


def error_response(exc: ClientError) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": exc.code, "message": exc.message}}, status=HTTP_STATUS[exc.code]
    )


async def aowner(request: HttpRequest) -> Owner | None:
    """The caller's identity, read with the async session and auth APIs."""
    key = await request.session.aget(OWNER_SESSION_KEY)
    user = await request.auser()
    if not key and not user.is_authenticated:
        return None
    return Owner(
        key=key or "",
        user_id=user.pk if user.is_authenticated else None,
        is_staff=bool(user.is_authenticated and user.is_active and user.is_staff),
    )


def json_api(
    view: Callable[..., Awaitable[dict[str, Any]]], *, status: int = 200
) -> Callable[..., Awaitable[JsonResponse]]:
    """Wrap an async API view: resolve the owner, map ``ClientError`` to a JSON error."""

    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        owner = await aowner(request)
        if owner is None:
            return error_response(
                ClientError(FORBIDDEN, "Open the chat page first to get a session.")
            )
        try:
            return JsonResponse(await view(request, owner, *args, **kwargs), status=status)
        except ClientError as exc:
            return error_response(exc)
        except StoreUnavailable:
            return error_response(ClientError(UNAVAILABLE, "The stream registry is unavailable."))

    return wrapper


@ensure_csrf_cookie
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The chat page; its first visit creates the session that owns the streams started here."""
    ensure_owner_key(request.session)
    return render(request, "streaming/chat.html")


@require_POST
async def cancel_stream(request: HttpRequest, message_id: uuid.UUID) -> JsonResponse:
    async def view(request: HttpRequest, owner: Owner) -> dict[str, Any]:
        result = await services.stream_cancel(owner=owner, message_id=message_id)
        return {"message_id": str(result.message_id), "delivered": result.delivered}

    return await json_api(view, status=202)(request)


@require_GET
async def active_streams(request: HttpRequest) -> JsonResponse:
    async def view(request: HttpRequest, owner: Owner) -> dict[str, Any]:
        start_instance_services()
        streams = await selectors.active_streams(owner=owner)
        return {"streams": [selectors.stream_as_json(s) for s in streams]}

    return await json_api(view)(request)


@require_GET
async def conversation_messages(request: HttpRequest, conversation_id: uuid.UUID) -> JsonResponse:
    async def view(request: HttpRequest, owner: Owner) -> dict[str, Any]:
        messages = await database_sync_to_async(selectors.conversation_messages)(
            owner=owner, conversation_id=conversation_id
        )
        return {"conversation_id": str(conversation_id), "messages": messages}

    return await json_api(view)(request)


@require_GET
async def conversations(request: HttpRequest) -> JsonResponse:
    async def view(request: HttpRequest, owner: Owner) -> dict[str, Any]:
        items = await database_sync_to_async(selectors.owner_conversations)(owner=owner)
        return {"conversations": items}

    return await json_api(view)(request)


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and Redis reachability; the service is "ok" even when Redis is down (fail-safe)."""
    from django.conf import settings

    if not settings.REDIS_URL:
        redis_state = "disabled"
    else:
        try:
            await asyncio.wait_for(get_store().ping(), settings.STREAM_REDIS_TIMEOUT * 2)
            redis_state = "ok"
        except (StoreUnavailable, TimeoutError):
            metrics.redis_error("ping")
            redis_state = "unavailable"
    return JsonResponse({"status": "ok", "redis": redis_state})


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape endpoint of this instance; deploy/nginx.conf keeps it private."""
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)
