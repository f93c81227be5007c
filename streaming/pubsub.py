"""The push path of a cancel: one supervised Redis subscription per instance.

A cancel writes the flag and publishes the message id on the channel of the instance that runs the
stream, whose subscriber stops it at once (tens of milliseconds instead of up to one flag-check
interval). The flag stays the source of truth: a notice published while the subscription is down
is lost, so every (re)subscription is followed by an immediate check of all local flags.

A listener that dies silently is worse than none (Open WebUI #26779: a 5 s socket timeout killed
their listener with no log). This one never stops on its own: any error is logged, the connection
is dropped and rebuilt with capped backoff, and a periodic PING detects a server that froze without
closing the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aredis

logger = logging.getLogger(__name__)


class CancelSubscriber:
    """Listens on one channel and calls ``on_cancel(message_id)`` for every notice."""

    def __init__(
        self,
        *,
        client_factory: Callable[[], aredis.Redis],
        channel: str,
        on_cancel: Callable[[str], None],
        on_subscribed: Callable[[], Awaitable[None]],
        timeout: float = 0.5,
        ping_interval: float = 1.0,
        max_backoff: float = 2.0,
    ) -> None:
        self.client_factory = client_factory
        self.channel = channel
        self.on_cancel = on_cancel
        self.on_subscribed = on_subscribed
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.max_backoff = max_backoff
        #: Set while subscribed; tests and health checks can wait on it.
        self.subscribed = asyncio.Event()
        self.reconnects = 0
        self.notices = 0
        self._established = False
        self._down_since: float | None = None

    async def run_forever(self) -> None:
        """Subscribe, listen, and resubscribe after any failure, until cancelled."""
        backoff = 0.05
        while True:
            self._established = False
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning(
                        "Cancel subscription on %s lost: %r; reconnecting (cancel flags still "
                        "work meanwhile)",
                        self.channel,
                        exc,
                    )
                else:
                    logger.debug("Cancel subscription on %s still down: %r", self.channel, exc)
            if self._established:
                backoff = 0.05
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _listen(self) -> None:
        client = self.client_factory()
        pubsub = client.pubsub()
        try:
            async with asyncio.timeout(self.timeout * 2):
                await pubsub.subscribe(self.channel)
                # Wait for the confirmation, so "subscribed" means notices will arrive.
                while True:
                    message = await pubsub.get_message(timeout=self.timeout)
                    if message is not None and message["type"] == "subscribe":
                        break
            self._established = True
            self.subscribed.set()
            if self._down_since is not None:
                self.reconnects += 1
                logger.warning(
                    "Cancel subscription on %s restored after %.1f s",
                    self.channel,
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
            else:
                logger.info("Cancel subscription on %s established", self.channel)
            # Anything published while we were not listening is covered by the flags.
            await self.on_subscribed()
            await self._receive(pubsub)
        finally:
            self.subscribed.clear()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await pubsub.aclose()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await client.aclose(close_connection_pool=True)

    async def _receive(self, pubsub: aredis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_pong = loop.time()
        next_ping = loop.time() + self.ping_interval
        while True:
            message = await pubsub.get_message(timeout=min(self.ping_interval, 0.5))
            now = loop.time()
            if message is not None:
                kind = message["type"]
                if kind == "message":
                    self.notices += 1
                    data = message["data"]
                    self.on_cancel(data.decode() if isinstance(data, bytes) else str(data))
                elif kind == "pong":
                    last_pong = now
            if now >= next_ping:
                next_ping = now + self.ping_interval
                async with asyncio.timeout(self.timeout):
                    await pubsub.ping()
            if now - last_pong > self.ping_interval * 2 + self.timeout:
                raise ConnectionError(f"no PONG for {now - last_pong:.1f} s (server frozen?)")
