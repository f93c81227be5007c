"""The streams this instance runs: their stop switch, the batched cancel watcher and the heartbeat.

Why a watcher instead of each stream polling Redis itself: per-stream polling costs one Redis
command per stream per check, so load grows with the number of streams and, past the client's pool
size, checks fail and a fail-safe silently drops cancels. Here one watcher task per event loop reads
the flags of all due streams with one ``MGET``; the chunk-send path never touches Redis.

Per-stream semantics are kept: every stream is checked at least every ``check_seconds`` (a sweep of
all streams, which also covers a stream still waiting for its first chunk) and, when chunks come
faster than that, after ``check_chunks`` chunks (served by an early, coalesced batch).

On top of the flags, a Redis store pushes cancel notices to the instance running the stream (see
``streaming/pubsub.py``), so a cross-instance cancel normally lands in milliseconds; the flag
checks are the safety net.

``mode="poll"`` reproduces the original design for comparison in the benchmarks: no watcher and no
push; each stream reads its own flag inline every ``check_chunks`` chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import metrics
from .cancellation import CancelStore, RedisCancelStore, StoreUnavailable, StreamInfo
from .pubsub import CancelSubscriber

logger = logging.getLogger(__name__)


class CancelMode(StrEnum):
    BATCHED = "batched"
    POLL = "poll"


class StopReason(StrEnum):
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


@dataclass(eq=False)
class LocalStream:
    """A stream running in this process, and its stop switch."""

    message_id: str
    conversation_id: str
    owner_key: str
    owner_user_id: int | None
    instance: str
    started_at: float = field(default_factory=time.time)
    #: The chunks sent to the client, in order: exactly what is stored as the reply's text.
    parts: list[str] = field(default_factory=list)
    stop_reason: StopReason | None = None
    #: Why an ``interrupted`` stop happened, stored with the reply (default: the client left).
    stop_error: str = ""
    task: asyncio.Task | None = None
    #: True while the task awaits the token source: the only moment a stop may cancel the task,
    #: so a chunk is either fully sent (and recorded) or never sent.
    awaiting_source: bool = False
    chunks_since_check: int = 0
    #: Chunks already saved by the last checkpoint (see ``InstanceStreams._checkpoints``).
    checkpointed_chunks: int = 0
    checkpoint_due: float | None = None
    #: Set once the stream has left its loop: a stop then changes nothing.
    ended: bool = False

    @property
    def chunks(self) -> int:
        return len(self.parts)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def info(self) -> StreamInfo:
        return StreamInfo(
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            owner_key=self.owner_key,
            owner_user_id=self.owner_user_id,
            instance=self.instance,
            started_at=self.started_at,
            chunks=self.chunks,
        )

    def stop(self, reason: StopReason, *, error: str = "") -> bool:
        """Ask the stream to end with ``reason``; the first reason wins. Safe to call repeatedly.

        Returns True when this call is the one that stopped it.
        """
        if self.stop_reason is not None or self.ended:
            return False
        self.stop_reason = reason
        self.stop_error = error
        if self.awaiting_source and self.task is not None and not self.task.done():
            # Interrupt the wait on the model at once (this is what closes the upstream request).
            self.task.cancel()
        return True


class InstanceStreams:
    """Streams of one event loop in this instance; see the module docstring."""

    def __init__(
        self,
        *,
        store: CancelStore,
        instance_id: str,
        check_chunks: int,
        check_seconds: float,
        heartbeat_seconds: float,
        mode: CancelMode = CancelMode.BATCHED,
        push: bool = True,
        registry_flush_seconds: float = 0.25,
        checkpoint: Callable[[list[LocalStream]], Awaitable[None]] | None = None,
        checkpoint_seconds: float = 2.0,
        min_batch_interval: float = 0.02,
        on_check_error: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.instance_id = instance_id
        self.check_chunks = check_chunks
        self.check_seconds = check_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.mode = CancelMode(mode)
        self.push = push and self.mode is CancelMode.BATCHED and store.supports_push
        self.min_batch_interval = min_batch_interval
        self.subscriber: CancelSubscriber | None = None
        self._subscriber_task: asyncio.Task | None = None
        self.on_check_error = on_check_error
        self.streams: dict[str, LocalStream] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.registry_flush_seconds = min(registry_flush_seconds, heartbeat_seconds)
        self.checkpoint = checkpoint
        self.checkpoint_seconds = checkpoint_seconds
        self._checkpoint_task: asyncio.Task | None = None
        self._registry_dirty: set[str] = set()
        self._registry_removed: set[str] = set()
        self._registry_wake = asyncio.Event()
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat_task: asyncio.Task | None = None
        self._watch_task: asyncio.Task | None = None
        self._failing_since: float | None = None
        self._last_error_log = 0.0
        self.checks = 0

    def ensure_started(self) -> None:
        """Start the instance's cancel subscription (once per loop); called on every connect.

        The subscription lives as long as the event loop, so a cancel for a stream that starts a
        moment later still finds a listener; its first act is a check of all local flags.
        """
        self.loop = asyncio.get_running_loop()
        if not self.push or (self._subscriber_task and not self._subscriber_task.done()):
            return
        store = self.store
        assert isinstance(store, RedisCancelStore)
        self.subscriber = CancelSubscriber(
            client_factory=store.pubsub_client_factory,
            channel=store.cancel_channel(self.instance_id),
            on_cancel=self._pushed_cancel,
            on_subscribed=self.check_all_now,
            timeout=store.timeout,
        )
        self._subscriber_task = asyncio.create_task(
            self.subscriber.run_forever(), name=f"cancel-subscriber-{self.instance_id}"
        )

    def _pushed_cancel(self, message_id: str) -> None:
        """Called by the subscriber for each notice published for this instance."""
        if message_id in self.streams:
            metrics.cancel_arrived(message_id, metrics.PUSH)
            self.stop_local(message_id, StopReason.CANCELLED)

    # Membership.
    async def add(self, stream: LocalStream) -> None:
        """Called when a stream starts, before its first chunk.

        The registry learns about it with the next batched registry write (within
        ``registry_flush_seconds``), not with a Redis call of its own.
        """
        self.loop = asyncio.get_running_loop()
        self.streams[stream.message_id] = stream
        self._registry_dirty.add(stream.message_id)
        self.ensure_started()
        self._ensure_background()
        self._registry_wake.set()

    async def remove(self, stream: LocalStream) -> None:
        """Called when a stream has ended; its registry entry goes with the next batched write."""
        self.streams.pop(stream.message_id, None)
        self._due.discard(stream.message_id)
        self._registry_dirty.discard(stream.message_id)
        self._registry_removed.add(stream.message_id)
        self._ensure_background()
        self._registry_wake.set()

    def stop_local(self, message_id: str, reason: StopReason, *, error: str = "") -> bool:
        """Stop a stream if it runs here; True when it does (whether or not already stopping)."""
        stream = self.streams.get(message_id)
        if stream is None:
            return False
        stream.stop(reason, error=error)
        return True

    def stop_threadsafe(self, message_id: str, reason: StopReason, *, error: str = "") -> bool:
        """``stop_local`` from any thread or loop (the admin and shutdown hooks call this)."""
        if message_id not in self.streams:
            return False
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if self.loop is None or self.loop is current:
            self.stop_local(message_id, reason, error=error)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(lambda: self.stop_local(message_id, reason, error=error))
        return True

    async def chunk_sent(self, stream: LocalStream) -> None:
        """Called after every chunk reached the client; a check is due every N chunks.

        Batched mode only records the request (the watcher serves it off the chunk path); poll
        mode reads the flag right here, as the original design did.
        """
        stream.chunks_since_check += 1
        if stream.chunks_since_check < self.check_chunks:
            return
        stream.chunks_since_check = 0
        if self.mode is CancelMode.BATCHED:
            self._due.add(stream.message_id)
            self._wake.set()
            return
        self.checks += 1
        try:
            cancelled = await self.store.is_cancelled(stream.message_id)
        except StoreUnavailable as exc:
            self._store_failed("check", exc)
            return
        self._store_ok()
        if cancelled:
            metrics.cancel_arrived(stream.message_id, metrics.FLAG)
            stream.stop(StopReason.CANCELLED)

    async def check_all_now(self) -> None:
        """Check every local stream's flag at once (after the subscription was re-established)."""
        await self.check_now(list(self.streams))

    # Background work, alive while this loop has streams.
    def _ensure_background(self) -> None:
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = self._spawn(self._heartbeat())
        if self.mode is CancelMode.BATCHED and self.streams:
            if self._watch_task is None or self._watch_task.done():
                self._watch_task = self._spawn(self._watch())
        if self.checkpoint is not None and self.checkpoint_seconds > 0 and self.streams:
            if self._checkpoint_task is None or self._checkpoint_task.done():
                self._checkpoint_task = self._spawn(self._checkpoints())

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self.check_seconds
        while self.streams:
            try:
                async with asyncio.timeout_at(next_sweep):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if loop.time() >= next_sweep:
                ids = list(self.streams)
                next_sweep = loop.time() + self.check_seconds
            else:
                ids = [m for m in self._due if m in self.streams]
            self._due.clear()
            await self.check_now(ids)
            # Let early requests pile up so that fast streams still share one round trip.
            await asyncio.sleep(self.min_batch_interval)

    async def check_now(self, ids: list[str]) -> None:
        """Read the flags of ``ids`` in one round trip and stop the cancelled streams."""
        if not ids:
            return
        for message_id in ids:
            stream = self.streams.get(message_id)
            if stream is not None:
                stream.chunks_since_check = 0
        self.checks += 1
        try:
            cancelled = await self.store.cancelled_among(ids)
        except StoreUnavailable as exc:
            # Fail-safe: this check counts as "not cancelled", and only this check.
            self._store_failed("check", exc)
            return
        self._store_ok()
        for message_id in cancelled:
            metrics.cancel_arrived(message_id, metrics.FLAG)
            self.stop_local(message_id, StopReason.CANCELLED)

    async def _heartbeat(self) -> None:
        """Keep the registry in step: a full heartbeat every ``heartbeat_seconds``, and the
        streams that started or ended in between at most every ``registry_flush_seconds``."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while self.streams or self._registry_removed:
            beat = loop.time() >= next_beat
            if beat:
                upsert = list(self.streams.values())
            else:
                upsert = [self.streams[m] for m in self._registry_dirty if m in self.streams]
            removed = set(self._registry_removed)
            self._registry_dirty.clear()
            self._registry_removed.clear()
            self._registry_wake.clear()
            try:
                await self.store.heartbeat(
                    self.instance_id, [s.info() for s in upsert], removed, beat=beat
                )
            except StoreUnavailable as exc:
                self._store_failed("heartbeat", exc)
                # Retry the unsent changes with the next write; the TTL covers the rest.
                self._registry_removed |= removed - set(self.streams)
                self._registry_dirty |= {s.message_id for s in upsert} & set(self.streams)
            else:
                self._store_ok()
            if beat:
                next_beat = loop.time() + self.heartbeat_seconds
            await asyncio.sleep(self.registry_flush_seconds)
            if not (self._registry_dirty or self._registry_removed):
                try:
                    async with asyncio.timeout_at(next_beat):
                        await self._registry_wake.wait()
                except TimeoutError:
                    pass

    async def _checkpoints(self) -> None:
        """Save the text of running streams every ``checkpoint_seconds``, in one write.

        A reply normally saves its text when it ends; this is for the instance that never gets
        there (killed, out of memory): the reaper then marks the reply ``interrupted`` and the user
        keeps what they saw up to the last checkpoint instead of an empty reply.
        """
        assert self.checkpoint is not None
        loop = asyncio.get_running_loop()
        # Ticks a fifth of the interval apart, each saving only the streams that are due: streams
        # started at different times spread the writes instead of saving all at once.
        while self.streams:
            await asyncio.sleep(self.checkpoint_seconds / 5)
            now = loop.time()
            due = []
            for stream in list(self.streams.values()):
                if stream.checkpoint_due is None:
                    stream.checkpoint_due = now + self.checkpoint_seconds
                elif now >= stream.checkpoint_due:
                    stream.checkpoint_due = now + self.checkpoint_seconds
                    if stream.stop_reason is None and stream.chunks != stream.checkpointed_chunks:
                        due.append(stream)
            if not due:
                continue
            try:
                await self.checkpoint(due)
            except Exception:
                logger.exception("Could not checkpoint %d streams", len(due))

    async def aclose(self) -> None:
        """Cancel and await the background tasks (tests and shutdown)."""
        tasks = list(self._tasks)
        if self._subscriber_task is not None:
            tasks.append(self._subscriber_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass

    # Logging that neither floods nor hides an outage.
    def _store_failed(self, operation: str, exc: Exception) -> None:
        if self.on_check_error is not None:
            self.on_check_error(operation)
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._last_error_log = now
            logger.warning("Cancel store unavailable during %s; streams go on: %s", operation, exc)
        elif now - self._last_error_log >= 10:
            self._last_error_log = now
            logger.warning(
                "Cancel store still unavailable (%.0f s) during %s: %s",
                now - self._failing_since,
                operation,
                exc,
            )

    def _store_ok(self) -> None:
        if self._failing_since is not None:
            logger.info("Cancel store is back after %.1f s", time.monotonic() - self._failing_since)
            self._failing_since = None


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InstanceStreams] = (
    weakref.WeakKeyDictionary()
)


def get_instance_streams(factory: Callable[[], InstanceStreams]) -> InstanceStreams:
    """The running loop's ``InstanceStreams``, created by ``factory`` on first use."""
    loop = asyncio.get_running_loop()
    streams = _per_loop.get(loop)
    if streams is None:
        streams = _per_loop[loop] = factory()
    return streams


def all_instance_streams() -> list[InstanceStreams]:
    """Every loop's streams in this process (the admin cancels from a worker thread)."""
    return list(_per_loop.values())
