"""One contract for the cancel store and registry, run against every backend.

The in-process store, fakeredis, and a real private ``redis-server`` must behave alike; the real
server also proves the fail-safe contract: an unreachable Redis raises ``StoreUnavailable`` within
the timeout instead of hanging or leaking another exception type.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import fakeredis
import pytest

from streaming.cancellation import (
    CancelStore,
    InMemoryCancelStore,
    RedisCancelStore,
    StoreUnavailable,
    StreamInfo,
)
from tests.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def info(message_id: str, instance: str = "i1", chunks: int = 0) -> StreamInfo:
    return StreamInfo(
        message_id=message_id,
        conversation_id=f"conv-{message_id}",
        owner_key="owner",
        owner_user_id=None,
        instance=instance,
        started_at=float(len(message_id)),
        chunks=chunks,
    )


async def register(backend: CancelStore, entry: StreamInfo) -> None:
    """Register one stream the way an instance does: a heartbeat carrying it."""
    await backend.heartbeat(entry.instance, [entry])


OPTIONS = {"flag_ttl": 100, "registry_ttl": 30, "stale_after": 5.0}


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def store(request, redis_server: RedisServer) -> AsyncIterator[tuple[CancelStore, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield InMemoryCancelStore(clock=clock, **OPTIONS), clock
        return
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        backend = RedisCancelStore(
            prefix="t",
            async_client_factory=lambda: fakeredis.FakeAsyncRedis(server=server),
            sync_client=fakeredis.FakeRedis(server=server),
            clock=clock,
            **OPTIONS,
        )
    else:
        prefix = f"t{time.monotonic_ns()}"
        backend = RedisCancelStore(url=redis_server.url, prefix=prefix, clock=clock, **OPTIONS)
    yield backend, clock
    await backend.aclose()
    if backend._sync_client is not None:
        backend._sync_client.close()


class TestCancelStoreContract:
    async def test_flag_roundtrip(self, store):
        backend, _ = store
        assert not await backend.is_cancelled("m1")
        await backend.set_cancelled("m1")
        assert await backend.is_cancelled("m1")
        assert await backend.cancelled_among(["m0", "m1", "m2"]) == {"m1"}
        assert await backend.cancelled_among([]) == set()

    async def test_sync_flag_write_is_seen_by_async_read(self, store):
        backend, _ = store
        backend.set_cancelled_sync("m-sync")
        assert await backend.is_cancelled("m-sync")

    async def test_clear(self, store):
        backend, _ = store
        await backend.set_cancelled("m1")
        await backend.clear("m1")
        assert not await backend.is_cancelled("m1")

    async def test_registry_lists_registered_streams_in_start_order(self, store):
        backend, _ = store
        await register(backend, info("bb", "i1"))
        await register(backend, info("a", "i2"))
        listed = await backend.list_active()
        assert [s.message_id for s in listed] == ["a", "bb"]
        assert {s.instance for s in listed} == {"i1", "i2"}
        assert all(not s.stale for s in listed)
        assert [s.message_id for s in backend.list_active_sync()] == ["a", "bb"]

    async def test_heartbeat_refreshes_chunks_and_unregister_removes(self, store):
        backend, clock = store
        await register(backend, info("m1"))
        clock.now += 1
        await backend.heartbeat("i1", [info("m1", chunks=7)])
        [entry] = await backend.list_active()
        assert entry.chunks == 7
        assert entry.heartbeat_at == clock.now
        await backend.heartbeat("i1", [], ["m1"], beat=False)
        assert await backend.list_active() == []

    async def test_silent_instance_is_marked_stale_then_forgotten(self, store):
        backend, clock = store
        await register(backend, info("dead", "i-dead"))
        await register(backend, info("live", "i-live"))
        clock.now += 10  # Past stale_after (5 s).
        await backend.heartbeat("i-live", [info("live", "i-live")])
        by_id = {s.message_id: s for s in await backend.list_active()}
        assert by_id["dead"].stale and not by_id["live"].stale
        assert set(await backend.instances()) == {"i-dead", "i-live"}
        clock.now += 31  # Past registry_ttl (30 s) for the dead one.
        await backend.heartbeat("i-live", [info("live", "i-live")])
        if isinstance(backend, InMemoryCancelStore):
            listed = await backend.list_active()
        else:
            # Redis expires the key by its own clock; simulate by dropping what TTL would drop.
            await backend.client.delete(backend.streams_key("i-dead"))
            listed = await backend.list_active()
        assert [s.message_id for s in listed] == ["live"]
        assert "i-dead" not in await backend.instances()

    async def test_epoch_is_written_once_and_kept(self, store):
        backend, clock = store
        first = await backend.epoch()
        assert first == clock.now
        clock.now += 100
        assert await backend.epoch() == first


async def test_restarted_redis_starts_a_new_epoch(private_redis: RedisServer):
    clock = Clock()
    backend = RedisCancelStore(url=private_redis.url, prefix="epoch", clock=clock)
    try:
        assert await backend.epoch() == clock.now
        assert 0 < await backend.client.ttl(backend.epoch_key) <= 86400  # Expires, like every key.
        clock.now += 50
        private_redis.restart()
        assert await backend.epoch() == clock.now
    finally:
        await backend.aclose()


async def test_redis_keys_are_prefixed_and_expire(private_redis: RedisServer):
    backend = RedisCancelStore(
        url=private_redis.url, prefix="ttlcheck", flag_ttl=123, registry_ttl=45
    )
    try:
        await backend.set_cancelled("m1")
        await register(backend, info("m1", "inst"))
        client = backend.client
        assert 0 < await client.ttl("ttlcheck:cancel:m1") <= 123
        assert 0 < await client.ttl("ttlcheck:streams:inst") <= 45
        keys = {k.decode() for k in await client.keys("*")}
        assert keys and all(k.startswith("ttlcheck:") for k in keys)
    finally:
        await backend.aclose()


async def test_unreachable_redis_raises_store_unavailable_quickly(private_redis: RedisServer):
    backend = RedisCancelStore(url=private_redis.url, prefix="down", timeout=0.3)
    try:
        await backend.set_cancelled("m1")
        private_redis.kill()
        for call in (
            backend.set_cancelled("m2"),
            backend.cancelled_among(["m1"]),
            register(backend, info("m3")),
            backend.heartbeat("i1", [info("m3")]),
            backend.list_active(),
            backend.ping(),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call
            assert time.monotonic() - started < 3
        with pytest.raises(StoreUnavailable):
            backend.set_cancelled_sync("m4")
        # Redis returns on the same port: the same store recovers without a restart.
        private_redis.start()
        await backend.set_cancelled("m5")
        assert await backend.is_cancelled("m5")
    finally:
        await backend.aclose()
        if backend._sync_client is not None:
            backend._sync_client.close()


async def test_frozen_redis_times_out_instead_of_hanging(private_redis: RedisServer):
    backend = RedisCancelStore(url=private_redis.url, prefix="frozen", timeout=0.3)
    try:
        await backend.ping()
        private_redis.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await backend.cancelled_among(["m1"])
        assert time.monotonic() - started < 2
    finally:
        private_redis.thaw()
        await backend.aclose()
