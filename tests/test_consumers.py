"""The WebSocket contract (docs/protocol.md) through the real ASGI application."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from channels.db import database_sync_to_async

from streaming.backends import demo_chunks
from streaming.models import Message
from streaming.runtime import get_store
from tests.conftest import eventually

pytestmark = [pytest.mark.django_db(transaction=True)]


async def message(message_id: str) -> Message:
    return await Message.objects.aget(pk=message_id)


async def no_active_streams() -> bool:
    return await get_store().list_active() == []


async def test_ping_pong(connect):
    client = await connect()
    await client.send({"type": "ping"})
    assert await client.receive() == {"type": "pong"}


async def test_handshake_without_session_is_refused(connect):
    await connect(session_key="not-a-session", expect=False)


@pytest.mark.parametrize("origin", [b"http://evil.example", None])
async def test_handshake_from_foreign_or_missing_origin_is_refused(connect, origin):
    await connect(origin=origin, expect=False)


async def test_reply_streams_in_order_and_is_stored(connect):
    client = await connect()
    started = await client.start("hello there")
    frames = await client.receive_until("stream.finished")
    chunks = [f for f in frames if f["type"] == "stream.chunk"]
    expected = demo_chunks("hello there", 20)
    assert [c["index"] for c in chunks] == list(range(20))
    assert [c["text"] for c in chunks] == expected
    assert all(c["message_id"] == started["message_id"] for c in chunks)
    assert frames[-1] == {
        "type": "stream.finished",
        "message_id": started["message_id"],
        "status": "completed",
        "chunks": 20,
    }
    stored = await message(started["message_id"])
    assert (stored.status, stored.text, stored.chunks) == ("completed", "".join(expected), 20)
    user = await Message.objects.aget(conversation_id=started["conversation_id"], role="user")
    assert user.text == "hello there"


async def test_follow_up_uses_same_conversation(connect):
    client = await connect()
    first = await client.start("one")
    await client.receive_until("stream.finished")
    second = await client.start("two", conversation_id=first["conversation_id"])
    await client.receive_until("stream.finished")
    assert second["conversation_id"] == first["conversation_id"]
    count = await Message.objects.filter(conversation_id=first["conversation_id"]).acount()
    assert count == 4


async def test_cancel_mid_stream_keeps_exactly_the_sent_text(connect, settings):
    settings.DEMO_REPLY_WORDS = 500
    client = await connect()
    started = await client.start("long answer please")
    seen = [await client.receive() for _ in range(5)]
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    frames = seen + await client.receive_until("stream.finished")
    accepted = [f for f in frames if f["type"] == "cancel.accepted"]
    assert accepted == [
        {"type": "cancel.accepted", "message_id": started["message_id"], "delivered": True}
    ]
    chunks = [f["text"] for f in frames if f["type"] == "stream.chunk"]
    assert 5 <= len(chunks) < 500
    finished = frames[-1]
    assert finished["status"] == "cancelled" and finished["chunks"] == len(chunks)
    stored = await message(started["message_id"])
    assert stored.status == "cancelled"
    assert stored.text == "".join(chunks)
    assert stored.chunks == len(chunks)


async def test_cancel_before_first_chunk(connect, settings):
    settings.STREAM_FIRST_CHUNK_DELAY = 30
    client = await connect()
    started = await client.start("think hard")
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    frames = await client.receive_until("stream.finished", timeout=3)
    assert [f["type"] for f in frames] == ["cancel.accepted", "stream.finished"]
    assert frames[-1]["status"] == "cancelled" and frames[-1]["chunks"] == 0
    stored = await message(started["message_id"])
    assert (stored.status, stored.text) == ("cancelled", "")


async def test_cancel_from_second_connection_of_same_owner(connect, make_session, settings):
    settings.DEMO_REPLY_WORDS = 500
    session_key = await make_session("owner-a")
    streaming = await connect(session_key=session_key)
    other_tab = await connect(session_key=session_key)
    started = await streaming.start("two tabs")
    await streaming.receive()
    await other_tab.send({"type": "stream.cancel", "message_id": started["message_id"]})
    assert (await other_tab.receive())["delivered"] is True
    frames = await streaming.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"


async def test_flag_written_elsewhere_stops_the_stream(connect, settings):
    """A cancel that reached another instance arrives as a flag only: the watcher must act on it."""
    settings.DEMO_REPLY_WORDS = 500
    client = await connect()
    started = await client.start("remote cancel")
    await client.receive()
    await get_store().set_cancelled(started["message_id"])
    frames = await client.receive_until("stream.finished", timeout=3)
    assert frames[-1]["status"] == "cancelled"
    stored = await message(started["message_id"])
    sent = [f["text"] for f in frames if f["type"] == "stream.chunk"]
    # One chunk was read before the flag was set; the rest is exactly what followed.
    assert stored.text.endswith("".join(sent))
    assert stored.chunks == len(sent) + 1


async def test_flag_written_before_first_chunk_stops_the_stream(connect, settings):
    settings.STREAM_FIRST_CHUNK_DELAY = 30
    client = await connect()
    started = await client.start("remote cancel while thinking")
    await get_store().set_cancelled(started["message_id"])
    frames = await client.receive_until("stream.finished", timeout=3)
    assert frames == [
        {
            "type": "stream.finished",
            "message_id": started["message_id"],
            "status": "cancelled",
            "chunks": 0,
        }
    ]


async def test_other_owner_cannot_cancel(connect, settings):
    settings.DEMO_REPLY_WORDS = 200
    victim = await connect("victim")
    attacker = await connect("attacker")
    started = await victim.start("mine")
    await attacker.send({"type": "stream.cancel", "message_id": started["message_id"]})
    error = await attacker.receive()
    assert error["type"] == "error" and error["code"] == "forbidden"
    frames = await victim.receive_until("stream.finished")
    assert frames[-1]["status"] == "completed"
    assert not await get_store().is_cancelled(started["message_id"])


async def test_other_owner_cannot_continue_conversation(connect):
    victim = await connect("victim")
    started = await victim.start("mine")
    await victim.receive_until("stream.finished")
    attacker = await connect("attacker")
    await attacker.send(
        {"type": "chat.message", "text": "hi", "conversation_id": started["conversation_id"]}
    )
    error = await attacker.receive()
    assert error["code"] == "forbidden"
    assert await Message.objects.filter(conversation_id=started["conversation_id"]).acount() == 2


async def test_cancel_unknown_or_finished_is_not_found(connect):
    client = await connect()
    await client.send({"type": "stream.cancel", "message_id": str(uuid.uuid4())})
    assert (await client.receive())["code"] == "not_found"
    started = await client.start("short")
    await client.receive_until("stream.finished")
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    assert (await client.receive())["code"] == "not_found"


async def test_unknown_conversation_is_not_found(connect):
    client = await connect()
    await client.send({"type": "chat.message", "text": "hi", "conversation_id": str(uuid.uuid4())})
    assert (await client.receive())["code"] == "not_found"


BAD_FRAMES = [
    ("not json", "invalid_json"),
    ("   ", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ('"text"', "invalid_message"),
    ("{}", "invalid_message"),
    ('{"type": 5}', "invalid_message"),
    ('{"type": "chat.message"}', "invalid_message"),
    ('{"type": "chat.message", "text": "   "}', "invalid_message"),
    ('{"type": "chat.message", "text": 12}', "invalid_message"),
    ('{"type": "chat.message", "text": "x", "conversation_id": "nope"}', "invalid_message"),
    ('{"type": "chat.message", "text": "x", "conversation_id": 7}', "invalid_message"),
    ('{"type": "stream.cancel"}', "invalid_message"),
    ('{"type": "stream.cancel", "message_id": "123"}', "invalid_message"),
    ('{"type": "launch.missiles"}', "unknown_type"),
    (json.dumps({"type": "chat.message", "text": "x" * 9000}), "too_large"),
    (json.dumps({"type": "ping", "pad": "x" * 70000}), "too_large"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_FRAMES)
async def test_bad_frames_get_error_codes_and_socket_stays_open(connect, raw, code):
    client = await connect()
    await client.send(raw)
    frame = await client.receive()
    assert frame["type"] == "error" and frame["code"] == code, frame
    assert isinstance(frame["message"], str) and frame["message"]
    await client.send({"type": "ping"})
    assert await client.receive() == {"type": "pong"}


async def test_binary_frame_is_parsed_like_text(connect):
    client = await connect()
    await client.communicator.send_to(bytes_data=b'{"type": "ping"}')
    assert await client.receive() == {"type": "pong"}
    await client.communicator.send_to(bytes_data=b"\xff\xfe")
    assert (await client.receive())["code"] == "invalid_json"


async def test_disconnect_records_interrupted_with_partial_text(connect, settings):
    settings.DEMO_REPLY_WORDS = 500
    client = await connect()
    started = await client.start("leaving soon")
    chunks = [(await client.receive())["text"] for _ in range(3)]
    await client.communicator.disconnect()
    stored = await message(started["message_id"])
    assert stored.status == "interrupted"
    assert stored.text.startswith("".join(chunks))
    assert stored.text == "".join(demo_chunks("leaving soon", 500)[: stored.chunks])
    await eventually(no_active_streams)


async def test_registry_lists_running_stream_and_forgets_it(connect, settings):
    settings.DEMO_REPLY_WORDS = 500
    client = await connect()
    started = await client.start("registry")
    await client.receive()
    await asyncio.sleep(0.1)  # Let a heartbeat refresh the chunk count.
    await eventually(lambda: get_store().list_active())
    [info] = await get_store().list_active()
    assert info.message_id == started["message_id"]
    assert info.conversation_id == started["conversation_id"]
    assert info.owner_key == "owner-a"
    assert info.chunks >= 1 and not info.stale
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    await client.receive_until("stream.finished")
    await eventually(no_active_streams)


async def test_two_streams_on_one_socket_are_independent(connect, settings):
    settings.DEMO_REPLY_WORDS = 300
    client = await connect()
    first = await client.start("first")
    await client.send({"type": "chat.message", "text": "second"})
    second = None
    while second is None:
        frame = await client.receive()
        if frame["type"] == "stream.started":
            second = frame
    await client.send({"type": "stream.cancel", "message_id": first["message_id"]})
    finished = {}
    while len(finished) < 1:
        frame = await client.receive()
        if frame["type"] == "stream.finished":
            finished[frame["message_id"]] = frame["status"]
    assert finished == {first["message_id"]: "cancelled"}
    assert (await message(second["message_id"])).status == "streaming"


async def test_database_messages_match_what_clients_saw(connect, settings):
    """The stored text of every reply is byte-for-byte the concatenation of its chunk frames."""
    settings.DEMO_REPLY_WORDS = 60
    client = await connect()
    started = await client.start("exact")
    frames = await client.receive_until("stream.finished")
    texts = [f["text"] for f in frames if f["type"] == "stream.chunk"]
    stored = await database_sync_to_async(lambda: Message.objects.get(pk=started["message_id"]))()
    assert stored.text == "".join(texts)


async def test_running_reply_text_is_checkpointed_and_final_save_wins(connect, settings):
    """A crash loses at most one checkpoint interval of text; a finished reply is never undone."""
    settings.DEMO_REPLY_WORDS = 500
    settings.STREAM_CHECKPOINT_SECONDS = 0.05
    client = await connect()
    started = await client.start("checkpoint me")
    seen = [(await client.receive())["text"] for _ in range(10)]

    async def checkpointed() -> bool:
        stored = await message(started["message_id"])
        return stored.chunks >= 10

    await eventually(checkpointed)
    stored = await message(started["message_id"])
    assert stored.status == "streaming"
    full = "".join(demo_chunks("checkpoint me", 500))
    assert stored.text.startswith("".join(seen)) and full.startswith(stored.text)
    await client.send({"type": "stream.cancel", "message_id": started["message_id"]})
    frames = await client.receive_until("stream.finished")
    sent = seen + [f["text"] for f in frames if f["type"] == "stream.chunk"]
    await asyncio.sleep(0.2)  # Several checkpoint intervals: none may overwrite the final save.
    stored = await message(started["message_id"])
    assert (stored.status, stored.text, stored.chunks) == ("cancelled", "".join(sent), len(sent))
