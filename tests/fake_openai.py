"""A fake OpenAI-compatible chat completions server, for tests: real HTTP and SSE on loopback.

It runs its own event loop in a thread, so sync and async tests can use it alike, and records what
a real model server would see: each request's JSON body and when each connection was closed by
the client. The request's ``model`` picks the behaviour:

``fake-chat``       streams ``FakeOpenAI.chunks`` ``delay`` seconds apart, then ``[DONE]``
``fake-endless``    streams a chunk every ``delay`` seconds until the client hangs up
``fake-500``        answers HTTP 500 with an OpenAI-style error body
``fake-malformed``  streams one good chunk, then a ``data:`` line that is not JSON
``fake-silent``     sends the headers, then nothing
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Connection:
    opened_at: float
    request: dict[str, Any] | None = None
    #: ``time.monotonic()`` when the client closed the connection (None while it is open).
    client_closed_at: float | None = None
    #: Chunks written before the client went away.
    chunks_written: int = 0


@dataclass
class FakeOpenAI:
    chunks: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    delay: float = 0.01
    connections: list[Connection] = field(default_factory=list)

    def start(self) -> FakeOpenAI:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)

            async def serve() -> None:
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def wait_closed(self, connection: Connection, timeout: float = 5) -> float:
        """Block until the client closed ``connection``; returns the time it did."""
        deadline = time.monotonic() + timeout
        while connection.client_closed_at is None:
            if time.monotonic() > deadline:
                raise AssertionError("the client never closed its connection to the model")
            time.sleep(0.005)
        return connection.client_closed_at

    # Server side.
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(opened_at=time.monotonic())
        self.connections.append(connection)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = dict(
                line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
            length = int({k.lower(): v for k, v in headers.items()}.get("content-length", "0"))
            connection.request = json.loads(await reader.readexactly(length))
            hung_up = asyncio.ensure_future(self._watch_hangup(reader, connection))
            try:
                await self._respond(connection, writer, hung_up)
            finally:
                hung_up.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            connection.client_closed_at = connection.client_closed_at or time.monotonic()
        finally:
            writer.close()

    async def _watch_hangup(self, reader: asyncio.StreamReader, connection: Connection) -> None:
        """The client sends nothing after its request: EOF here means it closed the connection."""
        try:
            await reader.read()
        except ConnectionError:
            pass
        connection.client_closed_at = time.monotonic()

    async def _respond(
        self, connection: Connection, writer: asyncio.StreamWriter, hung_up: asyncio.Future
    ) -> None:
        model = (connection.request or {}).get("model", "")
        if model == "fake-500":
            body = json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode()
            writer.write(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        if model == "fake-silent":
            await hung_up
            return
        if model == "fake-malformed":
            await self._send_chunk(writer, connection, "partial")
            writer.write(b"data: {this is not json\n\n")
            await writer.drain()
            await asyncio.sleep(0.5)
            return
        index = 0
        while model == "fake-endless" or index < len(self.chunks):
            await asyncio.wait([hung_up], timeout=self.delay)
            if hung_up.done():
                return
            text = self.chunks[index % len(self.chunks)]
            await self._send_chunk(writer, connection, text)
            index += 1
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()

    async def _send_chunk(
        self, writer: asyncio.StreamWriter, connection: Connection, text: str
    ) -> None:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": (connection.request or {}).get("model", ""),
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
        writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await writer.drain()
        connection.chunks_written += 1
