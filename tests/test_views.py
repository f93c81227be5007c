"""The HTTP side of the contract: chat page, cancel, active streams, messages, health."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

pytestmark = [pytest.mark.django_db(transaction=True)]


async def browser() -> AsyncClient:
    """A client that enforces CSRF like a browser session and has visited the chat page."""
    client = AsyncClient(enforce_csrf_checks=True)
    response = await client.get("/")
    assert response.status_code == 200
    return client


async def open_chat(connect, client: AsyncClient):
    return await connect(session_key=client.cookies["sessionid"].value)


def csrf(client: AsyncClient) -> dict[str, str]:
    return {"headers": {"X-CSRFToken": client.cookies["csrftoken"].value}}


async def test_chat_page_sets_session_and_csrf_cookies():
    client = AsyncClient()
    response = await client.get("/")
    assert response.status_code == 200
    assert b'aria-label="Message"' in response.content
    assert "sessionid" in client.cookies and "csrftoken" in client.cookies


async def test_api_without_session_is_forbidden():
    response = await AsyncClient().get("/api/streams/active/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


async def test_http_cancel_needs_csrf_and_stops_the_stream(connect, settings):
    settings.DEMO_REPLY_WORDS = 500
    client = await browser()
    chat = await open_chat(connect, client)
    started = await chat.start("cancel me over http")
    await chat.receive()
    url = f"/api/streams/{started['message_id']}/cancel/"
    assert (await client.post(url)).status_code == 403  # No CSRF token.
    response = await client.post(url, **csrf(client))
    assert response.status_code == 202
    assert response.json() == {"message_id": started["message_id"], "delivered": True}
    frames = await chat.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"
    again = await client.post(url, **csrf(client))
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "not_found"


async def test_http_cancel_of_unknown_and_foreign_streams(connect, settings):
    settings.DEMO_REPLY_WORDS = 500
    owner = await browser()
    chat = await open_chat(connect, owner)
    started = await chat.start("mine")
    stranger = await browser()
    response = await stranger.post(
        f"/api/streams/{started['message_id']}/cancel/", **csrf(stranger)
    )
    assert response.status_code == 403
    response = await stranger.post(f"/api/streams/{uuid.uuid4()}/cancel/", **csrf(stranger))
    assert response.status_code == 404
    assert (await chat.receive())["type"] == "stream.chunk"  # Still streaming.


async def test_active_streams_lists_own_streams_and_staff_sees_all(connect, settings):
    settings.DEMO_REPLY_WORDS = 500
    owner = await browser()
    chat = await open_chat(connect, owner)
    started = await chat.start("listed")
    await chat.receive()
    body = (await owner.get("/api/streams/active/")).json()
    assert [s["message_id"] for s in body["streams"]] == [started["message_id"]]
    entry = body["streams"][0]
    assert entry["conversation_id"] == started["conversation_id"]
    assert entry["instance"] and entry["started_at"] > 0 and entry["chunks"] >= 0
    stranger = await browser()
    assert (await stranger.get("/api/streams/active/")).json() == {"streams": []}
    await User.objects.acreate_user("ops", password="pw", is_staff=True)
    staff = AsyncClient()
    await staff.alogin(username="ops", password="pw")
    listed = (await staff.get("/api/streams/active/")).json()["streams"]
    assert [s["message_id"] for s in listed] == [started["message_id"]]


async def test_conversation_messages_for_owner_only(connect):
    owner = await browser()
    chat = await open_chat(connect, owner)
    started = await chat.start("remember me")
    frames = await chat.receive_until("stream.finished")
    text = "".join(f["text"] for f in frames if f["type"] == "stream.chunk")
    url = f"/api/conversations/{started['conversation_id']}/messages/"
    body = (await owner.get(url)).json()
    assert [(m["role"], m["text"], m["status"]) for m in body["messages"]] == [
        ("user", "remember me", "completed"),
        ("assistant", text, "completed"),
    ]
    assert body["messages"][1]["message_id"] == started["message_id"]
    stranger = await browser()
    assert (await stranger.get(url)).status_code == 403
    assert (await owner.get(f"/api/conversations/{uuid.uuid4()}/messages/")).status_code == 404
    listing = (await owner.get("/api/conversations/")).json()["conversations"]
    assert [c["conversation_id"] for c in listing] == [started["conversation_id"]]
    assert (await stranger.get("/api/conversations/")).json() == {"conversations": []}


async def test_healthz_in_embedded_mode():
    response = await AsyncClient().get("/healthz/")
    assert response.json() == {"status": "ok", "redis": "disabled"}


async def test_healthz_reports_unreachable_redis(settings, private_redis, close_store):
    settings.REDIS_URL = private_redis.url
    assert (await AsyncClient().get("/healthz/")).json()["redis"] == "ok"
    private_redis.kill()
    response = await AsyncClient().get("/healthz/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "redis": "unavailable"}
