"""A chat consumer with no cancel machinery, database or registry: the capacity baseline.

``bench/capacity.py`` compares the real consumer against this one in the same run, so the cost of
ownership checks, persistence, the registry and cancel checks is measured, not guessed. It is
routed only when ``STREAM_BENCH_BARE=1``; never enable that in production.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from .backends import get_backend


class BareStreamConsumer(AsyncWebsocketConsumer):
    channel_layer_alias = "__no_channel_layer__"

    async def connect(self) -> None:
        self.tasks: set[asyncio.Task] = set()
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = json.loads(text_data or "{}")
        if frame.get("type") == "chat.message":
            task = asyncio.create_task(self._stream(frame["text"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _stream(self, text: str) -> None:
        message_id = f"bare-{id(self)}-{len(self.tasks)}"
        await self._send(
            {"type": "stream.started", "message_id": message_id, "conversation_id": ""}
        )
        index = 0
        async for chunk in get_backend().stream(prompt=text, history=[]):
            frame = {
                "type": "stream.chunk",
                "message_id": message_id,
                "index": index,
                "text": chunk,
            }
            await self._send(frame)
            index += 1
        await self._send(
            {
                "type": "stream.finished",
                "message_id": message_id,
                "status": "completed",
                "chunks": index,
            }
        )

    async def disconnect(self, code: int) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))
