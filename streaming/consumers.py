"""The chat WebSocket: validate a frame, call a service, answer. Nothing else lives here.

Generation runs in a task this consumer owns (``receive`` returns at once), because Channels
handles one event at a time per connection: a token loop inside ``receive`` would make a Stop on
the same socket wait for the whole reply (django/channels#1924).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from . import services
from .backlog import Probe, backlog_probe
from .exceptions import RATE_LIMITED, ClientError
from .identity import Owner, owner_from
from .instance import LocalStream
from .limits import CLOSE_TOO_MANY_CONNECTIONS
from .protocol import ChatMessage, Ping, StreamCancel, parse_frame
from .runtime import get_limits, start_instance_services

logger = logging.getLogger(__name__)

#: Close code for a handshake without the session cookie set by ``GET /``.
CLOSE_NO_SESSION = 4401
#: Close code for a client that left more than ``STREAM_MAX_SEND_BACKLOG_BYTES`` unread.
CLOSE_SLOW_CLIENT = 4008


class ClientNotReading(ConnectionError):
    """The client stopped reading; raised by ``send_json`` so a stream ends ``interrupted``."""


class ChatConsumer(AsyncWebsocketConsumer):
    # No channel layer: the consumer needs none (cancels travel through the cancel store), and a
    # Redis-backed layer would close every socket with 1011 the moment Redis goes down.
    channel_layer_alias = "__no_channel_layer__"

    owner: Owner
    streams: dict[str, LocalStream]
    counted = False
    backlog: Probe | None = None
    backlog_limit = 0
    dropping = False

    async def connect(self) -> None:
        """Called on the handshake: only a known session (or user) may open the chat socket."""
        owner = owner_from(self.scope.get("session"), self.scope.get("user"))
        if owner is None:
            await self.close(code=CLOSE_NO_SESSION)
            return
        self.owner = owner
        self.streams = {}
        start_instance_services()
        if not get_limits().open_connection(owner):
            # Accept, then say why and close: a refused handshake carries no reason a client sees.
            await self.accept()
            await self.send_json(
                ClientError(RATE_LIMITED, "Too many open chat connections.").as_frame()
            )
            await self.close(code=CLOSE_TOO_MANY_CONNECTIONS)
            return
        self.counted = True
        self.backlog = backlog_probe(self.base_send)
        self.backlog_limit = settings.STREAM_MAX_SEND_BACKLOG_BYTES
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for every inbound frame; errors become ``error`` frames, never a closed socket."""
        try:
            frame = parse_frame(
                text_data if text_data is not None else bytes_data,
                max_bytes=settings.STREAM_MAX_FRAME_BYTES,
                max_text_chars=settings.STREAM_MAX_TEXT_CHARS,
            )
            if isinstance(frame, Ping):
                await self.send_json({"type": "pong"})
            elif isinstance(frame, ChatMessage):
                await self.chat_message(frame)
            elif isinstance(frame, StreamCancel):
                await self.stream_cancel(frame)
        except ClientError as exc:
            await self.send_json(exc.as_frame())
        except ClientNotReading:
            pass  # The socket is being dropped; the disconnect that follows cleans up.

    async def chat_message(self, frame: ChatMessage) -> None:
        stream = await services.stream_start(
            owner=self.owner,
            text=frame.text,
            conversation_id=frame.conversation_id,
            send=self.send_json,
        )
        self.streams[stream.message_id] = stream
        assert stream.task is not None
        stream.task.add_done_callback(lambda _: self.streams.pop(stream.message_id, None))

    async def stream_cancel(self, frame: StreamCancel) -> None:
        result = await services.stream_cancel(owner=self.owner, message_id=frame.message_id)
        await self.send_json(
            {
                "type": "cancel.accepted",
                "message_id": str(result.message_id),
                "delivered": result.delivered,
            }
        )

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes: running replies end ``interrupted``, text saved."""
        streams = list(getattr(self, "streams", {}).values())
        await asyncio.gather(*(services.stream_stop_and_wait(stream) for stream in streams))
        if self.counted:
            self.counted = False
            get_limits().close_connection(self.owner)

    async def send_json(self, frame: dict[str, Any]) -> None:
        """Send a frame; past the backlog cap, drop the socket and raise ``ClientNotReading``."""
        if (
            self.backlog is not None
            and self.backlog_limit
            and (self.dropping or self.backlog() > self.backlog_limit)
        ):
            if not self.dropping:
                self.dropping = True
                logger.warning("Dropping a client that left %d bytes unread", self.backlog())
                await self.close(code=CLOSE_SLOW_CLIENT)
            raise ClientNotReading("The client stopped reading.")
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))
