"""The streams this instance runs: their stop switch, the batched cancel watcher and the heartbeat.

Why a watcher instead of each stream polling Redis itself: per-stream polling costs one Redis
command per stream per check, so load grows with the number of streams and, past the client's pool
size, checks fail and a fail-safe silently drops cancels. Here one watcher task per event loop reads
the flags of all due streams with one ``MGET``; the chunk-send path never touches Redis.

Per-stream semantics are kept: every stream is checked at least every ``check_seconds`` (a sweep of
all streams, which also covers a stream still waiting for its first chunk) and, when chunks come
faster than that, after ``check_chunks`` chunks (served by an early, coalesced batch).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from . import metrics
from .cancellation import CancelStore, StoreUnavailable, StreamInfo

logger = logging.getLogger(__name__)


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
    chunks: int = 0
    parts: list[str] = field(default_factory=list)
    stop_reason: StopReason | None = None
    task: asyncio.Task | None = None
    #: True while the task awaits the token source: the only moment a stop may cancel the task,
    #: so a chunk is either fully sent (and recorded) or never sent.
    awaiting_source: bool = False
    chunks_since_check: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

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

    def stop(self, reason: StopReason) -> bool:
        """Ask the stream to end with ``reason``; the first reason wins. Safe to call repeatedly.

        Returns True when this call is the one that stopped it.
        """
        if self.stop_reason is not None or self.stopped.is_set():
            return False
        self.stop_reason = reason
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
        min_batch_interval: float = 0.02,
        on_check_error: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.instance_id = instance_id
        self.check_chunks = check_chunks
        self.check_seconds = check_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.min_batch_interval = min_batch_interval
        self.on_check_error = on_check_error
        self.streams: dict[str, LocalStream] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._failing_since: float | None = None
        self._last_error_log = 0.0
        self.checks = 0

    # Membership.
    async def add(self, stream: LocalStream) -> None:
        """Called when a stream starts, before its first chunk."""
        self.loop = asyncio.get_running_loop()
        self.streams[stream.message_id] = stream
        self._ensure_background()
        try:
            await self.store.register(stream.info())
        except StoreUnavailable as exc:
            self._store_failed("register", exc)

    async def remove(self, stream: LocalStream) -> None:
        """Called when a stream has ended; cleanup failures are left to the registry TTL."""
        self.streams.pop(stream.message_id, None)
        self._due.discard(stream.message_id)
        try:
            await self.store.unregister(self.instance_id, stream.message_id)
        except StoreUnavailable as exc:
            self._store_failed("unregister", exc)

    def stop_local(self, message_id: str, reason: StopReason) -> bool:
        """Stop a stream if it runs here; True when it does (whether or not already stopping)."""
        stream = self.streams.get(message_id)
        if stream is None:
            return False
        stream.stop(reason)
        return True

    def chunk_sent(self, stream: LocalStream) -> None:
        """Called after every chunk reached the client; asks for an early check every N chunks."""
        stream.chunks_since_check += 1
        if stream.chunks_since_check >= self.check_chunks:
            stream.chunks_since_check = 0
            self._due.add(stream.message_id)
            self._wake.set()

    # Background work, alive while this loop has streams.
    def _ensure_background(self) -> None:
        if not self._tasks:
            for coro in (self._watch(), self._heartbeat()):
                task = asyncio.create_task(coro)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

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
        while self.streams:
            try:
                await self.store.heartbeat(
                    self.instance_id, [s.info() for s in list(self.streams.values())]
                )
            except StoreUnavailable as exc:
                self._store_failed("heartbeat", exc)
            else:
                self._store_ok()
            await asyncio.sleep(self.heartbeat_seconds)

    async def aclose(self) -> None:
        """Cancel and await the background tasks (tests and shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
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
