"""Two real daphne instances sharing a private redis-server and one SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from streaming.backends import demo_chunks
from tests.integration.cluster import ChatSession, DaphneInstance, migrate, sqlite_url
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORDS = 400


@dataclass
class Cluster:
    redis: RedisServer
    a: DaphneInstance
    b: DaphneInstance


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    redis = RedisServer().start()
    database = sqlite_url()
    migrate(database)
    env = {
        "REDIS_URL": redis.url,
        "DATABASE_URL": database,
        "STREAM_CHUNK_DELAY": "0.02",
        "DEMO_REPLY_WORDS": str(WORDS),
        "STREAM_CANCEL_CHECK_SECONDS": "0.2",
        "STREAM_HEARTBEAT_SECONDS": "0.5",
        "STREAM_REDIS_TIMEOUT": "0.3",
    }
    a = DaphneInstance("instance-a", env)
    b = DaphneInstance("instance-b", env)
    try:
        a.start()
        b.start()
        yield Cluster(redis, a, b)
    finally:
        for instance in (a, b):
            instance.stop()
        redis.stop()
    for instance in (a, b):
        assert "Traceback" not in instance.log(), instance.log()


async def stored_reply(session: ChatSession, instance: DaphneInstance, started: dict) -> dict:
    status, body = await session.get_json(
        instance, f"/api/conversations/{started['conversation_id']}/messages/"
    )
    assert status == 200, body
    [reply] = [m for m in body["messages"] if m["message_id"] == started["message_id"]]
    return reply


async def test_cancel_on_other_instance_stops_stream_and_keeps_partial_text(cluster):
    session = await ChatSession().login(cluster.a)
    on_a = await session.socket(cluster.a)
    on_b = await session.socket(cluster.b)
    started = await on_a.start("cross instance please")
    before = [await on_a.receive() for _ in range(5)]
    await on_b.send({"type": "stream.cancel", "message_id": started["message_id"]})
    accepted = await on_b.receive()
    assert accepted == {
        "type": "cancel.accepted",
        "message_id": started["message_id"],
        "delivered": True,
    }
    frames = before + await on_a.receive_until("stream.finished")
    chunks = [f["text"] for f in frames if f["type"] == "stream.chunk"]
    assert frames[-1]["status"] == "cancelled"
    assert 5 <= len(chunks) < WORDS
    assert chunks == demo_chunks("cross instance please", WORDS)[: len(chunks)]
    reply = await stored_reply(session, cluster.b, started)
    assert reply["status"] == "cancelled"
    assert reply["text"] == "".join(chunks)
    await on_a.close()
    await on_b.close()


async def test_http_cancel_on_other_instance(cluster):
    session = await ChatSession().login(cluster.a)
    on_a = await session.socket(cluster.a)
    started = await on_a.start("http cancel")
    await on_a.receive()
    status, body = await session.get_json(cluster.b, "/api/streams/active/")
    assert status == 200
    assert [s["message_id"] for s in body["streams"]] == [started["message_id"]]
    assert body["streams"][0]["instance"] == "instance-a"
    status, body = await session.post_json(
        cluster.b, f"/api/streams/{started['message_id']}/cancel/"
    )
    assert (status, body) == (202, {"message_id": started["message_id"], "delivered": True})
    frames = await on_a.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"
    stranger = await ChatSession().login(cluster.b)
    status, body = await stranger.post_json(
        cluster.a, f"/api/streams/{started['message_id']}/cancel/"
    )
    assert status in (403, 404)
    await on_a.close()


async def test_redis_killed_mid_stream_stream_completes_and_local_cancel_works(cluster):
    session = await ChatSession().login(cluster.a)
    on_a = await session.socket(cluster.a)
    await on_a.start("survive redis loss")
    await on_a.receive()
    cluster.redis.kill()
    frames = await on_a.receive_until("stream.finished", timeout=30)
    assert frames[-1]["status"] == "completed"
    assert frames[-1]["chunks"] == WORDS
    # Same-instance cancel still works without Redis (delivered: the stream runs here).
    second = await on_a.start("cancel without redis")
    await on_a.receive()
    await on_a.send({"type": "stream.cancel", "message_id": second["message_id"]})
    frames = await on_a.receive_until("stream.finished")
    accepted = [f for f in frames if f["type"] == "cancel.accepted"]
    assert accepted[0]["delivered"] is True
    assert frames[-1]["status"] == "cancelled"
    # Cross-instance cancel cannot be delivered while Redis is down, and says so.
    third = await on_a.start("cancel from b without redis")
    on_b = await session.socket(cluster.b)
    await on_b.send({"type": "stream.cancel", "message_id": third["message_id"]})
    assert (await on_b.receive())["delivered"] is False
    # Redis returns: cross-instance cancel works again, within seconds, with no restart.
    cluster.redis.start()
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        await on_b.send({"type": "stream.cancel", "message_id": third["message_id"]})
        frame = await on_b.receive()
        if frame.get("delivered"):
            break
        assert asyncio.get_running_loop().time() < deadline, (
            "cancel not delivered 5 s after Redis returned"
        )
        await asyncio.sleep(0.2)
    frames = await on_a.receive_until("stream.finished", timeout=10)
    assert frames[-1]["message_id"] == third["message_id"]
    assert frames[-1]["status"] == "cancelled"
    _status, health = await session.get_json(cluster.a, "/healthz/")
    assert health == {"status": "ok", "redis": "ok"}
    await on_a.close()
    await on_b.close()
