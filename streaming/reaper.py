"""The reaper: replies left ``streaming`` by an instance that died are marked ``interrupted``.

A SIGKILLed (or frozen, or partitioned) instance never finishes its messages. Its registry entries
go stale once it stops heartbeating, so a reply that is ``streaming`` in the database, older than a
grace period, and not among the registry's live entries has nobody left to finish it.

Guards against reaping a stream that is in fact alive:

- The grace period: a reply younger than it is never reaped (it may not be registered yet).
- The registry epoch (``CancelStore.epoch``): a Redis that restarted empty lists no stream at all,
  so nothing is reaped until the epoch is older than the grace period, by which time every live
  instance has re-registered its streams with a heartbeat.
- The store unavailable: the run is skipped; an unreadable registry proves nothing.
- The UPDATE is conditional on ``status=streaming``, and a stream that was only slow (a blocked
  event loop missed its heartbeats) still saves its real end afterwards, overwriting ours.

Bound (docs/security.md): a dead instance's replies are ``interrupted`` within
``STREAM_STALE_AFTER_SECONDS + 1.2 * STREAM_REAPER_SECONDS`` after its last heartbeat, or
``STREAM_REAPER_GRACE_SECONDS`` after they started if that is later.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from datetime import UTC, datetime

from channels.db import database_sync_to_async

from .cancellation import CancelStore, StoreUnavailable
from .models import Message

logger = logging.getLogger(__name__)

REAPED_ERROR = "The server handling this reply stopped."


def _reap(live: set[str], cutoff: datetime, finished_at: datetime) -> list[str]:
    candidates = Message.objects.filter(
        role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, created_at__lt=cutoff
    ).values_list("pk", flat=True)
    reaped = []
    for pk in list(candidates):
        if str(pk) in live:
            continue
        updated = Message.objects.filter(pk=pk, status=Message.Status.STREAMING).update(
            status=Message.Status.INTERRUPTED, error=REAPED_ERROR, finished_at=finished_at
        )
        if updated:
            reaped.append(str(pk))
    return reaped


async def reap_orphaned_streams(
    *, store: CancelStore, grace_seconds: float, now: float | None = None
) -> list[str]:
    """Mark orphaned ``streaming`` replies ``interrupted``; returns their ids (see module doc)."""
    now = time.time() if now is None else now
    try:
        epoch = await store.epoch()
        active = await store.list_active()
    except StoreUnavailable as exc:
        logger.warning("Reaper skipped: the stream registry is unavailable: %s", exc)
        return []
    if now - epoch < grace_seconds:
        logger.info("Reaper waits: the registry is %.1f s old", now - epoch)
        return []
    live = {info.message_id for info in active if not info.stale}
    reaped = await database_sync_to_async(_reap)(
        live,
        datetime.fromtimestamp(now - grace_seconds, tz=UTC),
        datetime.fromtimestamp(now, tz=UTC),
    )
    if reaped:
        logger.warning("Reaper marked %d orphaned replies interrupted: %s", len(reaped), reaped)
    return reaped


async def run_reaper(*, store: CancelStore, interval: float, grace_seconds: float) -> None:
    """Reap every ``interval`` seconds (jittered, so instances do not all run at once), forever."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            await reap_orphaned_streams(store=store, grace_seconds=grace_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A database hiccup must not end the reaper for the life of the process.
            logger.exception("Reaper run failed")


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = (
    weakref.WeakKeyDictionary()
)


def ensure_reaper(
    *, store: CancelStore, interval: float, grace_seconds: float
) -> asyncio.Task | None:
    """Start this event loop's reaper unless it runs already (see
    ``runtime.start_instance_services``); None when ``interval`` is 0."""
    if interval <= 0:
        return None
    loop = asyncio.get_running_loop()
    task = _per_loop.get(loop)
    if task is None or task.done():
        task = _per_loop[loop] = loop.create_task(
            run_reaper(store=store, interval=interval, grace_seconds=grace_seconds),
            name="stream-reaper",
        )
    return task
