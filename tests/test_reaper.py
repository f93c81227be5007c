"""The reaper marks replies orphaned by a dead instance ``interrupted``, and nothing else."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime

import pytest
import redis
from channels.db import database_sync_to_async
from django.core.management import call_command

from streaming import reaper, services
from streaming.cancellation import InMemoryCancelStore, StoreUnavailable, StreamInfo
from streaming.models import Conversation, Message
from streaming.reaper import REAPED_ERROR, ensure_reaper, reap_orphaned_streams
from streaming.runtime import get_store
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.django_db(transaction=True)]

NOW = 2_000_000_000.0
GRACE = 30.0


def _reply(*, age: float, status: str = "streaming", now: float = NOW) -> str:
    conversation = Conversation.objects.create(owner_key="owner")
    message = Message.objects.create(
        conversation=conversation, role="assistant", status=status, text="partial"
    )
    Message.objects.filter(pk=message.pk).update(
        created_at=datetime.fromtimestamp(now - age, tz=UTC)
    )
    return str(message.pk)


reply = database_sync_to_async(_reply)


def entry(message_id: str, instance: str = "i1") -> StreamInfo:
    return StreamInfo(
        message_id=message_id,
        conversation_id="c",
        owner_key="owner",
        owner_user_id=None,
        instance=instance,
        started_at=0.0,
    )


async def status_of(message_id: str) -> tuple[str, str]:
    message = await Message.objects.aget(pk=message_id)
    return message.status, message.error


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def old_store(now: float = NOW) -> tuple[InMemoryCancelStore, Clock]:
    """A store whose registry (epoch) began long before ``now``."""
    clock = Clock(now - 1000)
    store = InMemoryCancelStore(clock=clock, stale_after=5.0, registry_ttl=60)
    await store.epoch()
    clock.now = now
    return store, clock


async def test_reaps_only_old_streaming_replies_missing_from_the_live_registry():
    store, clock = await old_store()
    orphan = await reply(age=GRACE + 1)
    live = await reply(age=GRACE + 1)
    young = await reply(age=GRACE - 1)
    done = await reply(age=GRACE + 1, status="completed")
    on_dead_instance = await reply(age=GRACE + 1)
    clock.now = NOW - 10  # The dead instance's last heartbeat: past stale_after at NOW.
    await store.heartbeat("dead", [entry(on_dead_instance, "dead")])
    clock.now = NOW
    await store.heartbeat("alive", [entry(live, "alive")])

    reaped = await reap_orphaned_streams(store=store, grace_seconds=GRACE, now=NOW)

    assert sorted(reaped) == sorted([orphan, on_dead_instance])
    assert await status_of(orphan) == ("interrupted", REAPED_ERROR)
    assert await status_of(on_dead_instance) == ("interrupted", REAPED_ERROR)
    assert (await Message.objects.aget(pk=orphan)).text == "partial"  # Text kept as saved.
    for untouched, expected in ((live, "streaming"), (young, "streaming"), (done, "completed")):
        assert (await status_of(untouched))[0] == expected
    assert await reap_orphaned_streams(store=store, grace_seconds=GRACE, now=NOW) == []


async def test_a_fresh_registry_is_not_trusted_until_the_grace_has_passed():
    """A restarted, empty Redis lists no stream at all; reaping then would kill live streams."""
    clock = Clock(NOW)
    store = InMemoryCancelStore(clock=clock)
    orphan = await reply(age=GRACE + 100)
    assert await reap_orphaned_streams(store=store, grace_seconds=GRACE, now=NOW) == []
    assert await reap_orphaned_streams(store=store, grace_seconds=GRACE, now=NOW + GRACE - 1) == []
    assert (await status_of(orphan))[0] == "streaming"
    assert await reap_orphaned_streams(store=store, grace_seconds=GRACE, now=NOW + GRACE + 1) == [
        orphan
    ]


class BrokenStore(InMemoryCancelStore):
    async def list_active(self) -> list[StreamInfo]:
        raise StoreUnavailable("redis list failed")


async def test_unavailable_registry_skips_the_run():
    store = BrokenStore(clock=Clock(NOW - 1000))
    await store.epoch()
    orphan = await reply(age=GRACE + 1)
    assert await reap_orphaned_streams(store=store, grace_seconds=GRACE, now=NOW) == []
    assert (await status_of(orphan))[0] == "streaming"


async def test_a_stream_that_was_only_slow_still_saves_its_real_end():
    store, _ = await old_store()
    slow = await reply(age=GRACE + 1)
    assert await reap_orphaned_streams(store=store, grace_seconds=GRACE, now=NOW) == [slow]
    await database_sync_to_async(services._finish_message)(slow, "completed", "all of it", 3, "")
    message = await Message.objects.aget(pk=slow)
    assert (message.status, message.text, message.error) == ("completed", "all of it", "")


async def test_ensure_reaper_runs_one_task_per_loop_and_reaps():
    options = {"store": get_store(), "interval": 0.05, "grace_seconds": 0.0}
    orphan = await reply(age=5, now=time.time())
    task = ensure_reaper(**options)
    assert task is not None and ensure_reaper(**options) is task
    try:
        async with asyncio.timeout(5):
            while True:
                if (await status_of(orphan))[0] == "interrupted":
                    break
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    reaper._per_loop.clear()


async def test_ensure_reaper_is_off_when_interval_is_zero():
    assert ensure_reaper(store=get_store(), interval=0, grace_seconds=30) is None


def test_reap_streams_command_uses_the_shared_registry(settings, redis_server: RedisServer):
    prefix = f"reapcmd{time.monotonic_ns()}"
    settings.REDIS_URL = redis_server.url
    settings.STREAM_REDIS_PREFIX = prefix
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set(f"{prefix}:epoch", repr(time.time() - 3600))
        orphan = _reply(age=120, now=time.time())
        young = _reply(age=1, now=time.time())
        out, err = io.StringIO(), io.StringIO()
        call_command("reap_streams", grace=60, stdout=out, stderr=err)
        assert out.getvalue().split() == [orphan]
        assert "Reaped 1" in err.getvalue()
        assert Message.objects.get(pk=orphan).status == "interrupted"
        assert Message.objects.get(pk=young).status == "streaming"
    finally:
        client.close()
