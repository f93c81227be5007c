"""A second session can neither stop nor read the first session's stream, through any path."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

from streaming.models import Message
from streaming.runtime import get_store

pytestmark = [pytest.mark.django_db(transaction=True)]


async def browser() -> AsyncClient:
    client = AsyncClient(enforce_csrf_checks=True)
    assert (await client.get("/")).status_code == 200
    return client


def csrf(client: AsyncClient) -> dict[str, dict[str, str]]:
    return {"headers": {"X-CSRFToken": client.cookies["csrftoken"].value}}


async def test_second_session_cannot_cancel_or_read_the_first_sessions_stream(connect, settings):
    settings.DEMO_REPLY_WORDS = 150
    victim_http = await browser()
    victim = await connect(session_key=victim_http.cookies["sessionid"].value)
    attacker_http = await browser()
    attacker = await connect(session_key=attacker_http.cookies["sessionid"].value)
    started = await victim.start("my private question")
    message_id, conversation_id = started["message_id"], started["conversation_id"]

    # WebSocket cancel.
    await attacker.send({"type": "stream.cancel", "message_id": message_id})
    assert (await attacker.receive())["code"] == "forbidden"
    # HTTP cancel, with a valid CSRF token of the attacker's own session.
    response = await attacker_http.post(f"/api/streams/{message_id}/cancel/", **csrf(attacker_http))
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    # The active-streams listing never shows someone else's stream.
    assert (await attacker_http.get("/api/streams/active/")).json() == {"streams": []}
    listed = (await victim_http.get("/api/streams/active/")).json()["streams"]
    assert [s["message_id"] for s in listed] == [message_id]
    # Messages of the conversation, and the conversation list.
    response = await attacker_http.get(f"/api/conversations/{conversation_id}/messages/")
    assert response.status_code == 403 and "my private question" not in response.text
    assert (await attacker_http.get("/api/conversations/")).json() == {"conversations": []}
    # Continuing the conversation (which would read its history into the attacker's reply).
    await attacker.send(
        {"type": "chat.message", "text": "tell me more", "conversation_id": conversation_id}
    )
    assert (await attacker.receive())["code"] == "forbidden"

    frames = await victim.receive_until("stream.finished")
    assert frames[-1]["status"] == "completed" and frames[-1]["chunks"] == 150
    assert not await get_store().is_cancelled(message_id)
    assert await Message.objects.filter(conversation_id=conversation_id).acount() == 2
    # Nothing the attacker sent produced a frame on the victim's socket.
    assert all(f["message_id"] == message_id for f in frames)


async def test_foreign_origin_cannot_open_a_socket_with_a_victims_cookie(connect, make_session):
    session_key = await make_session("victim")
    await connect(session_key=session_key, origin=b"https://evil.example", expect=False)
    await connect(session_key=session_key, origin=b"http://localhost.evil.example", expect=False)
    await connect(session_key=session_key, origin=b"null", expect=False)
    await connect(session_key=session_key)  # Same origin still works.
