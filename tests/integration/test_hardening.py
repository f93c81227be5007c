"""Real daphne processes: SIGTERM, SIGKILL and clients that stop reading.

Each test gets a private redis-server, a fresh SQLite file and its own instances; the stored
state is read straight from that SQLite file, so a dead instance cannot hide anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import sqlite3
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from streaming.backends import demo_chunks
from tests.integration.cluster import ChatSession, DaphneInstance, migrate, sqlite_url
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEARTBEAT = 0.3
STALE_AFTER = 1.0
REAPER_INTERVAL = 0.5
REAPER_GRACE = 2.0
#: The documented bound (docs/security.md) for these settings.
REAP_BOUND = max(STALE_AFTER, REAPER_GRACE) + 1.2 * REAPER_INTERVAL


@dataclass
class Deployment:
    redis: RedisServer
    database: str
    env: dict[str, str]
    instances: list[DaphneInstance] = field(default_factory=list)

    def instance(self, name: str, *daphne_args: str, **env: str) -> DaphneInstance:
        instance = DaphneInstance(name, {**self.env, **env}, daphne_args=daphne_args)
        self.instances.append(instance)
        return instance.start()

    def query(self, sql: str, *params: object) -> list[tuple]:
        connection = sqlite3.connect(self.database.removeprefix("sqlite:///"), timeout=20)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def reply(self, message_id: str) -> tuple[str, str, str]:
        [row] = self.query(
            "SELECT status, text, error FROM streaming_message WHERE id = ?",
            uuid.UUID(message_id).hex,
        )
        return row


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    redis = RedisServer().start()
    database = sqlite_url()
    migrate(database)
    env = {
        "REDIS_URL": redis.url,
        "DATABASE_URL": database,
        "STREAM_CHUNK_DELAY": "0.02",
        "DEMO_REPLY_WORDS": "2000",
        "STREAM_CANCEL_CHECK_SECONDS": "0.2",
        "STREAM_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "STREAM_STALE_AFTER_SECONDS": str(STALE_AFTER),
        "STREAM_REAPER_SECONDS": str(REAPER_INTERVAL),
        "STREAM_REAPER_GRACE_SECONDS": str(REAPER_GRACE),
        "STREAM_REDIS_TIMEOUT": "0.3",
        "STREAM_CHECKPOINT_SECONDS": "0.5",
    }
    deployment = Deployment(redis, database, env)
    try:
        yield deployment
    finally:
        for instance in deployment.instances:
            instance.stop()
        redis.stop()
    for instance in deployment.instances:
        assert "Traceback" not in instance.log(), instance.log()


async def read_chunks(chat, count: int) -> list[str]:
    return [(await chat.receive())["text"] for _ in range(count)]


async def test_sigterm_saves_running_replies_interrupted_with_exactly_the_text_sent(deployment):
    instance = deployment.instance("term")
    session = await ChatSession().login(instance)
    chats = [await session.socket(instance) for _ in range(2)]
    started = [await chat.start(f"shutdown {n}") for n, chat in enumerate(chats)]
    received = [await read_chunks(chat, 5) for chat in chats]
    instance.signal(signal.SIGTERM)
    finished = []
    for chat, texts in zip(chats, received, strict=True):
        frames = await chat.receive_until("stream.finished")
        texts.extend(f["text"] for f in frames if f["type"] == "stream.chunk")
        finished.append(frames[-1])
    assert instance.process is not None and instance.process.wait(20) is not None
    for begun, texts, last in zip(started, received, finished, strict=True):
        assert last["status"] == "interrupted" and last["chunks"] == len(texts)
        status, text, error = deployment.reply(begun["message_id"])
        assert status == "interrupted"
        assert text == "".join(texts)
        assert "restarted" in error
    assert "Shutting down: interrupting 2 running replies" in instance.log()


async def test_sigkilled_instance_streams_are_reaped_within_the_bound(deployment):
    doomed = deployment.instance("doomed")
    survivor = deployment.instance("survivor")
    session = await ChatSession().login(survivor)
    on_doomed = await session.socket(doomed)
    on_survivor = await session.socket(survivor)  # Starts the survivor's reaper.
    dying = await on_doomed.start("about to crash")
    living = await on_survivor.start("still alive")
    seen = await read_chunks(on_doomed, 3)
    await asyncio.sleep(REAPER_GRACE)  # Both replies are now older than the grace period.
    doomed.kill()
    killed_at = time.monotonic()
    deadline = killed_at + REAP_BOUND + 5  # Slack for a loaded CI machine.
    while deployment.reply(dying["message_id"])[0] == "streaming":
        assert time.monotonic() < deadline, f"not reaped within {REAP_BOUND + 5:.1f} s"
        await asyncio.sleep(0.1)
    status, text, error = deployment.reply(dying["message_id"])
    assert (status, error) == ("interrupted", "The server handling this reply stopped.")
    # The last checkpoint (every 0.5 s) survived the crash: a non-empty prefix of what was sent.
    assert text and "".join(demo_chunks("about to crash", 2000)).startswith(text)
    assert len(text) >= len("".join(seen[:3]))
    code, body = await session.get_json(survivor, "/api/streams/active/")
    assert code == 200
    assert [s["message_id"] for s in body["streams"] if not s["stale"]] == [living["message_id"]]
    # The live stream on the surviving instance was left alone and still streams.
    assert deployment.reply(living["message_id"])[0] == "streaming"
    assert (await on_survivor.receive())["type"] == "stream.chunk"
    for chat in (on_survivor, on_doomed):
        # Neither was read to the end, so no close handshake can complete: do not wait 10 s.
        chat.connection.close_timeout = 0.2
        await chat.close()


class RawClient:
    """A WebSocket client on a bare socket with a tiny receive buffer, which can stop reading."""

    def __init__(self, instance: DaphneInstance, cookie: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", instance.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            "GET /ws/chat/ HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{instance.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{instance.port}\r\nCookie: {cookie}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        assert response.startswith(b"HTTP/1.1 101"), response

    def send(self, frame: dict) -> None:
        payload = json.dumps(frame).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)

    def close(self) -> None:
        self.sock.close()


def latest_reply(deployment: Deployment) -> tuple[str, int]:
    rows = deployment.query(
        "SELECT status, chunks FROM streaming_message WHERE role = 'assistant' "
        "ORDER BY created_at DESC LIMIT 1"
    )
    return rows[0] if rows else ("", 0)


async def wait_interrupted(deployment: Deployment, client: RawClient, keep_talking: bool) -> int:
    deadline = time.monotonic() + 30
    while (status := latest_reply(deployment))[0] != "interrupted":
        assert status[0] in ("", "streaming"), status
        assert time.monotonic() < deadline, f"still {status} after 30 s"
        if keep_talking:
            with contextlib.suppress(OSError):  # The server may have dropped us already.
                client.send({"type": "ping"})
        await asyncio.sleep(0.3)
    return status[1]


FAST_STREAM = {
    "STREAM_CHUNK_DELAY": "0",
    "STREAM_FIRST_CHUNK_DELAY": "0",
    "DEMO_REPLY_WORDS": "300000",
}


async def test_client_that_stops_reading_is_dropped_by_the_ping_timeout(deployment):
    instance = deployment.instance(
        "pings",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "2",
        STREAM_MAX_SEND_BACKLOG_BYTES="0",
        **FAST_STREAM,
    )
    session = await ChatSession().login(instance)
    client = RawClient(instance, session.cookie_header)
    client.send({"type": "chat.message", "text": "never read"})
    chunks = await wait_interrupted(deployment, client, keep_talking=False)
    client.close()
    assert 0 < chunks < 300000
    assert "Dropping a client" not in instance.log()


async def test_client_that_talks_but_never_reads_is_dropped_by_the_backlog_cap(deployment):
    """Daphne only pings a *silent* socket: a client that keeps sending is never pinged."""
    instance = deployment.instance(
        "backlog",
        "--ping-interval",
        "600",
        "--ping-timeout",
        "600",
        STREAM_MAX_SEND_BACKLOG_BYTES="65536",
        **FAST_STREAM,
    )
    session = await ChatSession().login(instance)
    client = RawClient(instance, session.cookie_header)
    client.send({"type": "chat.message", "text": "never read either"})
    chunks = await wait_interrupted(deployment, client, keep_talking=True)
    client.close()
    assert 0 < chunks < 300000
    assert "Dropping a client that left" in instance.log()
