"""nginx (deploy/nginx.conf) in front of two daphne instances sharing Redis and one database.

Round robin, no sticky sessions: sockets and requests of one browser session land on either
instance, and a Stop sent through nginx must stop a stream running on the other one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from streaming.backends import demo_chunks
from tests.integration.cluster import ChatSession, ChatSocket, DaphneInstance
from tests.integration.nginx import NginxProxy
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORDS = 400


@dataclass
class Deployment:
    redis: RedisServer
    instances: dict[str, DaphneInstance]
    nginx: NginxProxy


@pytest.fixture
def deployment(make_cluster) -> Iterator[Deployment]:
    cluster = make_cluster(
        STREAM_CHUNK_DELAY="0.02",
        DEMO_REPLY_WORDS=str(WORDS),
        STREAM_CANCEL_CHECK_SECONDS="0.2",
    )
    nginx = NginxProxy([cluster.a, cluster.b])
    try:
        nginx.start()
        yield Deployment(cluster.redis, {i.name: i for i in (cluster.a, cluster.b)}, nginx)
    finally:
        nginx.stop()


async def instance_of(session: ChatSession, nginx: NginxProxy, message_id: str) -> str:
    """Which instance runs a stream, from the shared registry (asked through nginx)."""
    for _ in range(50):
        status, body = await session.get_json(nginx, "/api/streams/active/")
        assert status == 200, body
        found = [s["instance"] for s in body["streams"] if s["message_id"] == message_id]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"stream {message_id} never appeared in the registry")


async def socket_on_other_instance(
    session: ChatSession, nginx: NginxProxy, avoid: str
) -> tuple[ChatSocket, str]:
    """Open sockets through nginx until one lands on an instance other than ``avoid``.

    A socket's instance is learned by starting a probe reply on it and reading the registry; the
    probe is then cancelled.
    """
    for attempt in range(8):
        probe_socket = await session.socket(nginx)
        probe = await probe_socket.start(f"probe {attempt}")
        where = await instance_of(session, nginx, probe["message_id"])
        await probe_socket.send({"type": "stream.cancel", "message_id": probe["message_id"]})
        frames = await probe_socket.receive_until("stream.finished")
        assert frames[-1]["message_id"] == probe["message_id"]
        if where != avoid:
            return probe_socket, where
        await probe_socket.close()
        # Round robin is strict: the requests in between decide where the next socket lands,
        # so shift the rotation by one request before trying again.
        await session.get_json(nginx, "/healthz/")
    raise AssertionError("nginx never sent a socket to the other instance (not round robin?)")


async def test_stream_and_cancel_through_nginx_land_on_different_instances(deployment):
    nginx = deployment.nginx
    session = await ChatSession().login(nginx)
    streaming = await session.socket(nginx)
    started = await streaming.start("through the proxy")
    seen = [await streaming.receive() for _ in range(3)]
    runs_on = await instance_of(session, nginx, started["message_id"])
    assert runs_on in deployment.instances

    other, lands_on = await socket_on_other_instance(session, nginx, avoid=runs_on)
    assert lands_on != runs_on
    await other.send({"type": "stream.cancel", "message_id": started["message_id"]})
    assert await other.receive() == {
        "type": "cancel.accepted",
        "message_id": started["message_id"],
        "delivered": True,
    }
    frames = seen + await streaming.receive_until("stream.finished")
    chunks = [f["text"] for f in frames if f["type"] == "stream.chunk"]
    assert frames[-1]["status"] == "cancelled"
    assert 3 <= len(chunks) < WORDS
    assert chunks == demo_chunks("through the proxy", WORDS)[: len(chunks)]
    status, body = await session.get_json(
        nginx, f"/api/conversations/{started['conversation_id']}/messages/"
    )
    assert status == 200
    [reply] = [m for m in body["messages"] if m["message_id"] == started["message_id"]]
    assert (reply["status"], reply["text"]) == ("cancelled", "".join(chunks))

    # The HTTP cancel goes through nginx too (to whichever instance is next).
    second = await streaming.start("cancel me over http")
    await streaming.receive()
    status, body = await session.post_json(nginx, f"/api/streams/{second['message_id']}/cancel/")
    assert (status, body) == (202, {"message_id": second["message_id"], "delivered": True})
    frames = await streaming.receive_until("stream.finished")
    assert frames[-1]["status"] == "cancelled"
    await streaming.close()
    await other.close()

    # Metrics: private behind nginx, scraped per instance; the cross-instance cancel (pushed,
    # or read from the flag) shows up.
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{nginx.http}/metrics")).status_code == 404
        stopped_remotely = 0.0
        for instance in deployment.instances.values():
            text = (await client.get(f"{instance.http}/metrics")).text
            for line in text.splitlines():
                if line.startswith(
                    (
                        'chat_cancel_latency_seconds_count{path="flag"}',
                        'chat_cancel_latency_seconds_count{path="push"}',
                    )
                ):
                    stopped_remotely += float(line.split()[-1])
        assert stopped_remotely >= 1
