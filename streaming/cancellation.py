"""The cancel-flag store and the active-streams registry, with an in-process and a Redis backend.

Cancel flags are the source of truth for "this reply must stop": a flag survives a missed push
notice and a stream that starts reading after the cancel, and expires by itself (TTL longer than
any stream). The registry lists running streams across instances. Liveness is one heartbeat per
*instance*, not one key refresh per stream, so Redis load stays flat as streams grow; the streams
of an instance that stops heartbeating are marked stale, then vanish when their key expires.

Redis layout (``P`` is the configured prefix)::

    P:cancel:<message_id>      string "1", EX flag_ttl             cancel flag
    P:streams:<instance>       hash message_id -> JSON, EX ttl     streams an instance runs
    P:instances                zset instance -> last heartbeat     which instances to read
    P:epoch                    string unix time, EX 1 day          when this registry began

Every backend method either succeeds or raises ``StoreUnavailable`` within the configured timeout;
the fail-safe policy (what a failure means for a stream or a cancel) belongs to the callers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis
import redis.asyncio as aredis

from .redis_clients import (
    PerLoopClients,
    make_async_client,
    make_pubsub_client,
    make_sync_client,
)

logger = logging.getLogger(__name__)


#: Lifetime of the registry epoch key (seconds).
EPOCH_TTL = 86400


class StoreUnavailable(Exception):
    """The backend could not answer within its timeout (Redis down, frozen or overloaded)."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A registry entry: one running stream."""

    message_id: str
    conversation_id: str
    owner_key: str
    owner_user_id: int | None
    instance: str
    started_at: float
    chunks: int = 0
    #: Filled in on read: when the stream's instance last sent a heartbeat.
    heartbeat_at: float = 0.0
    #: Filled in on read: the instance stopped sending heartbeats.
    stale: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        del data["heartbeat_at"], data["stale"]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> StreamInfo:
        return cls(**json.loads(raw))


