"""Per-session limits: chat messages per minute, concurrent streams, open WebSockets.

Why these three: a flood of ``chat.message`` frames costs model time and database rows, many
streams at once multiply that cost, and many sockets each hold a daphne application instance.
Every limit answers the contract's ``rate_limited`` code; none ever closes a socket on its own,
except the connection limit, which refuses the extra socket with ``CLOSE_TOO_MANY_CONNECTIONS``.

Where each count lives (see docs/security.md):

- Messages per minute: a fixed-window counter, in Redis when the deployment has one (so a session
  spread over several instances shares one budget), else in this process. A Redis error never
  blocks a message: that one count falls back to the process-local counter.
- Concurrent streams: this instance's running streams of the owner (``InstanceStreams`` of every
  loop). Counting the cross-instance registry would cost a read of every instance's hash per
  message; the per-minute budget already bounds what a session can start across instances.
- Connections: this process, held from ``connect()`` to ``disconnect()``; a crash cannot leak a
  count (a Redis counter could, until its TTL).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis

from .exceptions import RATE_LIMITED, ClientError
from .identity import Owner
from .instance import all_instance_streams

logger = logging.getLogger(__name__)

#: Close code of a socket refused because its session already has too many open.
CLOSE_TOO_MANY_CONNECTIONS = 4429


def limit_key(owner: Owner) -> str:
    """Whose budget a request spends: the session's owner key, else the logged-in user."""
    return f"s:{owner.key}" if owner.key else f"u:{owner.user_id}"


class LocalWindowCounter:
    """Fixed-window counters in this process; old windows are dropped as they are passed."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._counts: dict[tuple[str, int], int] = {}
        self._window = -1

    def hit(self, key: str, *, window: float) -> int:
        """Count one event for ``key`` in the current window and return the window's total."""
        current = int(self.clock() // window)
        if current != self._window:
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= current}
            self._window = current
        slot = (key, current)
        self._counts[slot] = self._counts.get(slot, 0) + 1
        return self._counts[slot]


class RedisWindowCounter:
    """Fixed-window counters shared by every instance: ``INCR`` then ``EXPIRE NX``, one round trip.

    Key: ``<prefix>:rate:<key>:<window index>``, expiring one window after it closes. Any Redis
    failure falls back to ``fallback`` for that event (logged at most every 10 s).
    """

    def __init__(
        self,
        *,
        client: Callable[[], aredis.Redis],
        prefix: str,
        timeout: float,
        fallback: LocalWindowCounter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.fallback = fallback
        self.clock = clock
        self._last_error_log = 0.0

    async def hit(self, key: str, *, window: float) -> int:
        current = int(self.clock() // window)
        redis_key = f"{self.prefix}:rate:{key}:{current}"
        try:
            async with asyncio.timeout(self.timeout):
                pipe = self.client().pipeline(transaction=False)
                pipe.incr(redis_key)
                pipe.expire(redis_key, math.ceil(window) * 2, nx=True)
                count, _ = await pipe.execute()
            return int(count)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            now = time.monotonic()
            if now - self._last_error_log >= 10:
                self._last_error_log = now
                logger.warning("Rate counter in Redis unavailable, counting locally: %r", exc)
            return self.fallback.hit(key, window=window)


@dataclass
class Limits:
    """The configured limits and the counters that enforce them (built by ``runtime``)."""

    messages_per_minute: int
    max_streams: int
    max_connections: int
    counter: LocalWindowCounter | RedisWindowCounter
    window: float = 60.0

    def __post_init__(self) -> None:
        self._connections: dict[str, int] = {}

    async def admit_message(self, owner: Owner) -> None:
        """Called before a chat message starts a stream; raises ``rate_limited`` over a limit."""
        key = limit_key(owner)
        running = sum(
            1
            for streams in all_instance_streams()
            for stream in list(streams.streams.values())
            if limit_key(Owner(key=stream.owner_key, user_id=stream.owner_user_id)) == key
            and stream.stop_reason is None
        )
        if running >= self.max_streams:
            raise ClientError(
                RATE_LIMITED,
                f"You already have {running} replies running; the limit is {self.max_streams}.",
            )
        result: Any = self.counter.hit(key, window=self.window)
        count = await result if asyncio.iscoroutine(result) else result
        if count > self.messages_per_minute:
            raise ClientError(
                RATE_LIMITED,
                f"Too many messages: the limit is {self.messages_per_minute} per minute.",
            )

    def open_connection(self, owner: Owner) -> bool:
        """Called on the handshake; False when the owner already holds ``max_connections``."""
        key = limit_key(owner)
        if self._connections.get(key, 0) >= self.max_connections:
            return False
        self._connections[key] = self._connections.get(key, 0) + 1
        return True

    def close_connection(self, owner: Owner) -> None:
        """Called once for every ``open_connection`` that returned True."""
        key = limit_key(owner)
        left = self._connections.get(key, 0) - 1
        if left > 0:
            self._connections[key] = left
        else:
            self._connections.pop(key, None)

    def connections(self, owner: Owner) -> int:
        return self._connections.get(limit_key(owner), 0)
