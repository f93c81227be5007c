"""Shared fixtures: fast demo streams, sessions, WebSocket communicators, a private redis-server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.backends.db import SessionStore

from streaming import instance, runtime
from streaming.identity import OWNER_SESSION_KEY
from tests.frames import FrameClient
from tests.redis_server import RedisServer

FAST = {
    "STREAM_CHUNK_DELAY": 0.01,
    "STREAM_FIRST_CHUNK_DELAY": 0.01,
    "DEMO_REPLY_WORDS": 20,
    "STREAM_CANCEL_CHECK_SECONDS": 0.05,
    "STREAM_HEARTBEAT_SECONDS": 0.05,
    # The periodic reaper is tested on its own (tests/test_reaper.py).
    "STREAM_REAPER_SECONDS": 0,
}


@pytest.fixture(autouse=True)
def fast_streams(settings: Any) -> Iterator[None]:
    """Short demo replies and quick cancel checks; a fresh store and stream table per test."""
    for name, value in FAST.items():
        setattr(settings, name, value)
    settings.REDIS_URL = ""
    runtime.get_store.cache_clear()
    runtime.get_limits.cache_clear()
    instance._per_loop.clear()
    yield
    runtime.get_store.cache_clear()
    runtime.get_limits.cache_clear()
    instance._per_loop.clear()


@pytest.fixture
async def close_store() -> AsyncIterator[None]:
    """Close the test loop's Redis connections at teardown (no unclosed-socket warnings)."""
    yield
    await runtime.get_store().aclose()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to be killed or frozen."""
    server = RedisServer().start()
    yield server
    server.stop()


def _new_session(owner_key: str) -> str:
    session = SessionStore()
    session[OWNER_SESSION_KEY] = owner_key
    session.create()
    return session.session_key


@pytest.fixture
def make_session() -> Callable[[str], Awaitable[str]]:
    """Create a browser session owning ``owner_key``; returns its session key."""

    async def make(owner_key: str) -> str:
        return await database_sync_to_async(_new_session)(owner_key)

    return make


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 3) -> None:
    """Wait until ``predicate()`` holds (the registry is written in batches, not at once)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


class Client(FrameClient):
    """A WebSocket client speaking the JSON contract."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 5) -> dict[str, Any]:
        return await self.communicator.receive_json_from(timeout)

    async def start(self, text: str, **extra: Any) -> dict[str, Any]:
        await self.send({"type": "chat.message", "text": text, **extra})
        frame = await self.receive()
        assert frame["type"] == "stream.started", frame
        return frame


@pytest.fixture
async def connect(make_session: Any) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Open chat sockets against the real ASGI application; all are disconnected at teardown."""
    from chatproject.asgi import application

    opened: list[WebsocketCommunicator] = []

    async def open_socket(
        owner_key: str = "owner-a",
        *,
        session_key: str | None = None,
        origin: bytes | None = b"http://localhost",
        expect: bool = True,
    ) -> Client:
        key = session_key or await make_session(owner_key)
        headers = [(b"cookie", f"sessionid={key}".encode())]
        if origin is not None:
            headers.append((b"origin", origin))
        communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected is expect
        opened.append(communicator)
        return Client(communicator)

    yield open_socket
    for communicator in opened:
        await communicator.disconnect()