class CancelStore:
    """Interface of a cancel store; see the module docstring for the semantics."""

    def __init__(
        self,
        *,
        flag_ttl: int = 3600,
        registry_ttl: int = 60,
        stale_after: float = 6.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.flag_ttl = flag_ttl
        self.registry_ttl = registry_ttl
        self.stale_after = stale_after
        self.clock = clock

    # Cancel flags.
    async def set_cancelled(self, message_id: str) -> None:
        raise NotImplementedError

    def set_cancelled_sync(self, message_id: str) -> None:
        raise NotImplementedError

    async def cancelled_among(self, message_ids: Sequence[str]) -> set[str]:
        """Which of ``message_ids`` carry a cancel flag; one round trip for all of them."""
        raise NotImplementedError

    async def is_cancelled(self, message_id: str) -> bool:
        return message_id in await self.cancelled_among([message_id])

    async def clear(self, message_id: str) -> None:
        raise NotImplementedError

    # Push.
    #: Whether instances should subscribe to cancel notices (only useful across processes).
    supports_push = False

    async def cancel_and_notify(self, message_id: str, instance: str) -> int:
        """Write the flag and push a notice to ``instance``; returns how many subscribers got it."""
        await self.set_cancelled(message_id)
        return 0

    # Registry.
    async def heartbeat(
        self,
        instance: str,
        streams: Iterable[StreamInfo],
        removed: Iterable[str] = (),
        *,
        beat: bool = True,
    ) -> None:
        """Write ``streams``, drop ``removed`` and (if ``beat``) mark ``instance`` alive.

        One round trip whatever the number of streams: instances batch their registry updates
        into this call instead of one write per stream start, chunk and end.
        """
        raise NotImplementedError

    async def list_active(self) -> list[StreamInfo]:
        raise NotImplementedError

    def list_active_sync(self) -> list[StreamInfo]:
        raise NotImplementedError

    async def instances(self) -> dict[str, float]:
        """Known instances and their last heartbeat time."""
        raise NotImplementedError

    async def epoch(self) -> float:
        """When this registry began (written once, never expires); read by the reaper.

        A Redis that restarted empty starts a new epoch, so the reaper waits until heartbeats have
        refilled the registry instead of taking every running stream for an orphan.
        """
        raise NotImplementedError

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the backend answers."""

    async def aclose(self) -> None:
        """Release the current event loop's connections."""

    def _with_liveness(self, info: StreamInfo, heartbeat_at: float, now: float) -> StreamInfo:
        return replace(info, heartbeat_at=heartbeat_at, stale=now - heartbeat_at > self.stale_after)


class InMemoryCancelStore(CancelStore):
    """Process-local store for the embedded single-process mode and fast unit tests.

    It is shared by every event loop of the process, which is exactly one instance's view: it can
    never see another instance, which is why a ``DEBUG``-off deployment without Redis is refused
    by a system check.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._flags: dict[str, float] = {}
        self._streams: dict[str, dict[str, StreamInfo]] = {}
        self._heartbeats: dict[str, float] = {}
        self._epoch: float | None = None

    async def epoch(self) -> float:
        if self._epoch is None:
            self._epoch = self.clock()
        return self._epoch

    def set_cancelled_sync(self, message_id: str) -> None:
        self._flags[message_id] = self.clock() + self.flag_ttl

    async def set_cancelled(self, message_id: str) -> None:
        self.set_cancelled_sync(message_id)

    async def cancelled_among(self, message_ids: Sequence[str]) -> set[str]:
        now = self.clock()
        found = set()
        for message_id in message_ids:
            expires = self._flags.get(message_id)
            if expires is None:
                continue
            if expires <= now:
                del self._flags[message_id]
            else:
                found.add(message_id)
        return found

    async def clear(self, message_id: str) -> None:
        self._flags.pop(message_id, None)

    async def heartbeat(
        self,
        instance: str,
        streams: Iterable[StreamInfo],
        removed: Iterable[str] = (),
        *,
        beat: bool = True,
    ) -> None:
        entries = self._streams.setdefault(instance, {})
        for info in streams:
            entries[info.message_id] = info
        for message_id in removed:
            entries.pop(message_id, None)
        if beat or instance not in self._heartbeats:
            self._heartbeats[instance] = self.clock()

    def list_active_sync(self) -> list[StreamInfo]:
        now = self.clock()
        result = []
        for instance, entries in list(self._streams.items()):
            beat = self._heartbeats.get(instance, 0.0)
            if now - beat > self.registry_ttl:
                # The whole entry expires, as the Redis key would.
                self._streams.pop(instance, None)
                self._heartbeats.pop(instance, None)
                continue
            result.extend(self._with_liveness(info, beat, now) for info in entries.values())
        return sorted(result, key=lambda info: info.started_at)

    async def list_active(self) -> list[StreamInfo]:
        return self.list_active_sync()

    async def instances(self) -> dict[str, float]:
        return dict(self._heartbeats)


_REDIS_ERRORS = (redis.RedisError, OSError, asyncio.TimeoutError)


class RedisCancelStore(CancelStore):
    """Store shared by every instance through one Redis."""

    supports_push = True

    def __init__(
        self,
        *,
        url: str = "",
        prefix: str = "chat",
        timeout: float = 0.5,
        max_connections: int = 20,
        async_client_factory: Callable[[], aredis.Redis] | None = None,
        sync_client: redis.Redis | None = None,
        pubsub_client_factory: Callable[[], aredis.Redis] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix
        self.timeout = timeout
        if async_client_factory is None:

            def async_client_factory() -> aredis.Redis:
                return make_async_client(url, timeout=timeout, max_connections=max_connections)

        self._clients = PerLoopClients(async_client_factory)
        self._sync_client = sync_client
        self._sync_factory = lambda: make_sync_client(
            url, timeout=timeout, max_connections=max_connections
        )
        if pubsub_client_factory is None:

            def pubsub_client_factory() -> aredis.Redis:
                return make_pubsub_client(url, timeout=timeout)

        #: Builds the dedicated client of an instance's cancel subscription.
        self.pubsub_client_factory = pubsub_client_factory

    # Keys.
    def flag_key(self, message_id: str) -> str:
        return f"{self.prefix}:cancel:{message_id}"

    def streams_key(self, instance: str) -> str:
        return f"{self.prefix}:streams:{instance}"

    @property
    def instances_key(self) -> str:
        return f"{self.prefix}:instances"

    def cancel_channel(self, instance: str) -> str:
        """Pub/sub channel on which ``instance`` hears about cancels of its streams."""
        return f"{self.prefix}:cancels:{instance}"

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}:epoch"

    # Plumbing.
    @property
    def client(self) -> aredis.Redis:
        return self._clients.get()

    @property
    def sync_client(self) -> redis.Redis:
        if self._sync_client is None:
            self._sync_client = self._sync_factory()
        return self._sync_client

    async def _call(self, operation: str, coro: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await coro
        except _REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis {operation} failed: {exc!r}") from exc

    def _call_sync(self, operation: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis {operation} failed: {exc!r}") from exc

    async def ping(self) -> None:
        await self._call("ping", self.client.ping())

    async def aclose(self) -> None:
        await self._clients.aclose()

    async def epoch(self) -> float:
        pipe = self.client.pipeline(transaction=False)
        # A TTL like every key; when it lapses a new epoch starts, which only pauses reaping for
        # one grace period.
        pipe.set(self.epoch_key, repr(self.clock()), nx=True, ex=EPOCH_TTL)
        pipe.get(self.epoch_key)
        _, raw = await self._call("epoch", pipe.execute())
        try:
            return float(raw)
        except (TypeError, ValueError):
            # Overwritten by something else: start a new epoch rather than trust it.
            await self._call(
                "epoch", self.client.set(self.epoch_key, repr(self.clock()), ex=EPOCH_TTL)
            )
            return self.clock()

    # Cancel flags.
    async def set_cancelled(self, message_id: str) -> None:
        await self._call("set", self.client.set(self.flag_key(message_id), b"1", ex=self.flag_ttl))

    def set_cancelled_sync(self, message_id: str) -> None:
        self._call_sync(
            "set", lambda: self.sync_client.set(self.flag_key(message_id), b"1", ex=self.flag_ttl)
        )

    async def cancelled_among(self, message_ids: Sequence[str]) -> set[str]:
        if not message_ids:
            return set()
        ids = list(message_ids)
        values = await self._call("mget", self.client.mget([self.flag_key(m) for m in ids]))
        return {m for m, v in zip(ids, values, strict=True) if v is not None}

    async def clear(self, message_id: str) -> None:
        await self._call("delete", self.client.delete(self.flag_key(message_id)))

    async def cancel_and_notify(self, message_id: str, instance: str) -> int:
        # One round trip: the flag first (the source of truth), then the push notice.
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.flag_key(message_id), b"1", ex=self.flag_ttl)
        pipe.publish(self.cancel_channel(instance), message_id)
        _, receivers = await self._call("cancel", pipe.execute())
        return int(receivers)

    # Registry.
    async def heartbeat(
        self,
        instance: str,
        streams: Iterable[StreamInfo],
        removed: Iterable[str] = (),
        *,
        beat: bool = True,
    ) -> None:
        key = self.streams_key(instance)
        mapping = {info.message_id: info.to_json() for info in streams}
        gone = [m for m in removed if m not in mapping]
        pipe = self.client.pipeline(transaction=False)
        if gone:
            pipe.hdel(key, *gone)
        if mapping:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.registry_ttl)
        if not beat:
            if mapping or gone:
                await self._call("registry", pipe.execute())
            return
        now = self.clock()
        pipe.zadd(self.instances_key, {instance: now})
        # Forget instances silent for longer than their entries live.
        pipe.zremrangebyscore(self.instances_key, "-inf", now - self.registry_ttl)
        pipe.expire(self.instances_key, self.registry_ttl)
        await self._call("heartbeat", pipe.execute())

    def _decode_active(
        self, beats: list[tuple[bytes, float]], hashes: list[dict]
    ) -> list[StreamInfo]:
        now = self.clock()
        result = []
        for (_, beat), entries in zip(beats, hashes, strict=True):
            for raw in entries.values():
                try:
                    info = StreamInfo.from_json(raw)
                except (ValueError, TypeError):
                    logger.warning("Skipping malformed registry entry %r", raw[:200])
                    continue
                result.append(self._with_liveness(info, beat, now))
        return sorted(result, key=lambda info: info.started_at)

    async def list_active(self) -> list[StreamInfo]:
        beats = await self._call(
            "zrange", self.client.zrange(self.instances_key, 0, -1, withscores=True)
        )
        pipe = self.client.pipeline(transaction=False)
        for instance, _ in beats:
            pipe.hgetall(self.streams_key(instance.decode()))
        hashes = await self._call("hgetall", pipe.execute()) if beats else []
        return self._decode_active(beats, hashes)

    def list_active_sync(self) -> list[StreamInfo]:
        client = self.sync_client

        def read() -> list[StreamInfo]:
            beats = client.zrange(self.instances_key, 0, -1, withscores=True)
            pipe = client.pipeline(transaction=False)
            for instance, _ in beats:
                pipe.hgetall(self.streams_key(instance.decode()))
            return self._decode_active(beats, pipe.execute() if beats else [])

        return self._call_sync("list", read)

    async def instances(self) -> dict[str, float]:
        beats = await self._call(
            "zrange", self.client.zrange(self.instances_key, 0, -1, withscores=True)
        )
        return {instance.decode(): beat for instance, beat in beats}
