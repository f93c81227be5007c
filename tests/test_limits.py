"""Per-session limits answer ``rate_limited`` and never cost the socket its ``ping``."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import pytest
import redis.asyncio as aredis

from streaming.backlog import backlog_probe
from streaming.exceptions import ClientError
from streaming.identity import Owner
from streaming.limits import (
    CLOSE_TOO_MANY_CONNECTIONS,
    Limits,
    LocalWindowCounter,
    RedisWindowCounter,
)
from streaming.models import Message
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True)]


async def assert_pings(client) -> None:
    await client.send({"type": "ping"})
    frame = await client.receive()
    while frame["type"] in ("stream.chunk", "stream.finished"):
        frame = await client.receive()
    assert frame == {"type": "pong"}


async def start(client, text: str) -> dict:
    """Start a reply while others stream on the same socket (their frames are skipped)."""
    await client.send({"type": "chat.message", "text": text})
    frame = await client.receive()
    while frame["type"] in ("stream.chunk", "stream.finished"):
        frame = await client.receive()
    assert frame["type"] == "stream.started", frame
    return frame


async def test_messages_per_minute(connect, settings):
    settings.STREAM_MESSAGES_PER_MINUTE = 3
    settings.DEMO_REPLY_WORDS = 2
    client = await connect("chatty")
    for n in range(3):
        await client.start(f"message {n}")
        await client.receive_until("stream.finished")
    await client.send({"type": "chat.message", "text": "one too many"})
    error = await client.receive()
    assert error["type"] == "error" and error["code"] == "rate_limited", error
    assert "3 per minute" in error["message"]
    await assert_pings(client)
    other = await connect("quiet")
    await other.start("my own budget")  # Another session is not affected.
    assert await Message.objects.filter(role="user").acount() == 4


async def test_concurrent_streams_per_session(connect, settings):
    settings.STREAM_MAX_STREAMS_PER_SESSION = 2
    settings.DEMO_REPLY_WORDS = 500
    client = await connect("busy")
    first = await start(client, "one")
    await start(client, "two")
    await client.send({"type": "chat.message", "text": "three"})
    frame = await client.receive()
    while frame["type"] == "stream.chunk":
        frame = await client.receive()
    assert frame["type"] == "error" and frame["code"] == "rate_limited", frame
    await assert_pings(client)
    await client.send({"type": "stream.cancel", "message_id": first["message_id"]})
    frame = await client.receive()
    while not (frame["type"] == "stream.finished" and frame["message_id"] == first["message_id"]):
        frame = await client.receive()
    assert frame["status"] == "cancelled"
    await start(client, "three again")  # A slot was freed.


async def test_connections_per_session(connect, make_session, settings):
    settings.STREAM_MAX_CONNECTIONS_PER_SESSION = 2
    session_key = await make_session("many-tabs")
    first = await connect(session_key=session_key)
    second = await connect(session_key=session_key)
    third = await connect(session_key=session_key)
    error = await third.receive()
    assert error["type"] == "error" and error["code"] == "rate_limited"
    closed = await third.communicator.receive_output(2)
    assert closed == {"type": "websocket.close", "code": CLOSE_TOO_MANY_CONNECTIONS}
    await assert_pings(first)
    await assert_pings(second)
    await second.communicator.disconnect()
    fourth = await connect(session_key=session_key)  # The closed socket gave its slot back.
    await assert_pings(fourth)
    await assert_pings(await connect("someone-else"))


async def test_flood_of_messages_gets_rate_limited_frames_and_ping_still_answers(connect, settings):
    settings.STREAM_MESSAGES_PER_MINUTE = 5
    settings.STREAM_MAX_STREAMS_PER_SESSION = 100  # Only the per-minute budget is under test.
    settings.DEMO_REPLY_WORDS = 1
    client = await connect("flooder")
    for n in range(60):
        await client.send({"type": "chat.message", "text": f"flood {n}"})
    answers = []
    while len(answers) < 60:
        frame = await client.receive()
        if frame["type"] in ("stream.started", "error"):
            answers.append(frame)
    started = [f for f in answers if f["type"] == "stream.started"]
    limited = [f for f in answers if f.get("code") == "rate_limited"]
    assert len(started) == 5 and len(limited) == 55
    await assert_pings(client)


async def test_local_window_counter_resets_each_window():
    now = [120.0]
    counter = LocalWindowCounter(clock=lambda: now[0])
    assert [counter.hit("a", window=60) for _ in range(3)] == [1, 2, 3]
    assert counter.hit("b", window=60) == 1
    now[0] = 180.0
    assert counter.hit("a", window=60) == 1


async def test_redis_counter_is_shared_by_instances_and_falls_back_when_redis_dies(
    private_redis: RedisServer,
):
    clients = [aredis.Redis.from_url(private_redis.url) for _ in range(2)]
    instances = [
        Limits(
            messages_per_minute=3,
            max_streams=10,
            max_connections=10,
            counter=RedisWindowCounter(
                client=lambda c=c: c, prefix="rl", timeout=0.3, fallback=LocalWindowCounter()
            ),
        )
        for c in clients
    ]
    owner = Owner(key="shared")
    try:
        await instances[0].admit_message(owner)
        await instances[1].admit_message(owner)
        await instances[0].admit_message(owner)
        with pytest.raises(ClientError) as raised:
            await instances[1].admit_message(owner)  # The budget is shared across instances.
        assert raised.value.code == "rate_limited"
        keys = await clients[0].keys("rl:rate:*")
        assert len(keys) == 1 and 0 < await clients[0].ttl(keys[0]) <= 120
        private_redis.kill()
        for _ in range(3):
            await instances[0].admit_message(owner)  # Counted locally; never raises for Redis.
        with pytest.raises(ClientError):
            await instances[0].admit_message(owner)
    finally:
        for client in clients:
            await client.aclose()


def test_backlog_probe_reads_daphne_transport_through_session_wrapper():
    transport = SimpleNamespace(dataBuffer=b"x" * 100, offset=40, _tempDataLen=5)
    protocol = SimpleNamespace(transport=transport)

    def handle_reply(protocol: object, message: dict) -> None: ...

    daphne_send = functools.partial(handle_reply, protocol)
    wrapper = SimpleNamespace(real_send=daphne_send)
    wrapped = SimpleNamespace(__self__=wrapper)
    probe = backlog_probe(wrapped)
    assert probe is not None and probe() == 65
    transport.dataBuffer, transport.offset, transport._tempDataLen = b"", 0, 0
    assert probe() == 0
    assert backlog_probe(json.dumps) is None  # Not daphne: unknowable, only ping timeouts apply.
