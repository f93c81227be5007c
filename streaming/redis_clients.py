"""Redis clients for the streaming app, with bounded pools and short timeouts.

Async clients are kept per running event loop (as channels_redis does): a redis.asyncio connection
belongs to the loop that opened it, and the test runner, ``async_to_sync`` and daphne each run their
own loop. The sync client serves the admin and management commands.

Pools are *blocking* pools: when every connection is busy a caller waits (bounded by the timeout)
instead of raising ``MaxConnectionsError``, which a fail-safe would otherwise swallow, silently
losing cancels under load.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

AsyncClientFactory = Callable[[], aredis.Redis]


def make_async_client(url: str, *, timeout: float, max_connections: int) -> aredis.Redis:
    """Build an async client whose every call fails within about ``timeout`` seconds."""
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One immediate retry on a fresh connection: after Redis restarts, the first call on a
        # pooled (now dead) connection must not be reported as a failure.
        retry=AsyncRetry(NoBackoff(), 1),
    )
    return aredis.Redis(connection_pool=pool)


def make_sync_client(url: str, *, timeout: float, max_connections: int) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )
    return redis.Redis(connection_pool=pool)


class PerLoopClients:
    """One async client per running event loop, created on first use in that loop."""

    def __init__(self, factory: AsyncClientFactory) -> None:
        self._factory = factory
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> aredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._factory()
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the current loop's client; called on shutdown and between tests."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose(close_connection_pool=True)
