"""Cluster mode: pushed cancels, the flag as the safety net, and a Redis that dies or freezes."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis.asyncio as aredis

from tests.integration.cluster import ChatSession
from tests.integration.conftest import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# Flag checks are made rare here, so a stop within a fraction of this proves the push path.
SLOW_CHECKS = {
    "STREAM_CHUNK_DELAY": "0.02",
    "DEMO_REPLY_WORDS": "2000",
    "STREAM_CANCEL_CHECK_SECONDS": "3",
    "STREAM_CANCEL_CHECK_CHUNKS": "100000",
}


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    return make_cluster(**SLOW_CHECKS)


async def wait_subscribed(redis_url: str, channel: str, timeout: float = 10) -> None:
    client = aredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            counts = dict(await client.pubsub_numsub(channel))
            if counts.get(channel.encode(), 0) >= 1:
                return
            assert time.monotonic() < deadline, f"nobody subscribed to {channel}"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def cross_instance_cancel(cluster: Cluster, session: ChatSession, text: str) -> float:
    """Stream on A, cancel via B; returns seconds from cancel sent to ``stream.finished``."""
    on_a = await session.socket(cluster.a)
    on_b = await session.socket(cluster.b)
    try:
        started = await on_a.start(text)
        await on_a.receive()
        sent = time.monotonic()
        await on_b.send({"type": "stream.cancel", "message_id": started["message_id"]})
        assert (await on_b.receive())["delivered"] is True
        frames = await on_a.receive_until("stream.finished", timeout=15)
        assert frames[-1]["status"] == "cancelled"
        return time.monotonic() - sent
    finally:
        await on_a.close()
        await on_b.close()


async def test_push_stops_a_remote_stream_before_any_flag_check(cluster):
    session = await ChatSession().login(cluster.a)
    on_a = await session.socket(cluster.a)  # Connecting starts A's subscription.
    await wait_subscribed(cluster.redis.url, "chat:cancels:instance-a")
    await on_a.close()
    elapsed = await cross_instance_cancel(cluster, session, "push me")
    # Flag checks run every 3 s here: only the pushed notice can be this fast.
    assert elapsed < 1.5


async def test_cancel_published_while_subscriber_is_down_takes_effect_through_the_flag(cluster):
    session = await ChatSession().login(cluster.a)
    on_a = await session.socket(cluster.a)
    await wait_subscribed(cluster.redis.url, "chat:cancels:instance-a")
    started = await on_a.start("lost notice")
    await on_a.receive()
    raw = aredis.Redis.from_url(cluster.redis.url)
    try:
        # Drop A's subscription and, in the same round trip, write the flag and publish the notice
        # while nobody listens: the notice is lost, only the flag remains.
        for _ in range(20):
            pipe = raw.pipeline(transaction=True)
            pipe.client_kill_filter(_type="pubsub")
            pipe.set(f"chat:cancel:{started['message_id']}", b"1", ex=3600)
            pipe.publish("chat:cancels:instance-a", started["message_id"])
            killed, _, receivers = await pipe.execute()
            if killed >= 1 and receivers == 0:
                break
        else:
            pytest.fail("could not publish while the subscriber was down")
    finally:
        await raw.aclose()
    frames = await on_a.receive_until("stream.finished", timeout=10)
    assert frames[-1]["status"] == "cancelled"
    # Subscription is restored by itself.
    await wait_subscribed(cluster.redis.url, "chat:cancels:instance-a")
    await on_a.close()
    assert "Cancel subscription on chat:cancels:instance-a lost" in cluster.a.log()
    assert "restored" in cluster.a.log()


async def test_redis_restart_cross_instance_cancel_works_again_within_5_seconds(cluster):
    session = await ChatSession().login(cluster.a)
    on_a = await session.socket(cluster.a)
    await wait_subscribed(cluster.redis.url, "chat:cancels:instance-a")
    cluster.redis.kill()
    await asyncio.sleep(1)
    cluster.redis.start()
    restarted = time.monotonic()
    # The session lives in the database, so it survives the Redis restart.
    elapsed = await cross_instance_cancel(cluster, session, "after restart")
    assert time.monotonic() - restarted < 5, elapsed
    await on_a.close()


async def test_frozen_redis_does_not_stall_streams(cluster):
    session = await ChatSession().login(cluster.a)
    on_a = await session.socket(cluster.a)
    started = await on_a.start("keep going")
    await on_a.receive()
    cluster.redis.freeze()
    try:
        arrivals = []
        frozen_at = time.monotonic()
        while time.monotonic() - frozen_at < 5:
            frame = await on_a.receive(timeout=5)
            assert frame["type"] == "stream.chunk"
            arrivals.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        # Chunks are 20 ms apart; a Redis call on the chunk path would stall them for seconds.
        assert len(arrivals) > 100
        assert max(gaps) < 1.0, max(gaps)
        # The socket keeps answering, and a same-instance Stop still works at once.
        await on_a.send({"type": "ping"})
        await on_a.send({"type": "stream.cancel", "message_id": started["message_id"]})
        frames = await on_a.receive_until("stream.finished", timeout=5)
        if not any(f["type"] == "cancel.accepted" for f in frames):
            frames.append(await on_a.receive())
        frames.sort(key=lambda f: f["type"] == "stream.finished")
        assert {"type": "pong"} in frames
        accepted = [f for f in frames if f["type"] == "cancel.accepted"]
        assert accepted and accepted[0]["delivered"] is True
        assert frames[-1]["status"] == "cancelled"
    finally:
        cluster.redis.thaw()
    await on_a.close()
